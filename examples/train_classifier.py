"""The main job: train one MLP classifier with SGD, AdamW and IVON, and compare them.

Every optimizer trains the same MLP with the same budget (epochs, warm-up and
cosine schedule) on the same seeds, all seeds at once. The table gives test
accuracy, NLL, ECE and Brier score, mean ± std over seeds; IVON is scored at
its mean weights and as the Bayesian model average of 64 posterior samples.
A reliability diagram and a JSON of every number are written to ``--out``.

    python examples/train_classifier.py                     # MNIST-1D, generated locally
    python examples/train_classifier.py --dataset digits    # scikit-learn's 8x8 digits

The hyperparameters were chosen on a validation split of the training set by
``examples/sweep_classifier.py`` (see docs/hyperparameters.md).
"""

import argparse
import dataclasses
import json
import os
import time

import data
import jax
import jax.numpy as jnp
import matplotlib
import models
import numpy as np

import ivon_optax

matplotlib.use("Agg")

Config = models.OptimizerConfig
# Chosen by examples/sweep_classifier.py: lowest mean validation NLL over 5 seeds
# among configurations whose half and double learning rates also train.
CONFIGS = {
  "mnist1d": {
    "sgd": Config("sgd", learning_rate=0.1, weight_decay=1e-3),
    "adamw": Config("adamw", learning_rate=0.01, weight_decay=0.5),
    "ivon": Config("ivon", learning_rate=0.5, weight_decay=1e-3, hess_init=0.1),
  },
  "digits": {
    "sgd": Config("sgd", learning_rate=0.1, weight_decay=1e-3),
    "adamw": Config("adamw", learning_rate=0.01, weight_decay=0.5),
    "ivon": Config("ivon", learning_rate=0.5, weight_decay=1e-3, hess_init=0.1),
  },
}
BASELINES = {"sgd": "SGD", "adamw": "AdamW"}
METRICS = {
  "accuracy": ("accuracy ↑", +1),
  "nll": ("NLL ↓", -1),
  "ece": ("ECE ↓", -1),
  "brier": ("Brier ↓", -1),
}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=("mnist1d", "digits"), default="mnist1d")
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--samples", type=int, default=64, help="posterior samples of IVON's average")
  parser.add_argument(
    "--num-train", type=int, default=None, help="default: the whole training pool"
  )
  parser.add_argument(
    "--optimizers", nargs="+", choices=models.OPTIMIZERS, default=list(models.OPTIMIZERS)
  )
  parser.add_argument(
    "--lr-scale", type=float, default=1.0, help="multiplies every learning rate (stability checks)"
  )
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def format_table(table: dict, num_seeds: int) -> str:
  """``{method: {metric: [per seed]}}`` as a Markdown table of mean ± std over seeds."""
  lines = [
    "| method | " + " | ".join(label for label, _ in METRICS.values()) + " |",
    "|---" * (len(METRICS) + 1) + "|",
  ]
  for method, scores in table.items():
    cells = [f"{np.mean(scores[m]):.3f} ± {np.std(scores[m]):.3f}" for m in METRICS]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + f"\n\nMean ± std over {num_seeds} seeds."


def comparison(table: dict, ivon: str, baseline: str) -> str:
  """One line: what ``ivon`` gained or lost against ``baseline``, metric by metric (means)."""
  parts = []
  for metric, (label, sign) in METRICS.items():
    difference = np.mean(table[ivon][metric]) - np.mean(table[baseline][metric])
    verdict = "better" if sign * difference > 0 else "worse" if sign * difference < 0 else "equal"
    parts.append(f"{label.split()[0]} {difference:+.3f} ({verdict})")
  return f"{ivon} vs {baseline}: " + ", ".join(parts)


def plot_reliability(curves: dict, labels: np.ndarray, path: str, title: str, num_bins: int = 15):
  """Accuracy against confidence per bin, one line per method; marker size: the bin's share."""
  import matplotlib.pyplot as plt

  fig, (diagram, counts) = plt.subplots(
    2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
  )
  diagram.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
  labels = jnp.asarray(labels)
  for method, log_probs in curves.items():
    bins = jax.device_get(ivon_optax.metrics.calibration_bins(log_probs, labels, num_bins))
    ece = float(ivon_optax.metrics.expected_calibration_error(log_probs, labels, num_bins))
    filled = bins.count > 0
    (line,) = diagram.plot(
      bins.confidence[filled], bins.accuracy[filled], lw=1, label=f"{method} (ECE {ece:.3f})"
    )
    share = bins.count[filled] / len(labels)
    diagram.scatter(
      bins.confidence[filled], bins.accuracy[filled], s=4 + 200 * share, color=line.get_color()
    )
    centers = (np.arange(num_bins) + 0.5) / num_bins
    counts.step(centers, bins.count / len(labels), where="mid", color=line.get_color())
  diagram.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
  diagram.legend(loc="upper left", fontsize=8)
  counts.set(xlabel="confidence (top-class probability)", ylabel="fraction", yscale="log")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  args = parse_args(argv)
  dataset = data.load(args.dataset, num_train=args.num_train)
  train, test = dataset.train, dataset.test
  configs = {
    name: dataclasses.replace(config, learning_rate=config.learning_rate * args.lr_scale)
    for name, config in CONFIGS[args.dataset].items()
    if name in args.optimizers
  }
  bayes = f"IVON (Bayes, {args.samples})"
  print(
    f"{args.dataset}: {len(train.labels)} train / {len(test.labels)} test, MLP "
    f"{train.inputs.shape[1]}-{'-'.join(map(str, args.hidden))}-{dataset.num_classes}, "
    f"{args.epochs} epochs, warm-up + cosine, {len(args.seeds)} seeds {args.seeds}"
  )
  for name, config in configs.items():
    print(f"  {name:>5}: {config.describe()}")

  start = time.perf_counter()
  model = models.MLP(tuple(args.hidden), dataset.num_classes)
  log_probs, train_loss = {}, {}
  for name, config in configs.items():
    runs = models.train(
      model,
      config,
      train.inputs,
      train.labels,
      seeds=args.seeds,
      epochs=args.epochs,
      progress=not args.no_progress,
    )
    at_mean = jax.nn.log_softmax(models.predict_at_mean(model, runs.params, test.inputs))
    log_probs[BASELINES.get(name, "IVON (mean)")] = at_mean
    train_loss[name] = runs.losses[:, -1].tolist()
    if name == "ivon":
      log_probs[bayes] = models.bayes_log_probs(model, runs, args.seeds, test.inputs, args.samples)
  table = {
    method: {m: v.tolist() for m, v in models.classification_metrics(lp, test.labels).items()}
    for method, lp in log_probs.items()
  }
  seconds = time.perf_counter() - start
  print("\n" + format_table(table, len(args.seeds)) + "\n")
  lines = [
    comparison(table, ivon, baseline)
    for ivon in (bayes, "IVON (mean)")
    for baseline in BASELINES.values()
    if ivon in table and baseline in table
  ]
  print("\n".join(lines))
  print(f"\n({seconds:.0f} s)")

  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, f"reliability_{args.dataset}.png")
  # All seeds' test predictions pooled: steadier bins on a small test set.
  plot_reliability(
    {method: lp.reshape(-1, lp.shape[-1]) for method, lp in log_probs.items()},
    np.tile(test.labels, len(args.seeds)),
    png,
    f"{args.dataset} test set, {len(args.seeds)} seeds pooled",
  )
  result = {
    "args": vars(args),
    "configs": {name: config.describe() for name, config in configs.items()},
    "metrics": table,
    "final_train_loss": train_loss,
    "comparisons": lines,
    "seconds": seconds,
    "reliability_diagram": png,
  }
  with open(os.path.join(args.out, f"results_{args.dataset}.json"), "w") as file:
    json.dump(result, file, indent=1)
  print(f"Reliability diagram: {png}")
  return result


if __name__ == "__main__":
  main()
