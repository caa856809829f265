"""A Flax NNX CNN with BatchNorm on MNIST-1D: AdamW against IVON at its mean and Bayesian.

The CNN (three 1-D convolutions, each followed by BatchNorm and a ReLU, then a
linear layer) trains with ``nnx.Optimizer``; IVON takes each step's gradient
at a weight sample (``ivon_optax.flax.nnx_value_and_grad_at_sample``) and is
configured by ``ivon_optax.recipe``. BatchNorm's statistics depend on the
weights, so the Bayesian model average recomputes them for every weight
sample on training inputs (``sample_nnx_outputs(batch_stats_inputs=...)``);
the table also shows the average with the running statistics gathered during
training, the mean weights with statistics recomputed at them, and every
method after calibration fitted on the validation split (temperature
scaling; posterior scaling for IVON). IVON's diagnostics (how
much of ``h`` the data set) are printed.

    python examples/cnn_nnx.py             # the chosen configurations, 5 seeds, test set
    python examples/cnn_nnx.py --sweep --samples 32 --stats-examples 1024   # choose them

The sweep scores every configuration by validation NLL + ECE (means over 2
seeds), IVON as its Bayesian model average, and picks the lowest.
"""

import argparse
import functools
import json
import os
import time

import data
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ivon_optax
import ivon_optax.flax

# Chosen on the validation split by `python examples/cnn_nnx.py --sweep`.
CHOSEN = {
  "adamw": {"learning_rate": 0.02, "weight_decay": 0.05},
  "ivon": {"learning_rate": 8.0, "temper": 16.0},
}
# The sweep's configurations: learning rates a factor 2 apart; IVON at the MLP's temper.
GRID = {
  "adamw": [{"learning_rate": lr, "weight_decay": 0.05} for lr in (0.005, 0.01, 0.02)],
  "ivon": [{"learning_rate": lr, "temper": 16.0} for lr in (8.0, 16.0)],
}
METRICS = ("accuracy", "nll", "ece", "brier")
CHANNELS = 32
SCALES = (0.25, 0.35, 0.5, 0.71, 1.0, 1.41)  # candidate posterior scales
FIT_SAMPLES = 16  # weight samples per candidate of the posterior-scale fit


class CNN(nnx.Module):
  """Conv-BatchNorm-ReLU three times (the last two with stride 2), then a linear classifier."""

  def __init__(self, length: int, channels: int, num_classes: int, *, rngs: nnx.Rngs):
    self.convs = nnx.List(
      [
        nnx.Conv(
          1 if i == 0 else channels, channels, (5,), strides=(1 if i == 0 else 2,), rngs=rngs
        )
        for i in range(3)
      ]
    )
    self.norms = nnx.List([nnx.BatchNorm(channels, momentum=0.9, rngs=rngs) for _ in range(3)])
    self.head = nnx.Linear(channels * (length // 4), num_classes, rngs=rngs)

  def __call__(self, x):
    x = x[..., None]
    for conv, norm in zip(self.convs, self.norms, strict=True):
      x = nnx.relu(norm(conv(x)))
    return self.head(x.reshape(x.shape[0], -1))


def cross_entropy(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@functools.lru_cache
def make_tx(name, values, *, num_train, num_steps, warmup_steps, length):
  """AdamW or IVON (``recipe``) with warm-up and cosine decay; ``values``: sorted items.

  The init scale is the CNN's at seed 0 (it hardly varies with the seed); one
  transform per configuration lets every seed share the compiled steps.
  """
  values = dict(values)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, values["learning_rate"], warmup_steps, max(num_steps, warmup_steps + 1)
  )
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=values["weight_decay"])
  model = CNN(length, CHANNELS, data.NUM_CLASSES, rngs=nnx.Rngs(0))
  hyperparameters = ivon_optax.recipe(
    nnx.state(model, nnx.Param), num_train=num_train, num_steps=num_steps, temper=values["temper"]
  )
  return ivon_optax.ivon(schedule, **hyperparameters)


_ivon_grad = ivon_optax.flax.nnx_value_and_grad_at_sample(cross_entropy)


def train_step(model, optimizer, key, x, y, *, ivon: bool):
  """One step: IVON's gradient at a weight sample (BatchNorm statistics of that sample)."""
  if ivon:
    loss, grads, noise = _ivon_grad(key, optimizer, model, x, y)
    optimizer.update(model, grads, noise=noise)
  else:
    loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
    optimizer.update(model, grads)
  return loss


@functools.partial(jax.jit, static_argnames=("graphdef", "ivon"))
def _train_epoch(graphdef, state, keys, x_batches, y_batches, *, ivon: bool):
  def body(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    loss = train_step(model, optimizer, *batch, ivon=ivon)
    return nnx.state((model, optimizer)), loss

  return jax.lax.scan(body, state, (keys, x_batches, y_batches))


def train_epoch(model, optimizer, keys, x_batches, y_batches, *, ivon: bool):
  """A ``lax.scan`` of :func:`train_step` over an epoch's batches; the mean loss."""
  graphdef, state = nnx.split((model, optimizer))
  state, losses = _train_epoch(graphdef, state, keys, x_batches, y_batches, ivon=ivon)
  nnx.update((model, optimizer), state)
  return losses.mean()


def train(name, values, train_split, *, seed, epochs, batch_size=128, warmup=5):
  """One run: ``(model, optimizer, per-epoch mean losses)``."""
  inputs, labels = jnp.asarray(train_split.inputs), jnp.asarray(train_split.labels)
  steps_per_epoch = len(labels) // batch_size
  key = jax.random.key(seed)
  model = CNN(inputs.shape[1], CHANNELS, data.NUM_CLASSES, rngs=nnx.Rngs(seed))
  tx = make_tx(
    name,
    tuple(sorted(values.items())),
    num_train=len(labels),
    num_steps=epochs * steps_per_epoch,
    warmup_steps=min(warmup, epochs) * steps_per_epoch,
    length=inputs.shape[1],
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  losses = []
  for epoch in range(epochs):
    order_key, sample_key = jax.random.split(jax.random.fold_in(key, epoch))
    order = jax.random.permutation(order_key, len(labels))[: steps_per_epoch * batch_size]
    order = order.reshape(steps_per_epoch, batch_size)
    keys = jax.random.split(sample_key, steps_per_epoch)
    losses.append(
      float(train_epoch(model, optimizer, keys, inputs[order], labels[order], ivon=name == "ivon"))
    )
  return model, optimizer, np.asarray(losses)


def eval_view(model):
  return nnx.view(model, use_running_average=True)


def _bayes_log_probs(key, optimizer, model, inputs, stats_inputs, scale, *, num_samples, refresh):
  """The Bayesian model average's log probs; per-sample BatchNorm statistics if ``refresh``."""
  outputs = ivon_optax.flax.sample_nnx_outputs(
    key,
    optimizer,
    model,
    inputs,
    num_samples=num_samples,
    batch_size=16,
    posterior_scale=scale,
    batch_stats_inputs=stats_inputs if refresh else None,
  )
  return ivon_optax.predict.predictive_log_probs(outputs)


bayes_log_probs = nnx.jit(_bayes_log_probs, static_argnames=("num_samples", "refresh"))


@functools.partial(nnx.jit, static_argnames=("num_samples",))
def fit_posterior_scale(key, optimizer, model, inputs, stats_inputs, labels, *, num_samples):
  """The posterior scale with the lowest validation NLL (per-sample BatchNorm statistics)."""
  predict_fn = lambda tau: _bayes_log_probs(
    key, optimizer, model, inputs, stats_inputs, tau, num_samples=num_samples, refresh=True
  )
  return ivon_optax.calibration.fit_posterior_scale(predict_fn, labels, scales=SCALES).scale


@nnx.jit
def mean_log_probs(model, inputs):
  return jax.nn.log_softmax(model(inputs))


def scores(log_probs, labels) -> dict:
  labels = jnp.asarray(labels)
  metrics = ivon_optax.metrics
  return {
    "accuracy": float(metrics.accuracy(log_probs, labels)),
    "nll": float(metrics.negative_log_likelihood(log_probs, labels)),
    "ece": float(metrics.expected_calibration_error(log_probs, labels)),
    "brier": float(metrics.brier_score(log_probs, labels)),
  }


def predictions(
  name, model, optimizer, dataset, *, seed, num_samples, calibrate=True, stats_examples=256
) -> dict:
  """``{method: (val log probs, test log probs)}`` of one trained run."""
  view = eval_view(model)
  splits = (jnp.asarray(dataset.val.inputs), jnp.asarray(dataset.test.inputs))
  if name == "adamw":
    return {"AdamW": tuple(mean_log_probs(view, x) for x in splits)}
  stats = jnp.asarray(dataset.train.inputs[:stats_examples])
  key = jax.random.fold_in(jax.random.key(seed), 2**31 - 2)
  bayes = lambda x, refresh, scale=1.0: bayes_log_probs(
    key, optimizer, view, x, stats, scale, num_samples=num_samples, refresh=refresh
  )
  # The mean weights with BatchNorm statistics recomputed at them (no temperature fitted).
  fresh = nnx.clone(view)
  ivon_optax.flax.refresh_batch_stats(fresh, stats)
  result = {
    "IVON (mean)": tuple(mean_log_probs(view, x) for x in splits),
    "IVON (mean, BN statistics recomputed)": (None, mean_log_probs(fresh, splits[1])),
    f"IVON (Bayes, {num_samples})": tuple(bayes(x, True) for x in splits),
    f"IVON (Bayes, {num_samples}, running BN statistics)": (None, bayes(splits[1], False)),
  }
  if calibrate:
    # The posterior scale: the validation NLL's minimizer, with its own samples.
    fit_key = jax.random.fold_in(key, 1)
    scale = float(
      fit_posterior_scale(
        fit_key,
        optimizer,
        view,
        splits[0],
        stats,
        jnp.asarray(dataset.val.labels),
        num_samples=FIT_SAMPLES,
      )
    )
    result[f"IVON (Bayes, {num_samples}) + posterior scale {scale:.2f}"] = (
      None,
      bayes(splits[1], True, scale),
    )
  return result


def ivon_diagnostics(model, optimizer) -> dict:
  params, opt_state = ivon_optax.flax.nnx_params_and_state(optimizer, model)
  return {k: float(v) for k, v in ivon_optax.diagnostics(opt_state, params).items()}


DIAGNOSTICS = ("hess_data_share", "learned", "prior_dominant", "step_factor_max", "hess_init_left")


def run_config(
  name, values, dataset, *, seeds, epochs, num_samples, calibrate, stats_examples, progress=True
):
  """Trains one configuration on every seed; ``{method: {metric: [per seed]}}`` and diagnostics."""
  table, diagnostics = {}, []
  for seed in seeds:
    model, optimizer, losses = train(name, values, dataset.train, seed=seed, epochs=epochs)
    methods = predictions(
      name,
      model,
      optimizer,
      dataset,
      seed=seed,
      num_samples=num_samples,
      calibrate=calibrate,
      stats_examples=stats_examples,
    )
    if name == "ivon":
      diagnostics.append(ivon_diagnostics(model, optimizer))
    for method, (val, test) in methods.items():
      method = method.split(" + posterior scale")[0] + (
        " + posterior scale" if "posterior scale" in method else ""
      )
      split_scores = {} if val is None else {"val": scores(val, dataset.val.labels)}
      if calibrate:
        split_scores["test"] = scores(test, dataset.test.labels)
      if calibrate and val is not None:
        temperature = ivon_optax.calibration.fit_temperature(val, jnp.asarray(dataset.val.labels))
        scaled = ivon_optax.calibration.temperature_scale(test, temperature)
        if "running" not in method:
          tscaled = table.setdefault(f"{method} + temperature", {})
          for metric, value in scores(scaled, dataset.test.labels).items():
            tscaled.setdefault("test_" + metric, []).append(value)
      entry = table.setdefault(method, {})
      for split, values_ in split_scores.items():
        for metric, value in values_.items():
          entry.setdefault(f"{split}_{metric}", []).append(value)
      entry.setdefault("final_train_loss", []).append(float(losses[-1]))
    if progress:
      print(f"  {name} {values} seed {seed}: done", flush=True)
  return table, diagnostics


def format_table(table: dict, split: str = "test") -> str:
  lines = ["| method | accuracy ↑ | NLL ↓ | ECE ↓ | Brier ↓ |", "|---" * 5 + "|"]
  for method, entry in table.items():
    if f"{split}_nll" not in entry:
      continue
    cells = [
      f"{np.mean(entry[f'{split}_{m}']):.3f} ± {np.std(entry[f'{split}_{m}']):.3f}" for m in METRICS
    ]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep(dataset, args) -> dict:
  """Every configuration of ``GRID`` on the validation split; the lowest NLL + ECE wins."""
  rows, chosen = [], {}
  for name in args.optimizers:
    best = None
    for values in GRID[name]:
      table, _ = run_config(
        name,
        values,
        dataset,
        seeds=args.sweep_seeds,
        epochs=args.epochs,
        num_samples=args.samples,
        calibrate=False,
        stats_examples=args.stats_examples,
        progress=False,
      )
      method = "AdamW" if name == "adamw" else f"IVON (Bayes, {args.samples})"
      entry = table[method]
      nll, ece = np.mean(entry["val_nll"]), np.mean(entry["val_ece"])
      finite = bool(np.all(np.isfinite(entry["final_train_loss"])) and np.isfinite(nll))
      row = {"name": name, **values, "val_nll": nll, "val_ece": ece, "criterion": nll + ece}
      row["val_accuracy"] = float(np.mean(entry["val_accuracy"]))
      rows.append(row)
      print(
        f"{name} {values}: val NLL {nll:.3f} + ECE {ece:.3f} = {nll + ece:.3f}, "
        f"accuracy {row['val_accuracy']:.3f}",
        flush=True,
      )
      if finite and (best is None or row["criterion"] < best["criterion"]):
        best = row
    chosen[name] = {k: best[k] for k in GRID[name][0]}
    print(f"{name}: chosen {chosen[name]}", flush=True)
  return {"rows": rows, "chosen": chosen}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--sweep-seeds", type=int, nargs="+", default=[100, 101])
  parser.add_argument("--samples", type=int, default=32, help="posterior samples of IVON's average")
  parser.add_argument(
    "--stats-examples",
    type=int,
    default=256,
    help="training inputs that set each weight sample's BatchNorm statistics",
  )
  parser.add_argument("--sweep", action="store_true", help="choose the configurations instead")
  parser.add_argument(
    "--optimizers", nargs="+", choices=("adamw", "ivon"), default=["adamw", "ivon"]
  )
  parser.add_argument("--out", default="outputs")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  pool = len(data.load("mnist1d").train.labels)
  dataset = data.load("mnist1d", num_train=pool - pool // 5, num_val=pool // 5)
  print(
    f"MNIST-1D: {len(dataset.train.labels)} train / {len(dataset.val.labels)} validation / "
    f"{len(dataset.test.labels)} test; CNN with BatchNorm, {args.epochs} epochs, batch 128"
  )
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  if args.sweep:
    result = sweep(dataset, args)
    result["seconds"] = time.perf_counter() - start
    suffix = "_".join(args.optimizers)
    with open(os.path.join(args.out, f"cnn_nnx_sweep_{suffix}.json"), "w") as file:
      json.dump(result, file, indent=1)
    return result
  table, diagnostics = {}, []
  for name, values in CHOSEN.items():
    if name not in args.optimizers:
      continue
    print(f"  {name}: {values}", flush=True)
    part, logs = run_config(
      name,
      values,
      dataset,
      seeds=args.seeds,
      epochs=args.epochs,
      num_samples=args.samples,
      calibrate=True,
      stats_examples=args.stats_examples,
    )
    table.update(part)
    diagnostics += logs
  raw = {m: e for m, e in table.items() if "+" not in m}
  calibrated = {m: e for m, e in table.items() if "+" in m}
  print(f"\nTest set, mean ± std over {len(args.seeds)} seeds {args.seeds}:\n")
  print(format_table(raw))
  print("\nCalibrated on the validation split:\n")
  print(format_table(calibrated))
  if diagnostics:
    summary = {k: [d[k] for d in diagnostics] for k in DIAGNOSTICS}
    print(
      "\nIVON diagnostics (mean over seeds): "
      + ", ".join(f"{k} {np.mean(v):.3g}" for k, v in summary.items())
    )
  seconds = time.perf_counter() - start
  print(f"({seconds:.0f} s)")
  result = {
    "args": vars(args),
    "configs": CHOSEN,
    "metrics": table,
    "ivon_diagnostics": diagnostics,
    "seconds": seconds,
  }
  suffix = "" if len(args.optimizers) == 2 else "_" + args.optimizers[0]
  with open(os.path.join(args.out, f"cnn_nnx{suffix}.json"), "w") as file:
    json.dump(result, file, indent=1)
  return result


if __name__ == "__main__":
  main()
