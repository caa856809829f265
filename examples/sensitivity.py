"""Which training digits does the model depend on most? Memory-perturbation scores from IVON.

Trains a small MLP on digits with IVON, scores every training example with
``ivon_optax.sensitivity.classification_sensitivity`` (the estimated L1 change of the
example's predicted probabilities if it were left out), and saves a grid of
the most and the least influential digits. It also compares the Jacobian
variances with the sampled ones (``ivon_optax.sensitivity.sampled_prediction_variance``).

The numbers are mean ± std over ``--seeds`` (each its own data split and
training run); the grid shows the first seed.

  python examples/sensitivity.py
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
from scipy.stats import spearmanr

import ivon_optax

IMAGE_SHAPE = (8, 8)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-train", type=int, default=1000)
  parser.add_argument("--epochs", type=int, default=200, help="IVON epochs (batch 64)")
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--show", type=int, default=16, help="digits per group in the grid")
  parser.add_argument(
    "--mc-samples", type=int, default=64, help="weight samples for the sampled-variance comparison"
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--out", default="outputs")
  return parser.parse_args(argv)


def plot_grid(path, split, probs, scores, top, bottom):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = 8
  groups = [("most influential", top), ("least influential", bottom)]
  rows_per_group = [int(np.ceil(len(indices) / columns)) for _, indices in groups]
  fig, axes = plt.subplots(
    sum(rows_per_group),
    columns,
    figsize=(1.5 * columns, 1.75 * sum(rows_per_group) + 0.6),
    squeeze=False,
  )
  row = 0
  for (title, indices), num_rows in zip(groups, rows_per_group, strict=True):
    for slot in range(num_rows * columns):
      ax = axes[row + slot // columns, slot % columns]
      ax.axis("off")
      if slot >= len(indices):
        continue
      i = indices[slot]
      ax.imshow(split.inputs[i].reshape(IMAGE_SHAPE), cmap="gray_r")
      ax.set_title(
        f"y={split.labels[i]} p={probs[i, split.labels[i]]:.2f}\ns={scores[i]:.1e}", fontsize=7
      )
    axes[row, 0].text(
      -0.6,
      0.5,
      title,
      transform=axes[row, 0].transAxes,
      rotation=90,
      va="center",
      ha="right",
      fontsize=9,
    )
    row += num_rows
  fig.suptitle(
    "Training digits ranked by memory-perturbation sensitivity (IVON posterior)\n"
    "y: label, p: predicted p(y), s: estimated L1 change of p if left out",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def score_seed(args, seed: int, show: bool) -> dict:
  """Trains on one split of the digits, scores its training examples; plots if ``show``."""
  dataset = data.digits(num_train=args.num_train, num_test=500, seed=seed)
  train = dataset.train
  model = models.MLP((args.hidden,), activation=nn.tanh)
  apply = lambda params, inputs: model.apply({"params": params}, inputs)
  config = models.OptimizerConfig(
    "ivon", 0.2, 1e-3, batch_size=64, hess_init=0.1, beta2=0.999, schedule="constant"
  )
  runs = models.train(
    model, config, train.inputs, train.labels, seeds=[seed], epochs=args.epochs, progress=False
  )
  params, state = models.select(runs.params, 0), models.select(runs.opt_state, 0)
  inputs, labels = jnp.asarray(train.inputs), jnp.asarray(train.labels)
  sensitivity = ivon_optax.sensitivity.classification_sensitivity(
    apply, state, params, inputs, labels
  )
  scores = np.asarray(sensitivity.score)
  probs = np.asarray(jax.nn.softmax(sensitivity.outputs, axis=-1))
  order = np.argsort(-scores)
  top, bottom = order[: args.show], order[-args.show :][::-1]
  sampled_variance = ivon_optax.sensitivity.sampled_prediction_variance(
    jax.random.key(seed + 2), apply, state, params, inputs, num_samples=args.mc_samples
  )
  sampled = ivon_optax.sensitivity.softmax_sensitivity(
    sensitivity.outputs, labels, sampled_variance
  )
  misclassified = np.argmax(probs, -1) != train.labels
  test_logits = apply(params, dataset.test.inputs)
  if show:
    plot_grid(os.path.join(args.out, "sensitivity_digits.png"), train, probs, scores, top, bottom)
  logs = ivon_optax.diagnostics(state, params)
  return {
    **{key: float(logs[key]) for key in models.KEY_FACTS},
    "test_accuracy": float(np.mean(np.argmax(test_logits, -1) == dataset.test.labels)),
    "top": top.tolist(),
    "bottom": bottom.tolist(),
    "score_quantiles": np.quantile(scores, [0.0, 0.5, 0.9, 0.99, 1.0]).tolist(),
    "misclassified_in_top": int(misclassified[top].sum()),
    "misclassified_total": int(misclassified.sum()),
    "mean_p_label_top": float(probs[top, train.labels[top]].mean()),
    "mean_p_label_bottom": float(probs[bottom, train.labels[bottom]].mean()),
    "spearman_jacobian_vs_sampled": float(spearmanr(scores, np.asarray(sampled.score)).statistic),
    "median_sampled_over_jacobian_variance": float(
      np.median(np.asarray(sampled_variance) / np.asarray(sensitivity.variance))
    ),
  }


def main(argv=None) -> dict:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  per_seed = [score_seed(args, seed, show=i == 0) for i, seed in enumerate(args.seeds)]
  spread = lambda key: (
    f"{np.mean([r[key] for r in per_seed]):.3f} ± {np.std([r[key] for r in per_seed]):.3f}"
  )
  print(f"{len(args.seeds)} seeds (mean ± std); test accuracy {spread('test_accuracy')}")
  print(
    f"top {args.show} by score: {spread('misclassified_in_top')} misclassified "
    f"(of {spread('misclassified_total')} in the training set), mean p(y) "
    f"{spread('mean_p_label_top')}; bottom {args.show}: mean p(y) {spread('mean_p_label_bottom')}"
  )
  print(
    f"Jacobian vs sampled ({args.mc_samples} samples) variance: Spearman of scores "
    f"{spread('spearman_jacobian_vs_sampled')}, median variance ratio sampled/Jacobian "
    f"{spread('median_sampled_over_jacobian_variance')}"
  )
  print(models.describe_facts({key: [r[key] for r in per_seed] for key in models.KEY_FACTS}))
  summary = {
    "args": vars(args),
    "seeds": per_seed,
    "grid": os.path.join(args.out, "sensitivity_digits.png"),
  }
  with open(os.path.join(args.out, "sensitivity.json"), "w") as file:
    json.dump(summary, file, indent=1)
  print(f"saved {summary['grid']}")
  return summary


if __name__ == "__main__":
  main()
