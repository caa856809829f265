"""The hyperparameter sweep behind ``train_classifier.py``'s configurations.

The same procedure for SGD, AdamW and IVON, on a validation split carved from
the training set (the test set is never touched), a few seeds per
configuration: a grid of learning rates a factor 2 apart, crossed with the
optimizer's other hyperparameter (``GRID``: SGD's and AdamW's weight decay,
IVON's temperature ``temper`` of ``ivon_optax.recipe``).

A configuration is scored by the criterion ``validation NLL + validation ECE``
(means over seeds), which counts calibration as well as fit; IVON is scored as
the Bayesian model average of ``--samples`` posterior samples, as it is used.
The stability rule: a configuration is *eligible* only if its neighbours at
half and at twice its learning rate (all else equal) were run, every seed of
both trained to a finite loss, and each neighbour's criterion is at most
``1 + --margin`` times its own (25 % by default). The chosen configuration is
the eligible one with the lowest criterion. Runs vmap over seeds and
configurations.

    python examples/sweep_classifier.py --dataset mnist1d
"""

import argparse
import dataclasses
import itertools
import json
import os
import time

import data
import jax
import models
import numpy as np

LEARNING_RATES = {
  "sgd": [0.025, 0.05, 0.1, 0.2, 0.4, 0.8],
  "adamw": [0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04],
  "ivon": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
}
# The other hyperparameters, crossed with the learning rates.
GRID = {
  "sgd": {"weight_decay": [1e-4, 1e-3]},
  "adamw": {"weight_decay": [0.05, 0.5]},
  # weight_decay is unused: recipe() sets it (the prior) from the init scale.
  "ivon": {"temper": [4.0, 16.0, 64.0], "weight_decay": [0.0]},
}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=("mnist1d", "digits"), default="mnist1d")
  parser.add_argument(
    "--optimizers", nargs="+", choices=models.OPTIMIZERS, default=["sgd", "adamw", "ivon"]
  )
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--num-val", type=int, default=None, help="default: a fifth of the pool")
  parser.add_argument("--samples", type=int, default=64, help="IVON's posterior samples")
  parser.add_argument(
    "--margin", type=float, default=0.25, help="the stability rule's relative NLL margin"
  )
  parser.add_argument("--top", type=int, default=5, help="rows per optimizer in the printed table")
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def grid(name: str, learning_rates, settings: dict) -> list:
  keys = list(settings)
  return [
    models.OptimizerConfig(name, learning_rate=lr, **dict(zip(keys, values, strict=True)))
    for values in itertools.product(*settings.values())
    for lr in learning_rates
  ]


def evaluate(model, configs, split: data.Dataset, args) -> list:
  """Trains every config on every seed (grouped by batch size); returns one row per config."""
  rows = []
  by_batch = itertools.groupby(sorted(configs, key=lambda c: c.batch_size), lambda c: c.batch_size)
  for _, group in by_batch:
    group = list(group)
    run_configs = [c for c in group for _ in args.seeds]
    seeds = [s for _ in group for s in args.seeds]
    runs = models.train(
      model,
      run_configs,
      split.train.inputs,
      split.train.labels,
      seeds=seeds,
      epochs=args.epochs,
      progress=not args.no_progress,
    )
    if group[0].name == "ivon":
      log_probs = models.bayes_log_probs(model, runs, seeds, split.val.inputs, args.samples)
    else:
      log_probs = jax.nn.log_softmax(models.predict_at_mean(model, runs.params, split.val.inputs))
    scores = models.classification_metrics(log_probs, split.val.labels)
    finite = np.isfinite(runs.losses).all(axis=1) & np.isfinite(scores["nll"])
    for index, config in enumerate(group):
      seeds_of = slice(index * len(args.seeds), (index + 1) * len(args.seeds))
      row = {"config": config, "finite": bool(finite[seeds_of].all())}
      for metric, values in scores.items():
        row[metric] = float(np.mean(values[seeds_of]))
        row[metric + "_std"] = float(np.std(values[seeds_of]))
      row["criterion"] = row["nll"] + row["ece"]
      rows.append(row)
  return rows


def mark_eligible(rows: list, margin: float) -> None:
  """The stability rule: both learning-rate neighbours trained and stayed within ``margin``."""
  by_config = {row["config"]: row for row in rows}
  for row in rows:
    config = row["config"]
    neighbours = [
      by_config.get(dataclasses.replace(config, learning_rate=config.learning_rate * factor))
      for factor in (0.5, 2.0)
    ]
    row["eligible"] = (
      row["finite"]
      and all(n is not None and n["finite"] for n in neighbours)
      and all(n["criterion"] <= (1.0 + margin) * row["criterion"] for n in neighbours)
    )


def best(rows: list) -> dict:
  eligible = [row for row in rows if row["eligible"]] or [r for r in rows if r["finite"]]
  return min(eligible, key=lambda row: row["criterion"])


def sweep(name: str, model, split, args) -> list:
  rows = evaluate(model, grid(name, LEARNING_RATES[name], GRID[name]), split, args)
  mark_eligible(rows, args.margin)
  return rows


def table(rows_by_name: dict, top: int) -> str:
  lines = [
    "| optimizer | hyperparameters | stable | val. NLL + ECE | val. NLL | val. accuracy | "
    "val. ECE |",
    "|---" * 7 + "|",
  ]
  for name, rows in rows_by_name.items():
    chosen = best(rows)
    ranked = sorted(rows, key=lambda row: (not row["eligible"], row["criterion"]))[:top]
    for row in ranked:
      mark = " **(chosen)**" if row is chosen else ""
      lines.append(
        f"| {name} | {row['config'].describe()}{mark} | {'yes' if row['eligible'] else 'no'} | "
        f"{row['criterion']:.3f} | {row['nll']:.3f} ± {row['nll_std']:.3f} | "
        f"{row['accuracy']:.3f} ± {row['accuracy_std']:.3f} | "
        f"{row['ece']:.3f} ± {row['ece_std']:.3f} |"
      )
  return "\n".join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  full = data.load(args.dataset)
  pool = len(full.train.labels)
  num_val = pool // 5 if args.num_val is None else args.num_val
  split = data.load(args.dataset, num_train=pool - num_val, num_val=num_val)
  print(
    f"{args.dataset}: {len(split.train.labels)} train / {len(split.val.labels)} validation "
    f"(from the training pool), {len(args.seeds)} seeds, {args.epochs} epochs"
  )
  model = models.MLP(tuple(args.hidden), split.num_classes)
  start = time.perf_counter()
  rows_by_name = {}
  for name in args.optimizers:
    rows_by_name[name] = sweep(name, model, split, args)
    chosen = best(rows_by_name[name])
    print(
      f"{name}: {len(rows_by_name[name])} configs, chosen {chosen['config'].describe()} "
      f"(val. NLL {chosen['nll']:.3f} + ECE {chosen['ece']:.3f}) "
      f"[{time.perf_counter() - start:.0f} s]",
      flush=True,
    )
  markdown = table(rows_by_name, args.top)
  print("\n" + markdown)
  seconds = time.perf_counter() - start
  print(f"\n({seconds:.0f} s)")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"sweep_{args.dataset}.md"), "w") as file:
    file.write(markdown + "\n")
  result = {
    "args": vars(args),
    "seconds": seconds,
    "chosen": {
      name: dataclasses.asdict(best(rows)["config"]) for name, rows in rows_by_name.items()
    },
    "rows": {
      name: [{**row, "config": dataclasses.asdict(row["config"])} for row in rows]
      for name, rows in rows_by_name.items()
    },
  }
  with open(os.path.join(args.out, f"sweep_{args.dataset}.json"), "w") as file:
    json.dump(result, file, indent=1)
  return result


if __name__ == "__main__":
  main()
