r"""Train-step time of IVON against AdamW on a small byte-level transformer in Flax NNX.

The model is the one of ``examples/language_model.py`` (decoder-only, pre-LayerNorm, causal
self-attention, tied embeddings), defined again here so that the benchmarks import no example.
Each optimizer's whole train step (forward, backward, IVON's weight sampling, the update) is one
``jax.jit`` of the split NNX state with the state donated, timed until the device is done and
interleaved step by step with the other optimizer (:func:`benchmarks.measure.time_interleaved`),
so that the ratio survives a shared machine. AdamW runs as in the example: global-norm clipping,
then ``optax.adamw`` with weight decay masked off LayerNorm scales and biases; IVON with the
same mask and ``ivon_optax.recipe``'s posterior.

Examples::

  python benchmarks/lm_step_time.py
  python benchmarks/lm_step_time.py --width 256 --depth 6 --context 256 --batch-size 32
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import ivon_optax
import ivon_optax.flax
from benchmarks import measure

VOCAB = 256


class Block(nnx.Module):
  """A pre-LayerNorm transformer block: causal self-attention, then an MLP, each residual."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
      num_heads=heads, in_features=width, decode=False, keep_rngs=False, rngs=rngs
    )
    self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
    self.hidden = nnx.Linear(width, 4 * width, rngs=rngs)
    self.out = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.out(nnx.gelu(self.hidden(self.mlp_norm(x))))


class Transformer(nnx.Module):
  """A decoder-only byte-level transformer with tied input and output embeddings."""

  def __init__(self, context: int, width: int, depth: int, heads: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(VOCAB, width, embedding_init=init, rngs=rngs)
    self.position = nnx.Embed(context, width, embedding_init=init, rngs=rngs)
    self.blocks = nnx.List([Block(width, heads, rngs=rngs) for _ in range(depth)])
    self.final_norm = nnx.LayerNorm(width, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens) + self.position(jnp.arange(tokens.shape[-1]))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.embed.attend(self.final_norm(x))


def loss_fn(model, batch):
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def decay_mask(params):
  """Kernels and embeddings, by name (attention's biases have two axes too)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: any(getattr(key, "key", None) in ("kernel", "embedding") for key in path),
    params,
  )


def make_tx(name: str, params, num_steps: int):
  """The example's AdamW chain or IVON with the recipe, at fixed stable learning rates."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, num_steps)
  if name == "adamw":
    return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(lambda t: 1e-3 * schedule(t), weight_decay=0.1, mask=decay_mask),
    )
  hyper = ivon_optax.recipe(params, num_train=2_000_000, num_steps=num_steps, temper=16.0)
  return ivon_optax.ivon(lambda t: 0.3 * schedule(t), weight_decay_mask=decay_mask, **hyper)


def step_runner(name: str, args) -> measure.Timed:
  """A ``Timed`` that runs one jitted, donated train step of ``name`` on a fixed batch."""
  model = Transformer(args.context, args.width, args.depth, args.heads, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, make_tx(name, nnx.state(model, nnx.Param), 10_000), wrt=nnx.Param
  )
  graphdef, state = nnx.split((model, optimizer))
  grad_at_sample = ivon_optax.flax.nnx_value_and_grad_at_sample(loss_fn)

  def step(state, key, batch):
    model, optimizer = nnx.merge(graphdef, state)
    if name == "ivon":
      loss, grads, noise = grad_at_sample(key, optimizer, model, batch)
      optimizer.update(model, grads, noise=noise)
    else:
      loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
      optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  jitted = jax.jit(step, donate_argnums=0)
  batch = jax.random.randint(
    jax.random.key(1), (args.batch_size, args.context + 1), 0, VOCAB, dtype=jnp.int32
  )
  holder = {"state": state, "count": 0}

  def run():
    key = jax.random.fold_in(jax.random.key(2), holder["count"])
    holder["state"], loss = jitted(holder["state"], key, batch)
    holder["count"] += 1
    jax.block_until_ready((holder["state"], loss))

  timed = measure.Timed(name, run)
  timed.parameters = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return timed


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--context", type=int, default=64)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=30, help="timed steps per optimizer")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--json", default=None, help="write the results here")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  items = [step_runner(name, args) for name in ("adamw", "ivon")]
  measure.time_interleaved(items, rounds=args.steps, warmup=args.warmup)
  stats = {item.name: measure.summary_ms(item.seconds) for item in items}
  ratio = stats["ivon"]["median"] / stats["adamw"]["median"]
  report = {
    "environment": measure.environment(),
    "config": vars(args),
    "parameters": items[0].parameters,
    "ms": stats,
    "ivon_over_adamw": ratio,
  }
  rows = [
    [name, f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}"] for name, s in stats.items()
  ]
  print(
    f"{jax.devices()[0].platform}, {report['parameters']:,} parameters, batch "
    f"{args.batch_size} x {args.context} bytes"
  )
  print(measure.markdown_table(["optimizer", "median ms", "min ms", "max ms"], rows))
  print(f"IVON / AdamW step time (median): {ratio:.3f}")
  if args.json:
    Path(args.json).write_text(json.dumps(report, indent=1, default=str))
  return report


if __name__ == "__main__":
  main()
