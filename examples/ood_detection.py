"""Out-of-distribution detection on digits with the predictive entropy.

An MLP trained on scikit-learn's 8x8 digits should be unsure on inputs unlike
any digit. Each method scores every input by the entropy of its predictive
distribution; the AUROC measures how well that score separates the held-out
test digits (in-distribution) from

* uniform noise images (pixels uniform on [0, 1]), and
* shuffled-pixel digits (each test digit's 64 pixels randomly permuted: the
  same intensities, no digit shape).

IVON's Bayesian average over posterior samples is compared with the same
network trained by AdamW and SGD, and with IVON's mean alone.

    python examples/ood_detection.py
"""

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

import ivon_optax


def out_of_distribution_sets(x_test: np.ndarray, seed: int = 0) -> dict:
  """Inputs unlike the digits, as many as there are test digits."""
  rng = np.random.default_rng(seed)
  shuffled = np.stack([row[rng.permutation(row.size)] for row in x_test])
  return {
    "uniform noise": rng.uniform(0.0, 1.0, x_test.shape).astype(np.float32),
    "shuffled pixels": shuffled.astype(np.float32),
  }


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  data = common.load_digits()
  inputs = {"digits (test)": data.x_test, **out_of_distribution_sets(data.x_test, args.seed)}
  model = common.MLP(tuple(args.hidden), data.num_classes)

  entropies = {}
  configs = common.CLASSIFIER_CONFIGS["digits"]
  for name in ("sgd", "adamw", "ivon"):
    config = configs[name]
    state = common.train(
      model,
      config,
      data.x_train,
      data.y_train,
      epochs=args.epochs,
      batch_size=args.batch_size,
      seed=args.seed,
      progress=not args.no_progress,
    ).state
    label = {"sgd": "SGD", "adamw": "AdamW", "ivon": "IVON (mean)"}[name]
    entropies[label] = {
      set_name: ivon_optax.metrics.predictive_entropy(
        jax.nn.log_softmax(common.predict_at_mean(state, x))
      )
      for set_name, x in inputs.items()
    }
    if name == "ivon":
      key = jax.random.key(args.seed)
      entropies[f"IVON (Bayes, {args.samples} samples)"] = {
        set_name: ivon_optax.metrics.predictive_entropy(
          ivon_optax.predict.predictive_log_probs(
            common.predict_samples(state, key, x, args.samples)
          )
        )
        for set_name, x in inputs.items()
      }

  ood_names = [name for name in inputs if name != "digits (test)"]
  results = {}
  print(
    "AUROC of the predictive entropy, test digits vs. out-of-distribution inputs "
    "(mean entropy in nats in brackets):\n"
  )
  print("| method | " + " | ".join(ood_names) + " | digits (test) entropy |")
  print("|---" * (len(ood_names) + 2) + "|")
  for method, by_set in entropies.items():
    in_scores = by_set["digits (test)"]
    results[method] = {
      name: float(ivon_optax.metrics.ood_auroc(in_scores, by_set[name])) for name in ood_names
    }
    cells = [
      f"{results[method][name]:.3f} ({float(by_set[name].mean()):.2f})" for name in ood_names
    ]
    print(f"| {method} | " + " | ".join(cells) + f" | {float(in_scores.mean()):.2f} |")
  return results


if __name__ == "__main__":
  main()
