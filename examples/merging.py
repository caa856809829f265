"""Merging digit classifiers fine-tuned on different classes, weighted by IVON's precision.

A small MLP is trained with IVON on a few digits of all classes (the base),
then fine-tuned with IVON on digits 0-4 and, separately, on digits 5-9. The
two models are merged with ``ivon_optax.merging.merge_models``
(uncertainty-based gradient matching, the base's IVON precision as H_0) and
compared on test digits of all ten classes with the plain average, task
arithmetic at the same scale, and Fisher-weighted averaging of AdamW
fine-tunings (squared per-example gradients as the precision). Mean ± std
over seeds, each its own data split.

    python examples/merging.py
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

import ivon_optax

TASK_CLASSES = (tuple(range(5)), tuple(range(5, 10)))
MODEL = models.MLP((32,), activation=nn.tanh)


def apply(params, inputs):
  return MODEL.apply({"params": params}, inputs)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--base-size", type=int, default=100)
  parser.add_argument("--task-size", type=int, default=350)
  parser.add_argument("--base-epochs", type=int, default=333, help="batch 32: 3 steps each")
  parser.add_argument("--task-epochs", type=int, default=100, help="batch 32: 10 steps each")
  parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0])
  parser.add_argument("--out", default="outputs")
  return parser.parse_args(argv)


def ivon_config(learning_rate, hess_init):
  # A constant learning rate; beta2 0.999 so that each task's precision is
  # learned from its data within the run rather than inherited from h0.
  return models.OptimizerConfig(
    "ivon",
    learning_rate,
    1e-3,
    batch_size=32,
    hess_init=hess_init,
    beta2=0.999,
    schedule="constant",
  )


def fit(config, params, split: data.Split, seed: int, epochs: int):
  runs = models.train(
    MODEL,
    config,
    split.inputs,
    split.labels,
    seeds=[seed],
    epochs=epochs,
    params=params,
    progress=False,
  )
  return models.select(runs.params, 0), models.select(runs.opt_state, 0)


def squared_gradient_fisher(params, split: data.Split):
  """Empirical Fisher diagonal: the sum over examples of squared per-example gradients."""
  example_grad = jax.grad(lambda p, x, y: models.cross_entropy(apply(p, x[None]), y[None]))
  grads = jax.vmap(example_grad, in_axes=(None, 0, 0))(params, split.inputs, split.labels)
  return jax.tree.map(lambda g: jnp.sum(jnp.square(g), axis=0), grads)


def merge_seed(args, seed: int) -> dict:
  """Trains the base and the task models of one seed; the test NLL and accuracy of each merge."""
  # Test digits first, then the base's, then the pool the tasks draw from.
  dataset = data.digits(
    num_train=args.base_size + 2 * args.task_size + 200, num_test=600, seed=seed
  )
  pool, test = dataset.train, dataset.test
  base_split = data.Split(pool.inputs[: args.base_size], pool.labels[: args.base_size])
  tasks = []
  for classes in TASK_CLASSES:
    keep = np.flatnonzero(np.isin(pool.labels[args.base_size :], classes))[: args.task_size]
    rest = data.Split(pool.inputs[args.base_size :], pool.labels[args.base_size :])
    tasks.append(data.Split(rest.inputs[keep], rest.labels[keep]))
  base, base_state = fit(ivon_config(0.2, 0.1), None, base_split, seed, args.base_epochs)
  finetuned = [
    fit(ivon_config(0.05, 0.01), base, task, seed + 10 + t, args.task_epochs)
    for t, task in enumerate(tasks)
  ]
  task_models = [params for params, _ in finetuned]
  adamw = models.OptimizerConfig("adamw", 1e-3, 1e-3, batch_size=32, schedule="constant")
  adamw_models = [
    fit(adamw, base, task, seed + 100 + t, args.task_epochs)[0] for t, task in enumerate(tasks)
  ]
  fishers = [squared_gradient_fisher(m, task) for m, task in zip(adamw_models, tasks, strict=True)]
  average = ivon_optax.merging.task_arithmetic(base, task_models, task_scales=0.5)
  candidates = {"base": base, "task 0-4 only": task_models[0], "task 5-9 only": task_models[1]}
  candidates["average"] = average
  for alpha in args.scales:
    candidates[f"task arithmetic (alpha={alpha:g})"] = ivon_optax.merging.task_arithmetic(
      base, task_models, task_scales=alpha
    )
    candidates[f"uncertainty (alpha={alpha:g})"] = ivon_optax.merging.merge_models(
      base, finetuned, task_scales=alpha, base_state=base_state
    )
  candidates["AdamW: average"] = ivon_optax.merging.task_arithmetic(
    base, adamw_models, task_scales=0.5
  )
  candidates["AdamW: Fisher-weighted average"] = ivon_optax.merging.merge_with_precisions(
    base, adamw_models, fishers
  )
  logs = [
    ivon_optax.diagnostics(state, params) for params, state in [(base, base_state), *finetuned]
  ]
  scores = {"_diagnostics": {key: [float(log[key]) for log in logs] for key in models.KEY_FACTS}}
  for name, params in candidates.items():
    log_probs = jax.nn.log_softmax(apply(params, test.inputs))
    scores[name] = {
      "nll": float(ivon_optax.metrics.negative_log_likelihood(log_probs, test.labels)),
      "accuracy": float(ivon_optax.metrics.accuracy(log_probs, test.labels)),
    }
  return scores


def main(argv=None) -> dict:
  args = parse_args(argv)
  per_seed = [merge_seed(args, seed) for seed in args.seeds]
  # {fact: [[base, task 0-4, task 5-9] per seed]}
  facts = [run.pop("_diagnostics") for run in per_seed]
  diagnostics = {key: [run[key] for run in facts] for key in models.KEY_FACTS}
  names = list(per_seed[0])
  results = {
    name: {metric: [run[name][metric] for run in per_seed] for metric in ("nll", "accuracy")}
    for name in names
  }
  spread = lambda values: f"{np.mean(values):.4f} ± {np.std(values):.4f}"
  lines = [
    f"Test digits of all ten classes (600 per seed); {len(args.seeds)} seeds, mean ± std.",
    "",
    "| model | test NLL | test accuracy |",
    "|---|---|---|",
  ]
  lines += [f"| {n} | {spread(r['nll'])} | {spread(r['accuracy'])} |" for n, r in results.items()]
  wins = {}
  for alpha in args.scales:
    ours = f"uncertainty (alpha={alpha:g})"
    for rival in ("average", f"task arithmetic (alpha={alpha:g})"):
      better = np.less(results[ours]["nll"], results[rival]["nll"])
      wins[f"{ours} < {rival}"] = int(better.sum())
  lines += ["", f"Lower test NLL, seeds out of {len(args.seeds)}:"]
  lines += [f"  {name}: {count}" for name, count in wins.items()]
  print("\n".join(lines))
  for index, model in enumerate(("base", "task 0-4", "task 5-9")):
    facts = {key: np.asarray(values)[:, index] for key, values in diagnostics.items()}
    print(models.describe_facts(facts, f"IVON, {model},"))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "merging.md"), "w") as file:
    file.write("\n".join(lines) + "\n")
  summary = {"args": vars(args), "results": results, "wins": wins, "ivon_diagnostics": diagnostics}
  with open(os.path.join(args.out, "merging.json"), "w") as file:
    json.dump(summary, file, indent=1)
  return summary


if __name__ == "__main__":
  main()
