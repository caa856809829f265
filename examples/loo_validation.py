"""Validation without a validation set: IVON's leave-one-out estimate against the test NLL.

Trains a small MLP on a few hundred digits with IVON and, after every epoch,
computes ``ivon_optax.sensitivity.leave_one_out`` on the training data alone. Plots the
estimate next to the test NLL (which training never sees), reports their
correlation and what early stopping on the estimate would pick, then shows
the pitfall: with the default ``beta2=0.99999`` the posterior variance stays
at its ``hess_init`` scale and so does the estimate.

Mean ± std over ``--seeds`` (each its own data split and run); the plot shows
the first seed.

  python examples/loo_validation.py
"""

import argparse
import json
import os

import data
import flax.linen as nn
import jax
import jax.numpy as jnp
import models
import numpy as np

import ivon_optax


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-train", type=int, default=300)
  parser.add_argument("--epochs", type=int, default=60, help="IVON epochs (batch 32)")
  parser.add_argument("--learning-rate", type=float, default=0.3)
  parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
  parser.add_argument("--hess-init", type=float, default=0.1)
  parser.add_argument("--beta2", type=float, default=0.999)
  parser.add_argument("--weight-decay", type=float, default=1e-4)
  parser.add_argument(
    "--pitfall-epochs",
    type=int,
    default=30,
    help="epochs per run of the hess_init comparison (0 to skip it)",
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--out", default="outputs")
  return parser.parse_args(argv)


def run(args, seed, *, hess_init, beta2, num_epochs, every_epoch=True):
  """IVON training; the LOO estimate, train and test NLL after each epoch (or the last)."""
  dataset = data.digits(num_train=args.num_train, num_test=800, seed=seed)
  train, test = dataset.train, dataset.test
  model = models.MLP((32,), activation=nn.tanh)
  apply = lambda params, inputs: model.apply({"params": params}, inputs)
  config = models.OptimizerConfig(
    "ivon",
    args.learning_rate,
    args.weight_decay,
    batch_size=32,
    hess_init=hess_init,
    beta2=beta2,
    warmup_epochs=0,
    schedule=args.schedule,
  )
  rows = []

  def record(epoch, params, opt_state):
    if not every_epoch and epoch < num_epochs - 1:
      return
    params, opt_state = models.select(params, 0), models.select(opt_state, 0)
    estimate = ivon_optax.sensitivity.leave_one_out(
      apply, opt_state, params, jnp.asarray(train.inputs), jnp.asarray(train.labels)
    )
    test_log_probs = jax.nn.log_softmax(apply(params, test.inputs))
    logs = ivon_optax.diagnostics(opt_state, params)
    rows.append(
      {
        **{key: float(logs[key]) for key in models.KEY_FACTS},
        "loo_nll": float(estimate.nll),
        "loo_error": float(estimate.error),
        "train_nll": float(estimate.train_nll),
        "test_nll": float(ivon_optax.metrics.negative_log_likelihood(test_log_probs, test.labels)),
        "test_error": 1.0 - float(ivon_optax.metrics.accuracy(test_log_probs, test.labels)),
      }
    )

  models.train(
    model,
    config,
    train.inputs,
    train.labels,
    seeds=[seed],
    epochs=num_epochs,
    progress=False,
    on_epoch=record,
  )
  return {key: np.asarray([row[key] for row in rows]) for key in rows[0]}


def correlation(a, b) -> float:
  """Pearson correlation; nan when either curve is constant (e.g. a very short run)."""
  if np.std(a) == 0 or np.std(b) == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def plot(path, log):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = np.arange(1, len(log["test_nll"]) + 1)
  fig, (nll_ax, error_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
  nll_ax.plot(epochs, log["test_nll"], label="test NLL (held out)", color="black")
  nll_ax.plot(epochs, log["loo_nll"], label="LOO estimate (training data only)", color="tab:red")
  nll_ax.plot(epochs, log["train_nll"], label="training NLL", color="tab:blue", ls="--")
  picked = int(np.argmin(log["loo_nll"]))
  nll_ax.axvline(picked + 1, color="tab:red", ls=":", lw=1, label="early stop on LOO")
  nll_ax.set(xlabel="epoch", ylabel="NLL", yscale="log", title="negative log-likelihood")
  nll_ax.legend(fontsize=8)
  error_ax.plot(epochs, log["test_error"], label="test error", color="black")
  error_ax.plot(epochs, log["loo_error"], label="LOO error estimate", color="tab:red")
  error_ax.set(xlabel="epoch", ylabel="error rate", title="error")
  error_ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> dict:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  per_seed = []
  for index, seed in enumerate(args.seeds):
    log = run(args, seed, hess_init=args.hess_init, beta2=args.beta2, num_epochs=args.epochs)
    if index == 0:
      plot(os.path.join(args.out, "loo_validation.png"), log)
    picked, best = int(np.argmin(log["loo_nll"])), int(np.argmin(log["test_nll"]))
    per_seed.append(
      {
        "correlation_nll": correlation(log["loo_nll"], log["test_nll"]),
        "correlation_error": correlation(log["loo_error"], log["test_error"]),
        "picked_epoch": picked + 1,
        "picked_test_nll": float(log["test_nll"][picked]),
        "best_epoch": best + 1,
        "best_test_nll": float(log["test_nll"][best]),
        "final": {name: float(values[-1]) for name, values in log.items()},
      }
    )
  spread = lambda values: f"{np.mean(values):.3f} ± {np.std(values):.3f}"
  field = lambda key: [row[key] for row in per_seed]
  final = lambda key: [row["final"][key] for row in per_seed]
  print(f"{len(args.seeds)} seeds (mean ± std), {args.epochs} epochs")
  print(
    f"corr(LOO NLL, test NLL) over epochs: {spread(field('correlation_nll'))}; "
    f"corr(LOO error, test error): {spread(field('correlation_error'))}"
  )
  print(
    f"early stopping on the LOO estimate: test NLL {spread(field('picked_test_nll'))}; "
    f"best test NLL {spread(field('best_test_nll'))}"
  )
  print(
    f"final epoch: LOO NLL {spread(final('loo_nll'))}, test NLL {spread(final('test_nll'))}, "
    f"train NLL {spread(final('train_nll'))}; LOO error {spread(final('loo_error'))}, "
    f"test error {spread(final('test_error'))}"
  )
  print(models.describe_facts({key: final(key) for key in models.KEY_FACTS}, "IVON, final epoch,"))
  summary = {
    "args": vars(args),
    "seeds": per_seed,
    "plot": os.path.join(args.out, "loo_validation.png"),
  }
  if args.pitfall_epochs > 0:
    rows = []
    settings = [(0.01, 0.99999), (0.1, 0.99999), (1.0, 0.99999), (args.hess_init, args.beta2)]
    for hess_init, beta2 in settings:
      logs = [
        run(
          args,
          seed,
          hess_init=hess_init,
          beta2=beta2,
          num_epochs=args.pitfall_epochs,
          every_epoch=False,
        )
        for seed in args.seeds
      ]
      row = {"hess_init": hess_init, "beta2": beta2}
      for key in ("loo_nll", "test_nll", "train_nll"):
        row[key] = [float(log[key][-1]) for log in logs]
      rows.append(row)
    summary["pitfall"] = rows
    print(f"\nhess_init pitfall, after {args.pitfall_epochs} epochs ({len(args.seeds)} seeds):\n")
    print("| hess_init | beta2 | LOO NLL | test NLL | train NLL |\n|---|---|---|---|---|")
    for row in rows:
      print(
        f"| {row['hess_init']:g} | {row['beta2']:g} | {spread(row['loo_nll'])} | "
        f"{spread(row['test_nll'])} | {spread(row['train_nll'])} |"
      )
  with open(os.path.join(args.out, "loo_validation.json"), "w") as file:
    json.dump(summary, file, indent=1)
  print(f"saved {summary['plot']}")
  return summary


if __name__ == "__main__":
  main()
