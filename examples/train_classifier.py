"""The main job: train a Flax MLP classifier with IVON, AdamW and SGD, and compare them.

Trains the same MLP with the same budget (epochs, batch size, warm-up and
cosine schedule) with each optimizer, then prints test accuracy, NLL, ECE and
Brier score. IVON is scored twice: at its mean weights, and as the Bayesian
model average of 64 weight samples from its posterior. A reliability diagram
comparing the optimizers is saved to ``--out``.

    pip install -e '.[examples]'
    python examples/train_classifier.py                      # scikit-learn digits
    python examples/train_classifier.py --dataset mnist1d    # MNIST-1D, generated locally

The hyperparameters are the ones chosen on a validation split by
``examples/sweep_classifier.py`` (see docs/readme/prediction.md).
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

import ivon_optax


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=("digits", "mnist1d"), default="digits")
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument(
    "--hidden", type=int, nargs="+", default=[256, 256], help="widths of the MLP's hidden layers"
  )
  parser.add_argument(
    "--seeds",
    type=int,
    nargs="+",
    default=[0, 1, 2],
    help="one run per seed; the table shows mean ± std over seeds",
  )
  parser.add_argument(
    "--samples", type=int, default=64, help="posterior samples of IVON's Bayesian model average"
  )
  parser.add_argument(
    "--ivon-train-samples",
    type=int,
    choices=(1, 4),
    default=1,
    help="IVON's Monte-Carlo samples per step (4: 4x the gradient cost; "
    "uses the hyperparameters tuned for 4)",
  )
  parser.add_argument("--out", default="outputs", help="directory for the PNG and JSON")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  return parser.parse_args(argv)


def optimizer_configs(dataset: str, ivon_train_samples: int) -> dict:
  """The tuned ``{'sgd', 'adamw', 'ivon'}`` configurations of ``dataset``."""
  configs = common.CLASSIFIER_CONFIGS[dataset]
  ivon = configs["ivon" if ivon_train_samples == 1 else f"ivon-{ivon_train_samples}mc"]
  return {"sgd": configs["sgd"], "adamw": configs["adamw"], "ivon": ivon}


def run_seed(model, data: common.Dataset, args: argparse.Namespace, seed: int) -> dict:
  """Trains every optimizer once; returns ``{method: normalized test log probs}``."""
  log_probs = {}
  for name, config in optimizer_configs(data.name, args.ivon_train_samples).items():
    result = common.train(
      model,
      config,
      data.x_train,
      data.y_train,
      epochs=args.epochs,
      batch_size=args.batch_size,
      seed=seed,
      progress=not args.no_progress,
    )
    label = {"sgd": "SGD", "adamw": "AdamW", "ivon": "IVON (mean)"}[name]
    log_probs[label] = jax.nn.log_softmax(common.predict_at_mean(result.state, data.x_test))
    if name == "ivon":
      logits = common.predict_samples(
        result.state, jax.random.key(1000 + seed), data.x_test, args.samples
      )
      log_probs[f"IVON (Bayes, {args.samples} samples)"] = ivon_optax.predict.predictive_log_probs(
        logits
      )
  return log_probs


def main(argv=None) -> dict:
  args = parse_args(argv)
  data = common.load_dataset(args.dataset)
  print(
    f"{data.name}: {len(data.y_train)} train / {len(data.y_test)} test examples, "
    f"MLP {data.x_train.shape[1]}-{'-'.join(map(str, args.hidden))}-{data.num_classes}, "
    f"{args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}"
  )
  for name, config in optimizer_configs(data.name, args.ivon_train_samples).items():
    print(f"  {name:>5}: {common.describe(config)}, warm-up {config.warmup_epochs} epochs + cosine")

  start = time.perf_counter()
  # One model object for all runs, so that they share compiled steps.
  model = common.MLP(tuple(args.hidden), data.num_classes)
  table, pooled = {}, {}
  for seed in args.seeds:
    log_probs = run_seed(model, data, args, seed)
    for method, method_log_probs in log_probs.items():
      pooled.setdefault(method, []).append(method_log_probs)
      scores = common.classification_metrics(method_log_probs, data.y_test)
      for metric, value in scores.items():
        table.setdefault(method, {}).setdefault(metric, []).append(value)
  print()
  print(common.format_table(table))
  print(f"\n({time.perf_counter() - start:.0f} s)")

  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, f"reliability_{data.name}.png")
  # The test predictions of all seeds, pooled: steadier bins on a small test set.
  common.plot_reliability(
    {method: jnp.concatenate(runs) for method, runs in pooled.items()},
    np.tile(data.y_test, len(args.seeds)),
    png,
    f"{data.name} test set, {len(args.seeds)} seed{'s' * (len(args.seeds) > 1)} pooled",
  )
  with open(os.path.join(args.out, f"results_{data.name}.json"), "w") as file:
    configs = {
      name: common.describe(config)
      for name, config in optimizer_configs(data.name, args.ivon_train_samples).items()
    }
    json.dump({"args": vars(args), "configs": configs, "metrics": table}, file, indent=1)
  print(f"Reliability diagram: {png}")
  return table


if __name__ == "__main__":
  main()
