r"""IVON against AdamW on a small byte-level transformer language model in Flax NNX.

A decoder-only transformer (causal self-attention, pre-LayerNorm blocks, input and output
embeddings tied) learns to predict the next byte of Python's own standard-library source, read
from a fixed list of modules (no download). The text is split by position into train,
validation and test parts; every example is a window of ``--context`` bytes.

AdamW runs with linear warm-up and cosine decay, global-norm clipping and weight decay masked
off LayerNorm scales and biases (``optax.masked`` through ``optax.adamw(mask=...)``). IVON runs
with the same schedule and the same mask (``weight_decay_mask=``), its posterior from
``ivon_optax.recipe`` with the number of training tokens as ``num_train``, and takes each
gradient at a weight sample (``ivon_optax.flax.nnx_value_and_grad_at_sample``).

    python examples/language_model.py sweep --optimizer adamw --learning-rates 1e-3 3e-3 1e-2 3e-2
    python examples/language_model.py sweep --optimizer ivon --learning-rates 1000 3000 10000 \\
        --tempers 16 64
    python examples/language_model.py test --adamw-lr 3e-3 --ivon-lr 10000 --temper 16 \\
        --seeds 0 1 2 3 4

The model has 120,576 parameters by default (width 64, 2 blocks, context 64), small enough for a
CPU; ``--width``, ``--depth``, ``--heads`` and ``--context`` make it larger. docs/language-model.md
has the results.

``sweep`` trains one seed per configuration and scores it on the validation part; ``test``
trains the chosen configurations on several seeds and reports, on the test part, NLL per byte,
perplexity, next-byte accuracy and ECE (IVON at its mean weights and as the Bayesian average
over ``--samples`` weight samples), writes a JSON of every number, a markdown table and a plot
of the validation NLL over training, and prints IVON's diagnostics.
"""

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ivon_optax
import ivon_optax.flax

VOCAB = 256  # bytes
# A fixed list of pure-Python standard-library modules, concatenated in this order.
CORPUS_MODULES = (
  "argparse",
  "ast",
  "base64",
  "bisect",
  "calendar",
  "cmd",
  "codecs",
  "collections",
  "configparser",
  "contextlib",
  "copy",
  "csv",
  "dataclasses",
  "datetime",
  "difflib",
  "enum",
  "fnmatch",
  "fractions",
  "functools",
  "getopt",
  "gettext",
  "glob",
  "gzip",
  "heapq",
  "hmac",
  "inspect",
  "ipaddress",
  "json.decoder",
  "json.encoder",
  "locale",
  "logging",
  "mimetypes",
  "numbers",
  "operator",
  "optparse",
  "pathlib",
  "pickle",
  "pprint",
  "queue",
  "random",
  "shlex",
  "shutil",
  "statistics",
  "string",
  "tarfile",
  "tempfile",
  "textwrap",
  "threading",
  "tokenize",
  "traceback",
  "typing",
  "uuid",
  "warnings",
  "weakref",
  "zipfile",
)
SPLITS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The transformer's shape."""

  context: int = 64
  width: int = 64
  depth: int = 2
  heads: int = 4
  mlp_ratio: int = 4


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One training run."""

  optimizer: str  # "adamw" or "ivon"
  learning_rate: float
  temper: float = 16.0  # IVON only
  weight_decay: float = 0.1  # AdamW only
  clip_norm: float = 1.0  # AdamW only: global-norm clipping in the chain
  steps: int = 400
  warmup: int = 40
  batch_size: int = 16
  seed: int = 0


# ----------------------------------------------------------------------------------------------
# Data


def corpus(modules: tuple[str, ...] = CORPUS_MODULES) -> np.ndarray:
  """The source of ``modules``, concatenated in order, as a uint8 array of bytes."""
  texts = [inspect.getsource(importlib.import_module(name)) for name in modules]
  return np.frombuffer("\n".join(texts).encode("utf-8"), dtype=np.uint8)


def split(data: np.ndarray, name: str) -> np.ndarray:
  """The ``name`` part ("train", "validation" or "test") of ``data``, cut by position."""
  if name not in SPLITS:
    raise ValueError(f"Unknown split {name!r}: use one of {sorted(SPLITS)}.")
  start, stop = SPLITS[name]
  return data[int(start * len(data)) : int(stop * len(data))]


def windows(data: np.ndarray, context: int, limit: int | None = None) -> np.ndarray:
  """Non-overlapping ``(context + 1)``-byte windows of ``data``: inputs ``[:-1]``, targets ``[1:]``.

  Consecutive windows share one byte, so every byte but the first is a target exactly once.
  """
  count = (len(data) - 1) // context
  if limit is not None:
    count = min(count, limit)
  index = np.arange(count)[:, None] * context + np.arange(context + 1)[None, :]
  return data[index].astype(np.int32)


def random_windows(key: jax.Array, data: jax.Array, context: int, batch_size: int) -> jax.Array:
  """``batch_size`` windows of ``context + 1`` bytes at uniformly random offsets of ``data``."""
  starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - context)
  return data[starts[:, None] + jnp.arange(context + 1)[None, :]]


# ----------------------------------------------------------------------------------------------
# Model


class Block(nnx.Module):
  """A pre-LayerNorm transformer block: causal self-attention, then an MLP, each residual."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    width = config.width
    self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
      num_heads=config.heads, in_features=width, decode=False, keep_rngs=False, rngs=rngs
    )
    self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
    self.hidden = nnx.Linear(width, config.mlp_ratio * width, rngs=rngs)
    self.out = nnx.Linear(config.mlp_ratio * width, width, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.out(nnx.gelu(self.hidden(self.mlp_norm(x))))


class Transformer(nnx.Module):
  """A decoder-only byte-level transformer; the output layer is the input embedding, transposed."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(VOCAB, config.width, embedding_init=init, rngs=rngs)
    self.position = nnx.Embed(config.context, config.width, embedding_init=init, rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
    self.final_norm = nnx.LayerNorm(config.width, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Next-byte logits ``(..., length, 256)`` for ``tokens`` ``(..., length)``."""
    length = tokens.shape[-1]
    if length > self.config.context:
      raise ValueError(
        f"`tokens` has {length} positions; the model's context is at most "
        f"{self.config.context}: cut it into windows."
      )
    x = self.embed(tokens) + self.position(jnp.arange(length))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.embed.attend(self.final_norm(x))


def parameter_count(model: nnx.Module) -> int:
  """The number of trainable parameters (tied embeddings counted once)."""
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def decay_mask(params: Any) -> Any:
  """Weight decay on kernels and embeddings only: not on LayerNorm scales or biases.

  Chosen by name, not by shape: attention's query, key and value biases have two axes.
  """
  return jax.tree_util.tree_map_with_path(_decayed, params)


def _decayed(path: tuple, leaf: Any) -> bool:
  del leaf
  return any(getattr(key, "key", None) in ("kernel", "embedding") for key in path)


def loss_fn(model: Transformer, batch: jax.Array) -> jax.Array:
  """The mean next-byte cross-entropy of a batch of ``(context + 1)``-byte windows."""
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


# ----------------------------------------------------------------------------------------------
# Optimizers


def schedule(run: RunConfig) -> optax.Schedule:
  """Linear warm-up to the peak learning rate, then cosine decay to a tenth of it."""
  return optax.warmup_cosine_decay_schedule(
    0.0, run.learning_rate, run.warmup, run.steps, end_value=0.1 * run.learning_rate
  )


def make_optimizer(run: RunConfig, model: Transformer, num_train: int) -> nnx.Optimizer:
  """AdamW (clipped, masked decay) or IVON (recipe, masked prior) for ``model``."""
  if run.optimizer == "adamw":
    tx = optax.chain(
      optax.clip_by_global_norm(run.clip_norm),
      optax.adamw(schedule(run), weight_decay=run.weight_decay, mask=decay_mask),
    )
  elif run.optimizer == "ivon":
    params = nnx.state(model, nnx.Param)
    hyper = ivon_optax.recipe(params, num_train=num_train, num_steps=run.steps, temper=run.temper)
    tx = ivon_optax.ivon(schedule(run), weight_decay_mask=decay_mask, **hyper)
  else:
    raise ValueError(f"Unknown optimizer {run.optimizer!r}: use 'adamw' or 'ivon'.")
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


_ivon_grad = ivon_optax.flax.nnx_value_and_grad_at_sample(loss_fn)


@nnx.jit(static_argnums=(4, 5))
def adamw_step(model, optimizer, key, data, context, batch_size):
  """One AdamW step on a random batch of ``data``; returns the loss."""
  batch = random_windows(key, data, context, batch_size)
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
  optimizer.update(model, grads)
  return loss


@nnx.jit(static_argnums=(4, 5))
def ivon_step(model, optimizer, key, data, context, batch_size):
  """One IVON step: the gradient at a weight sample, then the mean moves; returns the loss."""
  batch_key, sample_key = jax.random.split(key)
  batch = random_windows(batch_key, data, context, batch_size)
  loss, grads, noise = _ivon_grad(sample_key, optimizer, model, batch)
  optimizer.update(model, grads, noise=noise)
  return loss


STEPS = {"adamw": adamw_step, "ivon": ivon_step}


# ----------------------------------------------------------------------------------------------
# Evaluation


@nnx.jit
def mean_log_probs(model, batch):
  """Normalized next-byte log-probabilities at the model's (mean) weights."""
  return jax.nn.log_softmax(model(batch[:, :-1]))


@nnx.jit(static_argnames="num_samples")
def bayes_log_probs(model, optimizer, key, batch, num_samples):
  """The Bayesian model average's log-probabilities over ``num_samples`` weight samples."""
  logits = ivon_optax.flax.sample_nnx_outputs(
    key, optimizer, model, batch[:, :-1], num_samples=num_samples, batch_size=1
  )
  return ivon_optax.predict.predictive_log_probs(logits)


def scores(log_prob_chunks: list, target_chunks: list) -> dict[str, float]:
  """NLL per byte, perplexity, next-byte accuracy and ECE over all positions."""
  log_probs = jnp.concatenate([chunk.reshape(-1, VOCAB) for chunk in log_prob_chunks])
  targets = jnp.concatenate([chunk.reshape(-1) for chunk in target_chunks])
  nll = float(ivon_optax.metrics.negative_log_likelihood(log_probs, targets))
  return {
    "nll": nll,
    "perplexity": float(np.exp(nll)),
    "accuracy": float(ivon_optax.metrics.accuracy(log_probs, targets)),
    "ece": float(ivon_optax.metrics.expected_calibration_error(log_probs, targets)),
  }


def evaluate(model, optimizer, eval_windows, *, bayes_samples=0, key=None, chunk=32) -> dict:
  """Scores on ``eval_windows`` at the mean weights and, for ``bayes_samples`` > 0, averaged."""
  result = {}
  chunks = [jnp.asarray(eval_windows[i : i + chunk]) for i in range(0, len(eval_windows), chunk)]
  targets = [batch[:, 1:] for batch in chunks]
  result["mean"] = scores([mean_log_probs(model, batch) for batch in chunks], targets)
  if bayes_samples:
    keys = jax.random.split(key, len(chunks))
    averaged = [
      bayes_log_probs(model, optimizer, k, batch, bayes_samples)
      for k, batch in zip(keys, chunks, strict=True)
    ]
    result["bayes"] = scores(averaged, targets)
  return result


# ----------------------------------------------------------------------------------------------
# Training


def train(
  run: RunConfig,
  config: ModelConfig,
  data: dict[str, np.ndarray],
  *,
  eval_split: str,
  eval_windows: int,
  curve_every: int,
  curve_windows: int,
  bayes_samples: int,
) -> dict:
  """Trains one run; returns its scores on ``eval_split``, its validation curve and diagnostics."""
  model = Transformer(config, rngs=nnx.Rngs(run.seed))
  train_data = jnp.asarray(data["train"].astype(np.int32))
  optimizer = make_optimizer(run, model, num_train=len(data["train"]) - 1)
  step_fn = STEPS[run.optimizer]
  curve_set = windows(data["validation"], config.context, curve_windows)
  key = jax.random.key(1000 + run.seed)
  curve, losses = [], []
  start = time.perf_counter()
  for step in range(run.steps):
    loss = step_fn(
      model, optimizer, jax.random.fold_in(key, step), train_data, config.context, run.batch_size
    )
    losses.append(loss)
    if (step + 1) % curve_every == 0 or step + 1 == run.steps:
      nll = evaluate(model, optimizer, curve_set)["mean"]["nll"]
      curve.append((step + 1, nll))
      print(
        f"  {run.optimizer} step {step + 1}: train {float(loss):.4f} validation {nll:.4f}",
        flush=True,
      )
  train_seconds = time.perf_counter() - start
  result = {
    "run": dataclasses.asdict(run),
    "train_seconds": train_seconds,
    "final_train_loss": float(np.mean([float(x) for x in losses[-20:]])),
    "curve": curve,
  }
  samples = bayes_samples if run.optimizer == "ivon" else 0
  result[eval_split] = evaluate(
    model,
    optimizer,
    windows(data[eval_split], config.context, eval_windows),
    bayes_samples=samples,
    key=jax.random.key(2000 + run.seed),
  )
  if run.optimizer == "ivon":
    params, opt_state = ivon_optax.flax.nnx_params_and_state(optimizer, model)
    logs = ivon_optax.diagnostics(opt_state, params)
    result["diagnostics"] = {name: float(value) for name, value in logs.items()}
  return result


def load_data() -> dict[str, np.ndarray]:
  """The corpus's train, validation and test parts."""
  data = corpus()
  return {name: split(data, name) for name in SPLITS}


def finite_or_inf(value: float) -> float:
  """``value``, or infinity for a diverged run's NaN, so that it is never selected."""
  return value if np.isfinite(value) else float("inf")


def run_sweep(args, config: ModelConfig, data) -> None:
  """One seed per configuration, scored on validation; the best by validation NLL is reported."""
  tempers = args.tempers if args.optimizer == "ivon" else [None]
  results = []
  for learning_rate in args.learning_rates:
    for temper in tempers:
      run = RunConfig(
        args.optimizer,
        learning_rate,
        temper=temper or 16.0,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        seed=args.seed,
      )
      print(f"{args.optimizer} lr={learning_rate} temper={temper}", flush=True)
      result = train(
        run,
        config,
        data,
        eval_split="validation",
        eval_windows=args.eval_windows,
        curve_every=args.curve_every,
        curve_windows=args.curve_windows,
        bayes_samples=args.samples,
      )
      prediction = "bayes" if "bayes" in result["validation"] else "mean"
      result["selection_nll"] = finite_or_inf(result["validation"][prediction]["nll"])
      print(
        f"  validation {prediction} NLL {result['selection_nll']:.4f} "
        f"({result['train_seconds']:.0f} s)",
        flush=True,
      )
      results.append(result)
  best = min(results, key=lambda r: r["selection_nll"])
  print(
    f"best: lr={best['run']['learning_rate']} temper={best['run']['temper']} "
    f"validation NLL {best['selection_nll']:.4f}"
  )
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"language_model_sweep_{args.optimizer}.json"
  path.write_text(json.dumps({"model": dataclasses.asdict(config), "results": results}, indent=1))
  print(f"wrote {path}")


def mean_std(values: list[float]) -> str:
  """``mean ± std`` (sample std over seeds) with three decimals."""
  return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def table(results: list[dict]) -> str:
  """Markdown: test metrics, mean ± std over seeds, for AdamW, IVON's mean and IVON's average."""
  rows = [
    ("AdamW", "adamw", "mean"),
    ("IVON, mean weights", "ivon", "mean"),
    ("IVON, Bayesian average", "ivon", "bayes"),
  ]
  lines = [
    "| method | NLL per byte ↓ | perplexity ↓ | accuracy ↑ | ECE ↓ |",
    "|---|---|---|---|---|",
  ]
  for label, optimizer, prediction in rows:
    runs = [r["test"][prediction] for r in results if r["run"]["optimizer"] == optimizer]
    cells = [mean_std([r[m] for r in runs]) for m in ("nll", "perplexity", "accuracy", "ece")]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_curves(results: list[dict], path: Path) -> None:
  """The validation NLL over training, mean over seeds with the seeds' range shaded."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.8))
  for optimizer, label in (("adamw", "AdamW"), ("ivon", "IVON (mean weights)")):
    curves = [r["curve"] for r in results if r["run"]["optimizer"] == optimizer]
    steps = [step for step, _ in curves[0]]
    values = np.array([[nll for _, nll in curve] for curve in curves])
    ax.plot(steps, values.mean(0), label=label)
    ax.fill_between(steps, values.min(0), values.max(0), alpha=0.25)
  ax.set_xlabel("step")
  ax.set_ylabel("validation NLL per byte")
  ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


def run_test(args, config: ModelConfig, data) -> None:
  """The chosen configurations on several seeds, scored on the test part."""
  results = []
  for seed in args.seeds:
    for optimizer, learning_rate in (("adamw", args.adamw_lr), ("ivon", args.ivon_lr)):
      run = RunConfig(
        optimizer,
        learning_rate,
        temper=args.temper,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        seed=seed,
      )
      print(f"{optimizer} seed {seed}", flush=True)
      result = train(
        run,
        config,
        data,
        eval_split="test",
        eval_windows=args.eval_windows,
        curve_every=args.curve_every,
        curve_windows=args.curve_windows,
        bayes_samples=args.samples,
      )
      print("  test " + json.dumps(result["test"]), flush=True)
      if "diagnostics" in result:
        logs = result["diagnostics"]
        print(
          f"  IVON diagnostics: hess_data_share {logs['hess_data_share']:.3f}, learned "
          f"{bool(logs['learned'])}, prior_dominant {logs['prior_dominant']:.3f}",
          flush=True,
        )
      results.append(result)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "language_model_test.json").write_text(
    json.dumps(
      {"model": dataclasses.asdict(config), "args": vars(args), "results": results}, indent=1
    )
  )
  print(table(results))
  ivon_runs = [r for r in results if r["run"]["optimizer"] == "ivon"]
  for name in ("hess_data_share", "learned", "prior_dominant"):
    print(f"IVON {name}: {mean_std([r['diagnostics'][name] for r in ivon_runs])}")
  plot_curves(results, Path(args.figure))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sweep = sub.add_parser("sweep", help="tune on the validation part, one seed")
  sweep.add_argument("--optimizer", choices=("adamw", "ivon"), required=True)
  sweep.add_argument("--learning-rates", type=float, nargs="+", required=True)
  sweep.add_argument("--tempers", type=float, nargs="+", default=[16.0])
  sweep.add_argument("--seed", type=int, default=0)
  test = sub.add_parser("test", help="chosen configurations on several seeds, test part")
  test.add_argument("--adamw-lr", type=float, required=True)
  test.add_argument("--ivon-lr", type=float, required=True)
  test.add_argument("--temper", type=float, required=True)
  test.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  test.add_argument("--figure", default="docs/images/language_model_curve.png")
  for p in (sweep, test):
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="weight samples of IVON's average")
    p.add_argument("--eval-windows", type=int, default=256, help="windows scored at the end")
    p.add_argument("--curve-every", type=int, default=50)
    p.add_argument("--curve-windows", type=int, default=32)
    p.add_argument("--out", default="results")
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  config = ModelConfig(args.context, args.width, args.depth, args.heads)
  data = load_data()
  sizes = {name: len(part) for name, part in data.items()}
  model = Transformer(config, rngs=nnx.Rngs(0))
  print(f"corpus bytes {sizes}; model {config}: {parameter_count(model):,} parameters")
  if args.command == "sweep":
    run_sweep(args, config, data)
  else:
    run_test(args, config, data)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
