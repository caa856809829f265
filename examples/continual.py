"""Continual learning on permuted MNIST-1D: IVON's posterior as the next task's prior.

Each task is MNIST-1D with its 40 inputs in a fixed random order (task 1 keeps
the original order). A small MLP learns the tasks one after the other, and
after each task we measure the average test accuracy and NLL over all tasks
seen so far. Three methods, all starting each task from the previous params:

* ``ivon-vcl``: IVON, with ``ivon_optax.posterior_as_prior`` handing task t's
  posterior to task t+1 as its prior (variational continual learning);
* ``ivon-finetune``: IVON with its usual zero-centred prior on every task;
* ``adamw-finetune``: AdamW.

The learning rate of each method is picked from ``--lrs`` by the average
validation accuracy after the last task (a split of each task's training set);
the test sets are used only for the reported numbers. IVON predicts with the
posterior predictive (``--eval-samples`` weight samples); AdamW with its
weights.

Run: ``python examples/continual.py --out outputs/continual``
"""

import argparse
import functools
import json
import os
import time
from typing import NamedTuple

import data
import jax
import jax.numpy as jnp
import matplotlib
import models
import numpy as np
import optax

import ivon_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("ivon-vcl", "ivon-finetune", "adamw-finetune")

# --- Data: MNIST-1D, generated locally ----------------------------------------------


class Task(NamedTuple):
  """One task's splits: float32 inputs ``(n, 40)`` and int32 labels ``(n,)``."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def permuted_tasks(
  num_tasks: int, val_fraction: float = 0.1, seed: int = 0, num_samples: int | None = None
) -> list[Task]:
  """``num_tasks`` permuted versions of MNIST-1D; task 1 is unpermuted.

  ``num_samples``: MNIST-1D's size, 4/5 of it the training pool (``None``: the standard 5000).
  """
  (x_train, y_train), (x_test, y_test) = data.mnist1d_arrays(num_samples)
  rng = np.random.default_rng(seed)
  num_val = round(val_fraction * len(y_train))
  order = rng.permutation(len(y_train))
  val, train = order[:num_val], order[num_val:]
  tasks = []
  for index in range(num_tasks):
    features = np.arange(x_train.shape[1]) if index == 0 else rng.permutation(x_train.shape[1])
    tasks.append(
      Task(
        x_train[train][:, features],
        y_train[train],
        x_train[val][:, features],
        y_train[val],
        x_test[:, features],
        y_test,
      )
    )
  return tasks


# --- Training -----------------------------------------------------------------------------


class Config(NamedTuple):
  """Training settings shared by the methods (hashable: a static argument of ``jit``)."""

  hidden: int = 128
  epochs: int = 10
  batch_size: int = 64
  weight_decay: float = 1e-3  # IVON's delta on task 1 (and on every task without handoff)
  adamw_weight_decay: float = 1e-2
  hess_init: float = 0.3
  beta2: float = 0.999
  eval_samples: int = 8


def make_optimizer(method, learning_rate, config, num_train, steps, prior=None):
  if method == "adamw-finetune":
    schedule = optax.cosine_decay_schedule(learning_rate, steps)
    return optax.adamw(schedule, weight_decay=config.adamw_weight_decay)
  decay = {"prior": prior} if prior is not None else {"weight_decay": config.weight_decay}
  return models.newton_ivon(learning_rate, steps, ess=num_train, config=config, **decay)


@functools.partial(jax.jit, static_argnames=("method", "config"))
def train_seeds(keys, params, prior, inputs, labels, learning_rate, *, method, config):
  """One task for a batch of seeds: ``(params, opt_state)``, batched like ``keys``.

  ``prior`` is ``None`` or a batched :class:`ivon_optax.GaussianPrior`; one
  compiled program serves every task and learning rate.
  """
  num_train = labels.shape[0]
  steps = config.epochs * num_train // config.batch_size

  def one_seed(key, params, prior):
    tx = make_optimizer(method, learning_rate, config, num_train, steps, prior)
    return models.fit(
      key, tx, params, models.mean_nll, inputs, labels, steps=steps, batch_size=config.batch_size
    )

  return jax.vmap(one_seed)(keys, params, prior)


@functools.partial(jax.jit, static_argnames="num_samples")
def evaluate_seeds(keys, params, opt_state, inputs, labels, *, num_samples):
  """Accuracy and NLL per seed: IVON's of its posterior predictive, AdamW's at its weights."""
  run = functools.partial(models.predictive_scores, apply=models.mlp_apply, num_samples=num_samples)
  return jax.vmap(lambda k, p, s: run(k, params=p, opt_state=s, inputs=inputs, labels=labels))(
    keys, params, opt_state
  )


def run_sequence(keys, tasks, learning_rate, *, method, config):
  """All tasks in turn, for a batch of seeds (``keys``).

  Returns:
    ``({split: (accuracy, nll)}, params, opt_state)``: for ``split`` in
    val/test, each of shape ``(seeds, tasks trained, tasks evaluated)``; the
    last task's params and optimizer states, batched over seeds.
  """
  num_train = tasks[0].y_train.shape[0]
  sizes = (tasks[0].x_train.shape[1], config.hidden, config.hidden, 10)
  keys = jax.vmap(lambda key: jax.random.split(key, 1 + 2 * len(tasks)))(keys)
  params = jax.vmap(lambda key: models.init_mlp(key, sizes))(keys[:, 0])
  prior = None
  rows = {"val": [], "test": []}
  for index, task in enumerate(tasks):
    train_keys, eval_keys = keys[:, 1 + 2 * index], keys[:, 2 + 2 * index]
    params, opt_state = train_seeds(
      train_keys,
      params,
      prior,
      task.x_train,
      task.y_train,
      learning_rate,
      method=method,
      config=config,
    )
    if method == "ivon-vcl":
      prior = jax.vmap(ivon_optax.posterior_as_prior, (0, 0, None))(
        opt_state, params, float(num_train)
      )
    for split in rows:
      cells = [
        evaluate_seeds(
          eval_keys,
          params,
          opt_state,
          getattr(seen, f"x_{split}"),
          getattr(seen, f"y_{split}"),
          num_samples=config.eval_samples,
        )
        for seen in tasks
      ]
      rows[split].append([np.stack([np.asarray(cell[i]) for cell in cells], -1) for i in range(2)])
  # (seeds, tasks trained, tasks evaluated) per split and metric.
  tables = {
    split: tuple(np.stack([row[i] for row in table], 1) for i in range(2))
    for split, table in rows.items()
  }
  return tables, params, opt_state


def seen_average(table):
  """Average over the tasks seen so far after each task: ``(seeds, tasks)``."""
  num_tasks = table.shape[-1]
  mask = np.tril(np.ones((num_tasks, num_tasks)))
  return (np.asarray(table) * mask).sum(-1) / mask.sum(-1)


# --- Main ---------------------------------------------------------------------------------


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", type=int, default=4)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--epochs", type=int, default=Config._field_defaults["epochs"])
  parser.add_argument("--hidden", type=int, default=Config._field_defaults["hidden"])
  parser.add_argument("--eval-samples", type=int, default=Config._field_defaults["eval_samples"])
  parser.add_argument("--ivon-lrs", type=float, nargs="+", default=[0.1, 0.3])
  parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[1e-3, 3e-3])
  parser.add_argument("--out", default="outputs/continual")
  return parser.parse_args(argv)


def compare(tasks, seeds, learning_rates: dict, config: Config) -> tuple[dict, dict]:
  """Every method on ``tasks``, its learning rate picked on validation.

  Args:
    tasks: the :class:`Task` s, in order.
    seeds: one run per seed.
    learning_rates: ``{'ivon': [...], 'adamw': [...]}``, the candidates.
    config: the shared settings.

  Returns:
    ``(results, finals)``: per method, the chosen learning rate and the test
    accuracy and NLL averaged over the tasks seen so far ``(seeds, tasks)``;
    and the chosen runs' last ``(params, opt_state)``.
  """
  tasks = [jax.tree.map(jnp.asarray, task) for task in tasks]
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  results, finals = {}, {}
  for method in METHODS:
    runs = {}
    for learning_rate in learning_rates[method.split("-")[0]]:
      start = time.perf_counter()
      runs[learning_rate] = run_sequence(keys, tasks, learning_rate, method=method, config=config)
      val_accuracy = seen_average(runs[learning_rate][0]["val"][0])[:, -1].mean()
      print(
        f"{method} lr={learning_rate:g}: final val accuracy {val_accuracy:.4f} "
        f"({time.perf_counter() - start:.0f} s)"
      )
    best = max(runs, key=lambda lr: seen_average(runs[lr][0]["val"][0])[:, -1].mean())
    tables, *finals[method] = runs[best]
    accuracy, nll = (seen_average(t) for t in tables["test"])
    results[method] = {
      "learning_rate": best,
      "accuracy": accuracy.tolist(),  # (seeds, tasks): average over tasks seen so far
      "nll": nll.tolist(),
      "per_task_accuracy": np.asarray(tables["test"][0]).tolist(),  # (seeds, after, task)
    }
  return results, finals


def main(argv=None):
  args = parse_args(argv)
  config = Config(hidden=args.hidden, epochs=args.epochs, eval_samples=args.eval_samples)
  learning_rates = {"ivon": args.ivon_lrs, "adamw": args.adamw_lrs}
  results, finals = compare(permuted_tasks(args.tasks), args.seeds, learning_rates, config)
  os.makedirs(args.out, exist_ok=True)
  print_table(results, args.tasks)
  plot(results, os.path.join(args.out, "continual.png"))
  for method in ("ivon-vcl", "ivon-finetune"):
    params, opt_state = finals[method]
    results[method]["ivon_diagnostics"] = models.report_diagnostics(
      opt_state, params, name=f"{method}, after the last task,"
    )
  summary = {"config": config._asdict(), "tasks": args.tasks, "seeds": args.seeds, **results}
  with open(os.path.join(args.out, "continual.json"), "w") as file:
    json.dump(summary, file, indent=1)
  return summary


def print_table(results, num_tasks):
  header = " | ".join(f"after task {t + 1}" for t in range(num_tasks))
  for metric in ("accuracy", "nll"):
    print(f"\nAverage test {metric} over the tasks seen so far (mean ± std over seeds)\n")
    print(f"| method | lr | {header} |")
    print("|---" * (num_tasks + 2) + "|")
    for method, result in results.items():
      values = np.asarray(result[metric])
      cells = " | ".join(
        f"{m:.3f} ± {s:.3f}" for m, s in zip(values.mean(0), values.std(0), strict=True)
      )
      print(f"| {method} | {result['learning_rate']:g} | {cells} |")


def plot(results, path):
  figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for method, result in results.items():
    for axis, metric in zip(axes, ("accuracy", "nll"), strict=True):
      values = np.asarray(result[metric])
      tasks = np.arange(1, values.shape[1] + 1)
      axis.errorbar(tasks, values.mean(0), yerr=values.std(0), marker="o", capsize=3, label=method)
      axis.set_xlabel("tasks trained")
      axis.set_ylabel(f"average test {metric}, tasks seen")
      axis.set_xticks(tasks)
  axes[0].legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


if __name__ == "__main__":
  main()
