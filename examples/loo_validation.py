"""Validation without a validation set: IVON's leave-one-out estimate against the test NLL.

Trains a small MLP on a few hundred digits with IVON and, after every epoch,
computes ``ivon_optax.sensitivity.leave_one_out`` on the training data alone. Plots the
estimate next to the test NLL (which training never sees), reports their
correlation and what early stopping on the estimate would pick, then shows
the pitfall: with the default ``beta2=0.99999`` the posterior variance stays
at its ``hess_init`` scale and so does the estimate.

Run from the repository root:

  PYTHONPATH=. python examples/loo_validation.py --out loo_validation.png
"""

import argparse

import jax
import numpy as np
import optax

import ivon_optax

try:
  from examples import variance_common as common
except ImportError:  # run as a script: python examples/loo_validation.py
  import variance_common as common


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-train", type=int, default=300)
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--steps-per-epoch", type=int, default=10, help="IVON steps (batch 32)")
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
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="loo_validation.png")
  return parser.parse_args(argv)


def run(args, *, hess_init, beta2, num_epochs):
  train, test = common.load_digits_splits([args.num_train, 800], seed=args.seed)
  params = common.init_mlp(jax.random.key(args.seed), [64, 32, common.NUM_CLASSES])
  if args.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(
      args.learning_rate, num_epochs * args.steps_per_epoch, alpha=0.05
    )
  else:
    schedule = optax.constant_schedule(args.learning_rate)
  tx = ivon_optax.ivon(
    schedule,
    ess=float(args.num_train),
    hess_init=hess_init,
    beta2=beta2,
    weight_decay=args.weight_decay,
  )
  return common.train_with_loo(
    jax.random.key(args.seed + 1),
    tx,
    params,
    train,
    test,
    num_epochs=num_epochs,
    steps_per_epoch=args.steps_per_epoch,
    batch_size=32,
  )[2]


def correlation(a, b) -> float:
  """Pearson correlation; nan when either curve is constant (e.g. a very short run)."""
  if np.std(a) == 0 or np.std(b) == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def plot(path, log):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = np.arange(1, len(log.test_nll) + 1)
  fig, (nll_ax, error_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
  nll_ax.plot(epochs, log.test_nll, label="test NLL (held out)", color="black")
  nll_ax.plot(epochs, log.loo_nll, label="LOO estimate (training data only)", color="tab:red")
  nll_ax.plot(epochs, log.train_nll, label="training NLL", color="tab:blue", ls="--")
  picked = int(np.argmin(log.loo_nll))
  nll_ax.axvline(picked + 1, color="tab:red", ls=":", lw=1, label="early stop on LOO")
  nll_ax.set(xlabel="epoch", ylabel="NLL", yscale="log", title="negative log-likelihood")
  nll_ax.legend(fontsize=8)
  error_ax.plot(epochs, log.test_error, label="test error", color="black")
  error_ax.plot(epochs, log.loo_error, label="LOO error estimate", color="tab:red")
  error_ax.set(xlabel="epoch", ylabel="error rate", title="error")
  error_ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> dict:
  args = parse_args(argv)
  log = run(args, hess_init=args.hess_init, beta2=args.beta2, num_epochs=args.epochs)
  plot(args.out, log)
  picked = int(np.argmin(log.loo_nll))
  best = int(np.argmin(log.test_nll))
  summary = {
    "output": args.out,
    "correlation_nll": correlation(log.loo_nll, log.test_nll),
    "correlation_error": correlation(log.loo_error, log.test_error),
    "picked_epoch": picked + 1,
    "picked_test_nll": float(log.test_nll[picked]),
    "best_epoch": best + 1,
    "best_test_nll": float(log.test_nll[best]),
    "final": {name: float(values[-1]) for name, values in log._asdict().items()},
  }
  print(
    f"corr(LOO NLL, test NLL) over {args.epochs} epochs: {summary['correlation_nll']:.3f}; "
    f"corr(LOO error, test error): {summary['correlation_error']:.3f}"
  )
  print(
    f"early stopping on the LOO estimate: epoch {picked + 1}, test NLL "
    f"{log.test_nll[picked]:.4f}; best test NLL {log.test_nll[best]:.4f} at epoch {best + 1}"
  )
  print(
    f"final epoch: LOO NLL {log.loo_nll[-1]:.4f}, test NLL {log.test_nll[-1]:.4f}, "
    f"train NLL {log.train_nll[-1]:.4f}; LOO error {log.loo_error[-1]:.4f}, test error "
    f"{log.test_error[-1]:.4f}"
  )
  print(f"saved {args.out}")

  if args.pitfall_epochs > 0:
    rows = []
    settings = [(0.01, 0.99999), (0.1, 0.99999), (1.0, 0.99999), (args.hess_init, args.beta2)]
    for hess_init, beta2 in settings:
      run_log = run(args, hess_init=hess_init, beta2=beta2, num_epochs=args.pitfall_epochs)
      rows.append(
        {
          "hess_init": hess_init,
          "beta2": beta2,
          "loo_nll": float(run_log.loo_nll[-1]),
          "test_nll": float(run_log.test_nll[-1]),
          "train_nll": float(run_log.train_nll[-1]),
        }
      )
    summary["pitfall"] = rows
    print(f"\nhess_init pitfall, after {args.pitfall_epochs} epochs:\n")
    print("| hess_init | beta2 | LOO NLL | test NLL | train NLL |")
    print("|---|---|---|---|---|")
    for row in rows:
      print(
        f"| {row['hess_init']:g} | {row['beta2']:g} | {row['loo_nll']:.3f} | "
        f"{row['test_nll']:.3f} | {row['train_nll']:.3f} |"
      )
  return summary


if __name__ == "__main__":
  main()
