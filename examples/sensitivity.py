"""Which training digits does the model depend on most? Memory-perturbation scores from IVON.

Trains a small MLP on digits with IVON, scores every training example with
``ivon_optax.sensitivity.classification_sensitivity`` (the estimated L1 change of the
example's predicted probabilities if it were left out), and saves a grid of
the most and the least influential digits. It also compares the Jacobian
variances with the sampled ones (``ivon_optax.sensitivity.sampled_prediction_variance``).

Run from the repository root:

  PYTHONPATH=. python examples/sensitivity.py --out sensitivity_digits.png
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

import ivon_optax

try:
  from examples import variance_common as common
except ImportError:  # run as a script: python examples/sensitivity.py
  import variance_common as common


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-train", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=3000, help="IVON steps (batch 64)")
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--show", type=int, default=16, help="digits per group in the grid")
  parser.add_argument(
    "--mc-samples", type=int, default=64, help="weight samples for the sampled-variance comparison"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="sensitivity_digits.png")
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
  for (title, indices), num_rows in zip(groups, rows_per_group):
    for slot in range(num_rows * columns):
      ax = axes[row + slot // columns, slot % columns]
      ax.axis("off")
      if slot >= len(indices):
        continue
      i = indices[slot]
      ax.imshow(split.inputs[i].reshape(common.IMAGE_SHAPE), cmap="gray_r")
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


def main(argv=None) -> dict:
  args = parse_args(argv)
  train, test = common.load_digits_splits([args.num_train, 500], seed=args.seed)
  params = common.init_mlp(jax.random.key(args.seed), [64, args.hidden, common.NUM_CLASSES])
  tx = ivon_optax.ivon(
    0.2, ess=float(args.num_train), hess_init=0.1, beta2=0.999, weight_decay=1e-3
  )
  params, state = common.train_ivon(
    jax.random.key(args.seed + 1), tx, params, train, num_steps=args.steps, batch_size=64
  )
  inputs, labels = jnp.asarray(train.inputs), jnp.asarray(train.labels)
  sensitivity = ivon_optax.sensitivity.classification_sensitivity(
    common.mlp_apply, state, params, inputs, labels
  )
  scores = np.asarray(sensitivity.score)
  probs = np.asarray(jax.nn.softmax(sensitivity.outputs, axis=-1))
  order = np.argsort(-scores)
  top, bottom = order[: args.show], order[-args.show :][::-1]

  sampled_variance = ivon_optax.sensitivity.sampled_prediction_variance(
    jax.random.key(args.seed + 2),
    common.mlp_apply,
    state,
    params,
    inputs,
    num_samples=args.mc_samples,
  )
  sampled = ivon_optax.sensitivity.softmax_sensitivity(
    sensitivity.outputs, labels, sampled_variance
  )
  rank_agreement = float(spearmanr(scores, np.asarray(sampled.score)).statistic)
  variance_ratio = float(np.median(np.asarray(sampled_variance) / np.asarray(sensitivity.variance)))

  misclassified = np.argmax(probs, -1) != train.labels
  plot_grid(args.out, train, probs, scores, top, bottom)
  summary = {
    "output": args.out,
    "test_accuracy": float(common.accuracy(params, test.inputs, test.labels)),
    "top": top.tolist(),
    "bottom": bottom.tolist(),
    "score_quantiles": np.quantile(scores, [0.0, 0.5, 0.9, 0.99, 1.0]).tolist(),
    "misclassified_in_top": int(misclassified[top].sum()),
    "misclassified_total": int(misclassified.sum()),
    "mean_p_label_top": float(probs[top, train.labels[top]].mean()),
    "mean_p_label_bottom": float(probs[bottom, train.labels[bottom]].mean()),
    "spearman_jacobian_vs_sampled": rank_agreement,
    "median_sampled_over_jacobian_variance": variance_ratio,
  }
  print(
    f"test accuracy {summary['test_accuracy']:.3f}; scores: min/median/90%/99%/max = "
    + " / ".join(f"{q:.2e}" for q in summary["score_quantiles"])
  )
  print(
    f"top {args.show}: {summary['misclassified_in_top']} misclassified "
    f"(of {summary['misclassified_total']} in the training set), mean p(y) "
    f"{summary['mean_p_label_top']:.3f}; bottom {args.show}: mean p(y) "
    f"{summary['mean_p_label_bottom']:.3f}"
  )
  print(
    f"Jacobian vs sampled ({args.mc_samples} samples) variance: Spearman of scores "
    f"{rank_agreement:.3f}, median variance ratio sampled/Jacobian {variance_ratio:.2f}"
  )
  print(f"saved {args.out}")
  return summary


if __name__ == "__main__":
  main()
