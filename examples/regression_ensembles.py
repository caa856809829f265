"""In-between uncertainty: does the ±2σ band cover the true function in the gap between the data?

The 1-D regression of ``regression_1d.py`` (``data.regression_1d``,
``models.MeanAndNoiseMLP``, ``models.REGRESSION_CONFIGS``), fitted by K IVON
runs and K AdamW runs per seed, all vmapped.
Three predictive distributions per seed:

* **IVON**: member 0, its Bayesian prediction over ``--samples`` weight samples;
* **MultiIVON**: the K members' posteriors as an equal-weight mixture, each
  member's ``--samples`` samples pooled (``ivon_optax.ensemble``);
* **deep ensemble**: the K AdamW fits as an equal-weight mixture of their
  Gaussians (means and learned noise).

For each, the coverage is the fraction of grid points in a region where the
true function lies inside the predictive mean ± 2 predictive std, on the
data, in the gap and outside the data; the mean predictive std says whether
a band covers by blowing up. Mean ± std over seeds.

    python examples/regression_ensembles.py
"""

import argparse
import json
import os

import data
import jax
import models
import numpy as np

import ivon_optax
import ivon_optax.ensemble


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=150)
  parser.add_argument("--num-points", type=int, default=1000)
  parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
  parser.add_argument("--members", type=int, default=4)
  parser.add_argument("--samples", type=int, default=64, help="weight samples per IVON member")
  parser.add_argument("--beta2", type=float, default=models.REGRESSION_CONFIGS["ivon"].beta2)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def by_seed(tree, num_seeds: int):
  return jax.tree.map(lambda leaf: leaf.reshape(num_seeds, -1, *leaf.shape[1:]), tree)


def predictive_bands(model, ivon, adamw, num_seeds, members, num_samples, x_grid) -> dict:
  """``{method: PredictiveMoments with fields (seeds, grid)}``."""
  apply = lambda p, x: model.apply({"params": p}, x)
  keys = jax.random.split(jax.random.key(models.PREDICT_STREAM), num_seeds)
  params, states = by_seed(ivon.params, num_seeds), by_seed(ivon.opt_state, num_seeds)

  @jax.jit
  def ivon_moments(keys, states, params):
    outputs = jax.vmap(
      lambda k, s, p: ivon_optax.ensemble.sample_ensemble_outputs(
        k, apply, s, p, x_grid, num_samples=num_samples, batch_size=16
      )
    )(keys, states, params)
    return jax.vmap(ivon_optax.predict.predictive_moments)(outputs[..., 0], outputs[..., 1])

  first = lambda tree: jax.tree.map(lambda leaf: leaf[:, :1], tree)
  deterministic = by_seed(models.predict_at_mean(model, adamw.params, x_grid), num_seeds)
  return {
    "IVON": ivon_moments(keys, first(states), first(params)),
    f"MultiIVON (K={members})": ivon_moments(keys, states, params),
    # Each AdamW fit is one "sample"; their mixture is the deep ensemble's prediction.
    f"Deep ensemble (AdamW, K={members})": jax.vmap(ivon_optax.predict.predictive_moments)(
      deterministic[..., 0], deterministic[..., 1]
    ),
  }


def coverage(moments, truth: np.ndarray, masks: dict) -> dict:
  """Per region: the fraction of the truth inside mean ± 2 std, and the mean std, per seed."""
  mean, std = np.asarray(moments.mean), np.sqrt(np.asarray(moments.variance))
  inside = np.abs(truth - mean) <= 2.0 * std
  return {
    region: {
      "coverage": inside[:, mask].mean(1).tolist(),
      "std": std[:, mask].mean(1).tolist(),
    }
    for region, mask in masks.items()
  }


def run_seeds(seeds, members: int) -> list[int]:
  """Run ``1000 s + k`` is member k of seed s's ensemble."""
  return [1000 * s + k for s in seeds for k in range(members)]


def main(argv=None) -> dict:
  args = parse_args(argv)
  train = data.regression_1d(args.num_points)
  model = models.MeanAndNoiseMLP(tuple(args.hidden))
  num_seeds, members = len(args.seeds), args.members
  fits = models.fit_regression(
    train,
    hidden=args.hidden,
    seeds=run_seeds(args.seeds, members),
    epochs=args.epochs,
    beta2=args.beta2,
    progress=not args.no_progress,
  )
  x_grid = np.linspace(-4.0, 4.0, 401, dtype=np.float32)
  bands = predictive_bands(
    model, fits["ivon"], fits["adamw"], num_seeds, members, args.samples, x_grid[:, None]
  )
  truth, masks = data.true_function(x_grid), data.regression_regions(x_grid)
  results = {method: coverage(m, truth, masks) for method, m in bands.items()}

  spread = lambda values: f"{np.mean(values):.2f} ± {np.std(values):.2f}"
  print(
    f"{num_seeds} seeds x {members} members; fraction of the true function inside "
    "mean ± 2 std (mean predictive std)\n"
  )
  print("| method | " + " | ".join(masks) + " |\n" + "|---" * (len(masks) + 1) + "|")
  for method, by_region in results.items():
    cells = [f"{spread(r['coverage'])} ({np.mean(r['std']):.3f})" for r in by_region.values()]
    print(f"| {method} | " + " | ".join(cells) + " |")
  diagnostics = models.report_diagnostics(fits["ivon"].opt_state, fits["ivon"].params)

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "regression_ensembles.png")
  plot(train, x_grid, bands, path)
  print(f"\nPlot (seed {args.seeds[0]}): {path}")
  summary = {
    "args": vars(args),
    "results": results,
    "ivon_diagnostics": diagnostics,
    "plot": path,
  }
  with open(os.path.join(args.out, "regression_ensembles.json"), "w") as file:
    json.dump(summary, file, indent=1)
  return summary


def plot(train: data.Split, x_grid, bands: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, panels = plt.subplots(1, len(bands), figsize=(5 * len(bands), 3.8), sharey=True)
  for panel, (method, moments), color in zip(
    panels, bands.items(), ("tab:blue", "tab:green", "tab:red"), strict=True
  ):
    mean, std = np.asarray(moments.mean[0]), np.sqrt(np.asarray(moments.variance[0]))
    panel.axvspan(*data.REGRESSION_GAP, color="0.92", label="gap")
    for low, high in data.REGRESSION_INTERVALS:
      panel.axvspan(low, high, color="0.97")
    panel.fill_between(x_grid, mean - 2 * std, mean + 2 * std, color=color, alpha=0.3)
    panel.plot(x_grid, mean, color=color, label=f"{method}: mean ± 2 std")
    panel.plot(x_grid, data.true_function(x_grid), color="0.2", lw=0.8, label="true function")
    panel.scatter(train.inputs[:, 0], train.labels, s=3, color="k", zorder=3)
    panel.set(xlabel="x", ylim=(-3.5, 3.5), title=method)
    panel.legend(loc="lower right", fontsize=7)
  panels[0].set_ylabel("y")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
