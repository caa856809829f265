"""Out-of-distribution detection on digits with the predictive entropy.

An MLP trained on scikit-learn's 8x8 digits should be unsure on inputs unlike
any digit. Each method scores every input by the entropy of its predictive
distribution; the AUROC measures how well that score separates the test
digits (in-distribution) from uniform noise images and from shuffled-pixel
digits (each test digit's pixels permuted: same intensities, no shape). The
main job's configurations (``models.CLASSIFIER_CONFIGS``); mean ± std over
seeds.

    python examples/ood_detection.py
"""

import argparse
import json
import os

import data
import jax
import models
import numpy as np


def out_of_distribution_sets(inputs: np.ndarray, seed: int = 0) -> dict:
  """Inputs unlike the digits, as many as ``inputs``."""
  rng = np.random.default_rng(seed)
  return {
    "uniform noise": rng.uniform(0.0, 1.0, inputs.shape).astype(np.float32),
    "shuffled pixels": np.stack([row[rng.permutation(row.size)] for row in inputs]),
  }


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def predictions(dataset: data.Dataset, inputs: dict, *, hidden, seeds, epochs, samples, progress):
  """Trains every method; ``({method: {input set: log probs (runs, n, classes)}}, IVON's runs)``."""
  model = models.MLP(tuple(hidden), dataset.num_classes)
  log_probs = {}
  for name, config in models.CLASSIFIER_CONFIGS.items():
    runs = models.train(
      model,
      config,
      dataset.train.inputs,
      dataset.train.labels,
      seeds=seeds,
      epochs=epochs,
      progress=progress,
    )
    predict = lambda x, runs=runs: jax.nn.log_softmax(models.predict_at_mean(model, runs.params, x))
    log_probs[models.BASELINES.get(name, "IVON (mean)")] = {
      s: predict(x) for s, x in inputs.items()
    }
    if name == "ivon":
      ivon_runs = runs
      log_probs[f"IVON (Bayes, {samples})"] = {
        s: models.bayes_log_probs(model, runs, seeds, x, samples) for s, x in inputs.items()
      }
  return log_probs, ivon_runs


def main(argv=None) -> dict:
  args = parse_args(argv)
  dataset = data.digits()
  test = dataset.test.inputs
  inputs = {"digits": test, **out_of_distribution_sets(test)}
  log_probs, ivon_runs = predictions(
    dataset,
    inputs,
    hidden=args.hidden,
    seeds=args.seeds,
    epochs=args.epochs,
    samples=args.samples,
    progress=not args.no_progress,
  )
  print(
    f"AUROC of the predictive entropy, test digits vs. other inputs ({len(args.seeds)} seeds):\n"
  )
  print("| method | uniform noise | shuffled pixels |\n|---|---|---|")
  aurocs = {method: models.entropy_aurocs(lp, "digits") for method, lp in log_probs.items()}
  for method, by_set in aurocs.items():
    cells = [f"{np.mean(v):.3f} ± {np.std(v):.3f}" for v in by_set.values()]
    print(f"| {method} | " + " | ".join(cells) + " |")
  diagnostics = models.report_diagnostics(ivon_runs.opt_state, ivon_runs.params)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "ood_detection.json"), "w") as file:
    json.dump(
      {"args": vars(args), "auroc": aurocs, "ivon_diagnostics": diagnostics}, file, indent=1
    )
  return aurocs


if __name__ == "__main__":
  main()
