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


def load_mnist1d(num_samples: int = 5000, seed: int = 42):
  """MNIST-1D from ``mnist1d.data.make_dataset`` (never downloads): train and test arrays."""
  from mnist1d.data import get_dataset_args
  from mnist1d.data import make_dataset

  args = get_dataset_args()
  args.num_samples, args.seed = num_samples, seed
  data = make_dataset(args)
  x_train, x_test = (data[k].astype(np.float32) for k in ("x", "x_test"))
  y_train, y_test = (data[k].astype(np.int32) for k in ("y", "y_test"))
  return x_train, y_train, x_test, y_test


def permuted_tasks(num_tasks: int, val_fraction: float = 0.1, seed: int = 0) -> list[Task]:
  """``num_tasks`` permuted versions of MNIST-1D; task 1 is unpermuted."""
  x_train, y_train, x_test, y_test = load_mnist1d()
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
  schedule = optax.cosine_decay_schedule(learning_rate, steps)
  if method == "adamw-finetune":
    return optax.adamw(schedule, weight_decay=config.adamw_weight_decay)
  decay = {} if prior is not None else {"weight_decay": config.weight_decay}
  # Newton-scaled steps: rescale_lr would multiply each weight's step by h0 + delta,
  # and a posterior handed over as prior has a delta far above h0.
  return ivon_optax.ivon(
    schedule,
    ess=float(num_train),
    hess_init=config.hess_init,
    beta2=config.beta2,
    rescale_lr=False,
    prior=prior,
    **decay,
  )


def train_task(key, tx, params, inputs, labels, *, steps, batch_size, is_ivon):
  """``steps`` minibatch steps of ``tx`` from ``params``; returns ``(params, opt_state)``."""

  def step(carry, step_key):
    params, opt_state = carry
    batch_key, sample_key = jax.random.split(step_key)
    batch = jax.random.choice(batch_key, labels.shape[0], (batch_size,), replace=False)
    if is_ivon:
      sampled, noise = ivon_optax.sample_params(sample_key, opt_state, params)
      grads = jax.grad(models.mean_nll)(sampled, inputs[batch], labels[batch])
      updates, opt_state = tx.update(grads, opt_state, params, noise=noise)
    else:
      grads = jax.grad(models.mean_nll)(params, inputs[batch], labels[batch])
      updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  carry = (params, tx.init(params))
  return jax.lax.scan(step, carry, jax.random.split(key, steps))[0]


def evaluate(key, params, opt_state, inputs, labels, *, num_samples, is_ivon):
  """Accuracy and mean NLL; IVON's from its posterior predictive."""
  if is_ivon:
    logits = ivon_optax.predict.sample_outputs(
      key, models.mlp_apply, opt_state, params, inputs, num_samples=num_samples
    )
    log_probs = ivon_optax.predict.predictive_log_probs(logits)
  else:
    log_probs = jax.nn.log_softmax(models.mlp_apply(params, inputs))
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()
  return jnp.mean(jnp.argmax(log_probs, -1) == labels), nll


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
    return train_task(
      key,
      tx,
      params,
      inputs,
      labels,
      steps=steps,
      batch_size=config.batch_size,
      is_ivon=method != "adamw-finetune",
    )

  return jax.vmap(one_seed)(keys, params, prior)


@functools.partial(jax.jit, static_argnames=("num_samples", "is_ivon"))
def evaluate_seeds(keys, params, opt_state, inputs, labels, *, num_samples, is_ivon):
  """:func:`evaluate` for a batch of seeds."""
  run = functools.partial(evaluate, num_samples=num_samples, is_ivon=is_ivon)
  return jax.vmap(run, (0, 0, 0, None, None))(keys, params, opt_state, inputs, labels)


def run_sequence(keys, tasks, learning_rate, *, method, config):
  """All tasks in turn, for a batch of seeds (``keys``).

  Returns:
    ``{split: (accuracy, nll)}`` for ``split`` in val/test, each of shape
    ``(seeds, tasks trained, tasks evaluated)``.
  """
  is_ivon = method != "adamw-finetune"
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
          is_ivon=is_ivon,
        )
        for seen in tasks
      ]
      rows[split].append([np.stack([np.asarray(cell[i]) for cell in cells], -1) for i in range(2)])
  # (seeds, tasks trained, tasks evaluated) per split and metric.
  return {
    split: tuple(np.stack([row[i] for row in table], 1) for i in range(2))
    for split, table in rows.items()
  }


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


def main(argv=None):
  args = parse_args(argv)
  config = Config(hidden=args.hidden, epochs=args.epochs, eval_samples=args.eval_samples)
  tasks = [jax.tree.map(jnp.asarray, task) for task in permuted_tasks(args.tasks)]
  keys = jax.vmap(jax.random.key)(jnp.asarray(args.seeds))
  results = {}
  for method in METHODS:
    learning_rates = args.adamw_lrs if method.startswith("adamw") else args.ivon_lrs
    runs = {}
    for learning_rate in learning_rates:
      start = time.perf_counter()
      runs[learning_rate] = run_sequence(keys, tasks, learning_rate, method=method, config=config)
      val_accuracy = seen_average(runs[learning_rate]["val"][0])[:, -1].mean()
      print(
        f"{method} lr={learning_rate:g}: final val accuracy {val_accuracy:.4f} "
        f"({time.perf_counter() - start:.0f} s)"
      )
    best = max(runs, key=lambda lr: seen_average(runs[lr]["val"][0])[:, -1].mean())
    accuracy, nll = (seen_average(t) for t in runs[best]["test"])
    results[method] = {
      "learning_rate": best,
      "accuracy": accuracy.tolist(),  # (seeds, tasks): average over tasks seen so far
      "nll": nll.tolist(),
      "per_task_accuracy": np.asarray(runs[best]["test"][0]).tolist(),  # (seeds, after, task)
    }

  os.makedirs(args.out, exist_ok=True)
  summary = {"config": config._asdict(), "tasks": args.tasks, "seeds": args.seeds, **results}
  with open(os.path.join(args.out, "continual.json"), "w") as file:
    json.dump(summary, file, indent=1)
  print_table(results, args.tasks)
  plot(results, os.path.join(args.out, "continual.png"))
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
