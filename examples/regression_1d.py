"""1-D regression with a gap in the data: IVON's predictive band widens where there is no data.

A small MLP that predicts a mean and a learned (homoscedastic) noise scale is
fitted to noisy samples of a curve on two separate intervals, once with IVON
and once with AdamW (a deterministic fit). IVON's Bayesian prediction over
weight samples gives a predictive mean and variance, split into the aleatoric
part (the learned noise) and the epistemic part (disagreement between weight
samples); the plot shows the mean ±2 standard deviations.

Half of each hidden layer's units are tanh, half ReLU
(``models.MeanAndNoiseMLP``). With a diagonal (mean-field) Gaussian
posterior, a ReLU network's variance between two clusters of data can hardly
exceed its variance on them (Foong et al., 2019, "'In-Between' Uncertainty in
Bayesian Neural Networks"): a ReLU unit active in the gap is also active on
one side of it. A tanh unit whose transition sits in the gap changes the
output only around the gap, so the data leave its weights uncertain. ReLU
units extrapolate linearly, so their uncertainty grows beyond the data, where
tanh units saturate.

    python examples/regression_1d.py --out outputs
"""

import argparse
import json
import os

import data
import jax
import models
import numpy as np

import ivon_optax

GRID = np.linspace(-4.0, 4.0, 401, dtype=np.float32)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=150)
  parser.add_argument("--num-points", type=int, default=1000)
  parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument(
    "--beta2",
    type=float,
    default=models.REGRESSION_CONFIGS["ivon"].beta2,
    help="IVON's Hessian decay; lower it for short runs so that h adapts",
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def band(hidden, ivon: models.Runs, x_grid: np.ndarray, num_samples: int):
  """IVON's Bayesian prediction on ``x_grid``: ``PredictiveMoments`` with fields (runs, grid)."""
  model = models.MeanAndNoiseMLP(tuple(hidden))
  keys = jax.random.split(jax.random.key(0), len(ivon.losses))
  outputs = models.predict_samples(
    model, ivon.params, ivon.opt_state, keys, x_grid[:, None], num_samples=num_samples
  )
  return jax.vmap(ivon_optax.predict.predictive_moments)(outputs[..., 0], outputs[..., 1])


def summarize(moments, x_grid: np.ndarray) -> dict:
  """Per region of ``x_grid``: the mean predictive and epistemic std per run; the learned noise."""
  std = np.sqrt(np.asarray(moments.variance))  # (runs, grid)
  epistemic_std = np.sqrt(np.asarray(moments.epistemic))
  summary = {
    region: {
      "std": std[:, mask].mean(1).tolist(),
      "epistemic_std": epistemic_std[:, mask].mean(1).tolist(),
    }
    for region, mask in data.regression_regions(x_grid).items()
  }
  summary["noise_std"] = np.sqrt(np.asarray(moments.aleatoric)).mean(axis=1).tolist()
  return summary


def main(argv=None) -> dict:
  args = parse_args(argv)
  # One data set; the seeds vary the initialization, the batches and IVON's samples.
  train = data.regression_1d(args.num_points)
  fits = models.fit_regression(
    train,
    hidden=args.hidden,
    seeds=args.seeds,
    epochs=args.epochs,
    beta2=args.beta2,
    progress=not args.no_progress,
  )
  moments = band(args.hidden, fits["ivon"], GRID, args.samples)
  summary = summarize(moments, GRID)
  spread = lambda values: f"{np.mean(values):.3f} ± {np.std(values):.3f}"
  print(
    f"{len(args.seeds)} seeds; learned noise std {spread(summary['noise_std'])} "
    f"(true {data.REGRESSION_NOISE_STD})"
  )
  print("| region | predictive std | epistemic std |\n|---|---|---|")
  for region in ("data", "gap", "outside"):
    print(
      f"| {region} | {spread(summary[region]['std'])} | "
      f"{spread(summary[region]['epistemic_std'])} |"
    )
  summary["ivon_diagnostics"] = models.report_diagnostics(
    fits["ivon"].opt_state, fits["ivon"].params
  )

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "regression_1d.png")
  model = models.MeanAndNoiseMLP(tuple(args.hidden))
  deterministic = np.asarray(models.predict_at_mean(model, fits["adamw"].params, GRID[:, None]))
  std = np.sqrt(np.asarray(moments.variance[0]))
  plot(train, GRID, np.asarray(moments.mean)[0], std, deterministic[0, :, 0], path)
  print(f"Plot (seed {args.seeds[0]}): {path}")
  summary["plot"] = path
  with open(os.path.join(args.out, "regression_1d.json"), "w") as file:
    json.dump({"args": vars(args), **summary}, file, indent=1)
  return summary


def plot(train: data.Split, x_grid, mean, std, deterministic, path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 3.8))
  ax.fill_between(
    x_grid,
    mean - 2 * std,
    mean + 2 * std,
    color="tab:blue",
    alpha=0.25,
    label="IVON ±2 std (Bayes)",
  )
  ax.plot(x_grid, mean, color="tab:blue", label="IVON predictive mean")
  ax.plot(x_grid, deterministic, color="tab:red", linestyle="--", label="AdamW fit")
  ax.plot(x_grid, data.true_function(x_grid), color="0.3", linewidth=0.8, label="true function")
  ax.scatter(train.inputs[:, 0], train.labels, s=6, color="k", label="training data", zorder=3)
  ax.set(xlabel="x", ylabel="y", ylim=(-3.5, 3.5))
  ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
