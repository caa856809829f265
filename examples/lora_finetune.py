"""LoRA fine-tuning in miniature: AdamW-LoRA vs IVON-LoRA on a shifted MNIST-1D task.

1. Pretrain a small NNX transformer (each of MNIST-1D's 40 signal values is
   one token) on the standard MNIST-1D and save it with Orbax.
2. Restore it into the same transformer with LoRA adapters on every linear
   layer and fine-tune only the adapters, ``nnx.Optimizer(..., wrt=nnx.LoRAParam)``,
   on a strongly shifted MNIST-1D (more noise, shear and scale, other
   templates' positions) with a few hundred examples.
3. Pick each optimizer's hyperparameters on a validation split (lowest mean
   validation NLL at the mean weights over the seeds, the same rule for both),
   and score the chosen runs on the test split: AdamW at its weights, IVON at
   its mean and as the average of 1, 2, 4, 8 and 16 posterior samples.

    python examples/lora_finetune.py            # a few minutes on a CPU

All runs of one optimizer (grid points x seeds) train at once, vmapped, an
epoch per jitted ``lax.scan``. Writes ``lora_finetune.json``, a plot
``lora_finetune.png`` and the pretrained checkpoint ``lora_pretrained/`` to ``--out``.
"""

import argparse
import itertools
import json
import os
import pathlib
import time

import data
import jax
import jax.numpy as jnp
import matplotlib
import models
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

import ivon_optax
import ivon_optax.flax as ivon_flax
from ivon_optax import metrics
from ivon_optax import predict

matplotlib.use("Agg")

SAMPLES = (1, 2, 4, 8, 16)
# A run's key folded with the epoch shuffles and samples that epoch; this value, beyond
# any epoch, gives its test-time samples.
PREDICT_STREAM = 2**31 - 2
# The shifted target task: mnist1d's generator with more of every distortion.
TARGET_SHIFT = dict(iid_noise_scale=0.1, corr_noise_scale=0.5, shear_scale=1.5, scale_coeff=0.8)
# The grids, searched on the validation split the same way for both optimizers.
ADAMW_GRID = dict(learning_rate=(1e-3, 3e-3, 1e-2), weight_decay=(0.0, 0.1))
IVON_GRID = dict(learning_rate=(0.03, 0.1, 0.3), ess_per_example=(1.0, 1e2, 1e4), hess_init=(1e-3,))
# The recipe's fixed IVON settings (ivon-lora): no weight decay, small clip radius, raw lr.
IVON_FIXED = dict(clip_radius=1e-3, weight_decay=0.0, rescale_lr=False)


# --- Model ---------------------------------------------------------------------


def dense(in_features, out_features, rank, rngs):
  """A linear layer; with ``rank > 0`` also a LoRA adapter (same base variable names)."""
  if rank == 0:
    return nnx.Linear(in_features, out_features, rngs=rngs)
  return nnx.LoRALinear(in_features, out_features, lora_rank=rank, rngs=rngs)


class Block(nnx.Module):
  """A pre-norm transformer block: multi-head self-attention, then a GELU MLP."""

  def __init__(self, dim, heads, rank, rngs):
    self.heads = heads
    self.norm1, self.norm2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
    self.qkv, self.proj = dense(dim, 3 * dim, rank, rngs), dense(dim, dim, rank, rngs)
    self.up, self.down = dense(dim, 2 * dim, rank, rngs), dense(2 * dim, dim, rank, rngs)

  def __call__(self, x):
    *batch, length, dim = x.shape
    heads = self.qkv(self.norm1(x)).reshape(*batch, length, 3, self.heads, dim // self.heads)
    q, k, v = (heads[..., i, :, :] for i in range(3))
    x = x + self.proj(nnx.dot_product_attention(q, k, v).reshape(x.shape))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Transformer(nnx.Module):
  """Signal values as tokens, learned positions, ``depth`` blocks, mean pooling, a linear head."""

  def __init__(self, *, length, dim, depth, heads, rank, rngs, num_classes=10):
    self.embed = nnx.Linear(1, dim, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, dim)))
    self.blocks = nnx.List([Block(dim, heads, rank, rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = dense(dim, num_classes, rank, rngs)

  def __call__(self, signals):
    x = self.embed(signals[..., None]) + self.position[...]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x).mean(axis=-2))


def make_model(args, rank, key):
  return Transformer(
    length=40, dim=args.dim, depth=args.depth, heads=args.heads, rank=rank, rngs=nnx.Rngs(key)
  )


def cross_entropy(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


# --- Data ----------------------------------------------------------------------


def target_task(num_train, num_val, num_test, seed=7):
  """The shifted MNIST-1D: train and validation from one pool, test from its own draw."""
  num_samples = 5 * max(-(-(num_train + num_val) // 4), num_test)
  (x, y), generated_test = data.mnist1d_arrays(num_samples, seed=seed, **TARGET_SHIFT)
  split = lambda a, b: data.Split(x[a:b], y[a:b])
  test = data.Split(generated_test.inputs[:num_test], generated_test.labels[:num_test])
  return data.Dataset(
    "mnist1d-shifted", split(num_val, num_val + num_train), split(0, num_val), test
  )


def standardize(dataset, mean, std):
  """Inputs scaled by the source's statistics, as a deployed model would see them."""
  scale = lambda s: data.Split((s.inputs - mean) / std, s.labels.astype(np.int32))
  return dataset._replace(
    train=scale(dataset.train), val=scale(dataset.val), test=scale(dataset.test)
  )


# --- Training ------------------------------------------------------------------


def make_tx(name, hyper):
  """The optimizer, with its hyperparameters in the state so runs with other values vmap."""
  if name == "adamw":
    return optax.inject_hyperparams(optax.adamw)(**hyper)
  return optax.inject_hyperparams(ivon_optax.ivon, static_args=("rescale_lr",))(
    **hyper, **IVON_FIXED
  )


def train_epoch(graphdef, state, key, inputs, labels, *, batch_size, bayes):
  """One epoch of one run: shuffle, then a ``lax.scan`` over mini-batches."""
  num_steps = len(labels) // batch_size
  order = jax.random.permutation(key, len(labels))[: num_steps * batch_size]
  batches = order.reshape(num_steps, batch_size)
  lora_grad = nnx.grad(cross_entropy, argnums=nnx.DiffState(0, nnx.LoRAParam))
  # IVON: the gradient at a posterior sample of the adapters moves their mean.
  grad_at_sample = ivon_flax.nnx_value_and_grad_at_sample(cross_entropy)

  def step(state, args):
    batch, step_key = args
    model, optimizer = nnx.merge(graphdef, state)
    x, y = inputs[batch], labels[batch]
    if bayes:
      _, grads, noise = grad_at_sample(step_key, optimizer, model, x, y)
      optimizer.update(model, grads, noise=noise)
    else:
      optimizer.update(model, lora_grad(model, x, y))
    return nnx.state((model, optimizer)), None

  keys = jax.random.split(jax.random.fold_in(key, 1), num_steps)
  return jax.lax.scan(step, state, (batches, keys))[0]


def scores(log_probs, labels):
  return {
    "accuracy": metrics.accuracy(log_probs, labels),
    "nll": metrics.negative_log_likelihood(log_probs, labels),
    "ece": metrics.expected_calibration_error(log_probs, labels),
  }


def evaluate(graphdef, state, key, split, *, bayes):
  """Scores at the mean weights and, for IVON, of the average of the first k of 16 samples."""
  model, optimizer = nnx.merge(graphdef, state)
  result = {"mean": scores(jax.nn.log_softmax(model(split.inputs)), split.labels)}
  if bayes:
    logits = ivon_flax.sample_nnx_outputs(key, optimizer, model, split.inputs, num_samples=16)
    for k in SAMPLES:
      result[str(k)] = scores(predict.predictive_log_probs(logits[:k]), split.labels)
    params, opt_state = ivon_flax.nnx_params_and_state(optimizer, model)
    logs = ivon_optax.diagnostics(opt_state, params)
    result["diagnostics"] = {key: logs[key] for key in models.KEY_FACTS}
  return result


def pretrain(args, source):
  """AdamW on every parameter of the base transformer (no adapters)."""
  model = make_model(args, rank=0, key=jax.random.key(0))
  optimizer = nnx.Optimizer(model, optax.adamw(args.pretrain_lr, weight_decay=0.01), wrt=nnx.Param)
  x, y = jnp.asarray(source.train.inputs), jnp.asarray(source.train.labels)

  @nnx.jit
  def epoch(model, optimizer, key):
    grad = nnx.grad(cross_entropy)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def step(carry, batch):
      model, optimizer = carry
      optimizer.update(model, grad(model, x[batch], y[batch]))
      return model, optimizer

    num_steps = len(y) // args.pretrain_batch
    order = jax.random.permutation(key, len(y))[: num_steps * args.pretrain_batch]
    step((model, optimizer), order.reshape(num_steps, args.pretrain_batch))

  for i in range(args.pretrain_epochs):
    epoch(model, optimizer, jax.random.key(1000 + i))
  return model


def save_pretrained(model, path):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, nnx.state(model), force=True)
  checkpointer.wait_until_finished()


def restore_into(model, path):
  """Loads a base checkpoint into a LoRA model: every variable but the adapters."""
  base = nnx.state(model, nnx.Not(nnx.LoRAParam))
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, base)
  nnx.update(model, ocp.StandardCheckpointer().restore(path, target))
  return model


def grid_points(grid):
  names = list(grid)
  return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def finetune(args, name, grid, target, checkpoint):
  """Trains every grid point x seed at once; returns validation and test scores per run."""
  bayes = name == "ivon"
  num_train = len(target.train.labels)
  points = grid_points(grid)
  runs = [(point, seed) for point in points for seed in args.seeds]

  def hyper(point):
    point = dict(point)
    if bayes:
      point["ess"] = point.pop("ess_per_example") * num_train
    return point

  # Restored once; each run's model gets its own adapters' initialization.
  base = nnx.state(restore_into(make_model(args, args.rank, jax.random.key(0)), checkpoint))
  base = nnx.filter_state(base, nnx.Not(nnx.LoRAParam))

  def init(values, seed):
    model = make_model(args, args.rank, jax.random.key(seed))
    nnx.update(model, base)
    optimizer = nnx.Optimizer(model, make_tx(name, values), wrt=nnx.LoRAParam)
    return nnx.split((model, optimizer))

  graphdef, _ = init(hyper(points[0]), 0)
  states = [init(hyper(point), seed)[1] for point, seed in runs]
  state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  keys = jax.vmap(jax.random.key)(jnp.array([seed for _, seed in runs]))

  x, y = jnp.asarray(target.train.inputs), jnp.asarray(target.train.labels)
  epoch = jax.jit(
    jax.vmap(
      lambda s, k, i: train_epoch(
        graphdef, s, jax.random.fold_in(k, i), x, y, batch_size=args.batch_size, bayes=bayes
      ),
      in_axes=(0, 0, None),
    )
  )
  for i in range(args.epochs):
    state = epoch(state, keys, i)
  # Validation and test in one compiled call: the same weight samples score both.
  # One run at a time (lax.map, not vmap): all runs' sampled activations at once
  # would not fit in memory.
  splits = (target.val, target.test)
  score = jax.jit(
    lambda states, keys: jax.lax.map(
      lambda run: [
        evaluate(graphdef, run[0], jax.random.fold_in(run[1], PREDICT_STREAM), split, bayes=bayes)
        for split in splits
      ],
      (states, keys),
    )
  )
  val, test = score(state, keys)
  as_lists = lambda tree: jax.tree.map(lambda a: np.asarray(a).tolist(), tree)
  return points, runs, as_lists(val), as_lists(test)


def select(points, runs, val, test, seeds):
  """The grid point with the lowest mean validation NLL at the mean weights; its test scores."""
  per_point = np.reshape(val["mean"]["nll"], (len(points), len(seeds)))
  per_point = np.where(np.isfinite(per_point), per_point, np.inf)
  best = int(np.argmin(per_point.mean(axis=1)))
  rows = slice(best * len(seeds), (best + 1) * len(seeds))
  chosen = jax.tree.map(lambda values: values[rows], test, is_leaf=lambda x: isinstance(x, list))
  grid = [
    {"point": point, "val_nll": float(nll)}
    for point, nll in zip(points, per_point.mean(axis=1), strict=True)
  ]
  return points[best], chosen, grid


# --- Report --------------------------------------------------------------------


def summary(values):
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def plot(results, path):
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  for ax, metric in zip(axes, ("accuracy", "nll", "ece"), strict=True):
    for label, style in (("AdamW-LoRA", "C0"), ("IVON-LoRA (mean)", "C2")):
      values = results[label][metric]
      ax.axhline(np.mean(values), color=style, ls="--", label=label)
      ax.axhspan(
        np.mean(values) - np.std(values), np.mean(values) + np.std(values), color=style, alpha=0.15
      )
    means = [np.mean(results[f"IVON-LoRA ({k})"][metric]) for k in SAMPLES]
    stds = [np.std(results[f"IVON-LoRA ({k})"][metric]) for k in SAMPLES]
    ax.errorbar(
      SAMPLES, means, yerr=stds, color="C1", marker="o", capsize=3, label="IVON-LoRA, k samples"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(SAMPLES, [str(k) for k in SAMPLES])
    ax.set_xlabel("test-time posterior samples k")
    ax.set_title(metric.upper() if metric != "accuracy" else "accuracy")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--rank", type=int, default=4)
  parser.add_argument("--pretrain-epochs", type=int, default=30)
  parser.add_argument("--pretrain-batch", type=int, default=128)
  parser.add_argument("--pretrain-lr", type=float, default=3e-3)
  parser.add_argument("--num-train", type=int, default=256, help="target training examples")
  parser.add_argument("--num-val", type=int, default=256)
  parser.add_argument("--num-test", type=int, default=1000)
  parser.add_argument("--epochs", type=int, default=60, help="fine-tuning epochs")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--tiny-grid", action="store_true", help="one grid point each (smoke test)")
  parser.add_argument("--out", default="outputs")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  out = pathlib.Path(args.out).resolve()
  os.makedirs(out, exist_ok=True)
  start = time.time()

  source = data.mnist1d(num_val=0, num_test=args.num_test)
  mean, std = source.train.inputs.mean(), source.train.inputs.std()
  source = standardize(source, mean, std)
  target = standardize(target_task(args.num_train, args.num_val, args.num_test), mean, std)

  base = pretrain(args, source)
  checkpoint = out / "lora_pretrained"
  save_pretrained(base, checkpoint)
  base_scores = {
    task: jax.tree.map(
      float, scores(jax.nn.log_softmax(base(split.inputs)), jnp.asarray(split.labels))
    )
    for task, split in (("source", source.test), ("target", target.test))
  }
  print(f"Pretrained base ({time.time() - start:.0f} s): {base_scores}")

  grids = {"adamw": ADAMW_GRID, "ivon": IVON_GRID}
  if args.tiny_grid:
    grids = {name: {k: v[:1] for k, v in grid.items()} for name, grid in grids.items()}
  results, chosen, searched = {}, {}, {}
  for name, label in (("adamw", "AdamW-LoRA"), ("ivon", "IVON-LoRA")):
    points, runs, val, test = finetune(args, name, grids[name], target, checkpoint)
    chosen[label], test, searched[label] = select(points, runs, val, test, args.seeds)
    if name == "adamw":
      results[label] = test["mean"]
    else:
      results[f"{label} (mean)"] = test["mean"]
      results.update({f"{label} ({k})": test[str(k)] for k in SAMPLES})
      ivon_diagnostics = test["diagnostics"]
    print(f"{label}: chosen {chosen[label]} ({time.time() - start:.0f} s)")

  print(f"Test on the shifted task, mean ± std over {len(args.seeds)} seeds:")
  print("| method | accuracy ↑ | NLL ↓ | ECE ↓ |\n|---|---|---|---|")
  for label, values in results.items():
    print(
      f"| {label} | " + " | ".join(summary(values[m]) for m in ("accuracy", "nll", "ece")) + " |"
    )
  print(models.describe_facts(ivon_diagnostics, "IVON-LoRA (adapters), chosen runs,"))
  plot(results, out / "lora_finetune.png")
  result = {
    "args": vars(args),
    "target_shift": TARGET_SHIFT,
    "grids": {"AdamW-LoRA": grids["adamw"], "IVON-LoRA": {**grids["ivon"], **IVON_FIXED}},
    "selection": "lowest mean validation NLL at the mean weights over the seeds",
    "base": base_scores,
    "chosen": chosen,
    "searched": searched,
    "metrics": results,
    "ivon_diagnostics": ivon_diagnostics,
    "seconds": time.time() - start,
  }
  with open(out / "lora_finetune.json", "w") as file:
    json.dump(result, file, indent=1)
  return result


if __name__ == "__main__":
  main()
