"""Model selection without a validation set: what IVON's leave-one-out estimate picks.

Two selections a user makes with a validation set, made instead with
``ivon_optax.sensitivity.leave_one_out`` on the training data alone:

* **the epoch** of an overfitting run (constant learning rate, small data,
  little weight decay): the epoch with the lowest estimate against the epoch
  with the lowest validation NLL;
* **the weight decay** from a grid, each model trained to the end.

For each, it reports the test NLL that each choice gives, and the best test
NLL any choice could give. Tanh MLPs on digits and MNIST-1D, several seeds
(each seed draws new splits and a new initialization).

Run from the repository root (a few minutes on 2 CPU cores)::

  JAX_PLATFORMS=cpu PYTHONPATH=. python examples/loo_selection.py
  JAX_PLATFORMS=cpu PYTHONPATH=. python examples/loo_selection.py --json outputs/loo_selection.json
"""

import argparse
import functools
import itertools
import json
import os
import time
from typing import NamedTuple

import data
import jax
import jax.numpy as jnp
import models
import numpy as np
import optax

import ivon_optax

METHODS = ("diagonal", "block", "leverage")

# --- Data: small functions, self-contained -------------------------------------------


class Splits(NamedTuple):
  train: tuple  # (inputs float32 (n, d), labels int32 (n,))
  validation: tuple
  test: tuple


def mnist1d_all():
  """MNIST-1D's training pool and test set together (5000 examples, generated locally)."""
  train, test = data.mnist1d_arrays()
  return data.Split(*(np.concatenate(pair) for pair in zip(train, test, strict=True)))


def split(arrays, sizes, seed) -> Splits:
  """Disjoint random train, validation and test splits of the given sizes."""
  inputs, labels = arrays
  order = np.random.default_rng(seed).permutation(len(labels))
  bounds = np.cumsum([0, *sizes])
  parts = [(inputs[order[a:b]], labels[order[a:b]]) for a, b in itertools.pairwise(bounds)]
  return Splits(*parts)


DATASETS = {  # name: (loader, train, validation, test sizes, hidden width)
  "digits": (data.digits_arrays, (300, 300, 1000), 32),
  "mnist1d": (mnist1d_all, (500, 500, 2000), 64),
}

# --- Model and training ------------------------------------------------------------


mlp_apply = models.tanh_mlp_apply
mean_nll = functools.partial(models.mean_nll, apply=mlp_apply)


def init_mlp(key, sizes):
  """Weights N(0, 1 / fan_in), zero biases."""
  return models.init_mlp(key, sizes, gain=1.0)


def make_ivon(learning_rate, num_train, weight_decay, args):
  return ivon_optax.ivon(
    learning_rate,
    ess=float(num_train),
    hess_init=args.hess_init,
    beta2=args.beta2,
    weight_decay=weight_decay,
  )


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size", "make_tx"))
def train_steps(
  key, params, state, inputs, labels, weight_decay, *, num_steps, batch_size, make_tx
):
  """``num_steps`` IVON steps on random minibatches; ``weight_decay`` may be traced."""
  tx = make_tx(weight_decay)
  return models.fit(
    key,
    tx,
    params,
    mean_nll,
    inputs,
    labels,
    steps=num_steps,
    batch_size=batch_size,
    opt_state=state,
  )


def estimates(state, params, splits):
  """LOO estimates of every method, and the validation and test NLL at the mean."""
  inputs, labels = (jnp.asarray(a) for a in splits.train)
  row = {
    method: float(
      ivon_optax.sensitivity.leave_one_out(
        mlp_apply, state, params, inputs, labels, method=method
      ).nll
    )
    for method in METHODS
  }
  row["validation"] = float(mean_nll(params, *splits.validation))
  row["test"] = float(mean_nll(params, *splits.test))
  row["train"] = float(mean_nll(params, *splits.train))
  logs = ivon_optax.diagnostics(state, params)
  row.update({key: float(logs[key]) for key in ("hess_at_init", *models.KEY_FACTS)})
  return row


# --- The two selections ---------------------------------------------------------------


def epoch_curves(splits, hidden, seed, args):
  """Per-epoch estimates of one constant-learning-rate run."""
  inputs, labels = (jnp.asarray(a) for a in splits.train)
  num_train = labels.shape[0]
  make_tx = functools.partial(make_ivon, args.learning_rate, num_train, args=args)
  params = init_mlp(jax.random.key(seed), [inputs.shape[1], hidden, 10])
  state = make_tx(args.epoch_weight_decay).init(params)
  steps = num_train // args.batch_size
  rows = []
  for epoch in range(args.epochs):
    params, state = train_steps(
      jax.random.fold_in(jax.random.key(seed + 1000), epoch),
      params,
      state,
      inputs,
      labels,
      args.epoch_weight_decay,
      num_steps=steps,
      batch_size=args.batch_size,
      make_tx=make_tx,
    )
    rows.append(estimates(state, params, splits))
  return {name: np.asarray([row[name] for row in rows]) for name in rows[0]}


def weight_decay_grid(splits, hidden, seed, args):
  """Estimates at the end of one cosine-schedule run per weight decay."""
  inputs, labels = (jnp.asarray(a) for a in splits.train)
  num_train = labels.shape[0]
  num_steps = args.epochs * (num_train // args.batch_size)
  schedule = optax.cosine_decay_schedule(args.learning_rate, num_steps, alpha=0.05)
  make_tx = functools.partial(make_ivon, schedule, num_train, args=args)
  rows = []
  for weight_decay in args.weight_decays:
    params = init_mlp(jax.random.key(seed), [inputs.shape[1], hidden, 10])
    params, state = train_steps(
      jax.random.key(seed + 2000),
      params,
      make_tx(weight_decay).init(params),
      inputs,
      labels,
      jnp.float32(weight_decay),
      num_steps=num_steps,
      batch_size=args.batch_size,
      make_tx=make_tx,
    )
    rows.append(estimates(state, params, splits))
  return {name: np.asarray([row[name] for row in rows]) for name in rows[0]}


def picks(curves):
  """Test NLL at the choice of each criterion, and the best achievable.

  An estimate that is NaN (leave-one-out is impossible there) is never picked;
  a criterion that is NaN everywhere picks nothing (``None``, test NLL NaN).
  """
  result = {"best": float(curves["test"].min()), "best_at": int(np.argmin(curves["test"]))}
  for criterion in ("validation", *METHODS):
    values = np.asarray(curves[criterion], np.float64)
    index = int(np.nanargmin(values)) if np.any(~np.isnan(values)) else None
    result[criterion] = float("nan") if index is None else float(curves["test"][index])
    result[f"{criterion}_at"] = index
  return result


def mean_std(values):
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def report(title, per_seed, labels):
  print(f"\n### {title}\n")
  print("| criterion | picks | test NLL of the pick | excess over the best |")
  print("|---|---|---|---|")
  for criterion in ("validation", *METHODS):
    chosen = [
      "-" if p[f"{criterion}_at"] is None else labels[p[f"{criterion}_at"]] for p in per_seed
    ]
    excess = [p[criterion] - p["best"] for p in per_seed]
    name = "held-out validation" if criterion == "validation" else f"LOO, {criterion}"
    print(
      f"| {name} | {', '.join(map(str, chosen))} | {mean_std([p[criterion] for p in per_seed])} "
      f"| {mean_std(excess)} |"
    )
  best = [labels[p["best_at"]] for p in per_seed]
  best_nll = mean_std([p["best"] for p in per_seed])
  print(f"| best on test | {', '.join(map(str, best))} | {best_nll} | 0 |")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--learning-rate", type=float, default=0.3)
  parser.add_argument("--hess-init", type=float, default=0.1)
  parser.add_argument("--beta2", type=float, default=0.999)
  parser.add_argument("--epoch-weight-decay", type=float, default=1e-4)
  parser.add_argument(
    "--weight-decays", nargs="+", type=float, default=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
  )
  parser.add_argument("--json", default=None, help="write the per-seed results here")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  results = {}
  for name in args.datasets:
    loader, sizes, hidden = DATASETS[name]
    arrays = loader()
    start = time.perf_counter()
    epochs, decays, finals = [], [], []
    for seed in args.seeds:
      splits = split(arrays, sizes, seed)
      curves = epoch_curves(splits, hidden, seed, args)
      epochs.append(picks(curves))
      finals.append({key: curves[key][-1] for key in models.KEY_FACTS})
      decays.append(picks(weight_decay_grid(splits, hidden, seed, args)))
    print(
      f"\n## {name}: MLP {hidden} tanh units, {sizes[0]} train / {sizes[1]} validation / "
      f"{sizes[2]} test, IVON hess_init {args.hess_init}, beta2 {args.beta2}, ess = {sizes[0]}, "
      f"seeds {args.seeds} ({time.perf_counter() - start:.0f} s)"
    )
    report(
      f"Epoch (1-{args.epochs}), constant lr {args.learning_rate}, weight decay "
      f"{args.epoch_weight_decay}",
      epochs,
      list(range(1, args.epochs + 1)),
    )
    report(
      f"Weight decay, cosine lr {args.learning_rate} over {args.epochs} epochs",
      decays,
      args.weight_decays,
    )
    facts = {key: [row[key] for row in finals] for key in models.KEY_FACTS}
    print("\n" + models.describe_facts(facts, "IVON, last epoch of the epoch run,"))
    results[name] = {"epoch": epochs, "weight_decay": decays, "ivon_diagnostics": finals}
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as file:
      json.dump({"args": vars(args), "results": results}, file, indent=1)
  return results


if __name__ == "__main__":
  main()
