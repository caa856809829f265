"""Merging digit classifiers fine-tuned on different classes, weighted by IVON's precision.

A small MLP is trained with IVON on a few digits of all classes (the base),
then fine-tuned with IVON on digits 0-4 and, separately, on digits 5-9. The
two models are merged with ``ivon_optax.merging.merge_models`` (uncertainty-based
gradient matching, the base's IVON precision as H_0) and compared on the test
digits of all ten classes with the plain average, task arithmetic at the same
scale, and Fisher-weighted averaging of AdamW fine-tunings (squared
per-example gradients as the precision). Prints a markdown table; with
several seeds, means and standard deviations.

Run from the repository root:

  PYTHONPATH=. python examples/merging.py --seeds 0 1 2 3 4 --out merging_table.md
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ivon_optax

try:
  from examples import variance_common as common
except ImportError:  # run as a script: python examples/merging.py
  import variance_common as common


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--base-steps", type=int, default=1000)
  parser.add_argument("--task-steps", type=int, default=1000)
  parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0])
  parser.add_argument("--out", default="merging_table.md")
  return parser.parse_args(argv)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def adamw_steps(key, params, inputs, labels, *, num_steps):
  """AdamW fine-tuning on random minibatches of 32."""
  tx = optax.adamw(1e-3, weight_decay=1e-3)

  def step(carry, step_key):
    params, opt_state = carry
    batch = jax.random.choice(step_key, labels.shape[0], (32,), replace=False)
    grads = jax.grad(common.mean_nll)(params, inputs[batch], labels[batch])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, num_steps))
  return params


@jax.jit
def squared_gradient_fisher(params, inputs, labels):
  """Empirical Fisher diagonal: the sum over examples of squared per-example gradients."""

  def example_grad(x, y):
    return jax.grad(common.mean_nll)(params, x[None], y[None])

  grads = jax.vmap(example_grad)(inputs, labels)
  return jax.tree.map(lambda g: jnp.sum(jnp.square(g), axis=0), grads)


def fisher_merge(tasks: common.DigitTasks, seed: int, num_steps: int) -> dict:
  """Fisher-weighted average of AdamW fine-tunings from the same base, and their plain average."""
  models, fishers = [], []
  for task, data in enumerate(tasks.task_data):
    inputs, labels = jnp.asarray(data.inputs), jnp.asarray(data.labels)
    model = adamw_steps(
      jax.random.key(seed + 100 + task), tasks.base, inputs, labels, num_steps=num_steps
    )
    models.append(model)
    fishers.append(squared_gradient_fisher(model, inputs, labels))
  return {
    "AdamW: average": ivon_optax.merging.task_arithmetic(tasks.base, models, task_scales=0.5),
    "AdamW: Fisher-weighted average": ivon_optax.merging.merge_with_precisions(
      tasks.base, models, fishers
    ),
  }


def markdown_table(results: list[common.MergeResult]) -> str:
  names = list(results[0].test_nll)
  multi = len(results) > 1

  def cell(values, digits):
    values = np.asarray(values)
    if multi:
      return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
    return f"{values[0]:.{digits}f}"

  lines = ["| model | test NLL | test accuracy |", "|---|---|---|"]
  for name in names:
    lines.append(
      f"| {name} | {cell([r.test_nll[name] for r in results], 4)} | "
      f"{cell([r.test_accuracy[name] for r in results], 3)} |"
    )
  return "\n".join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  results = []
  for seed in args.seeds:
    tasks = common.finetune_digit_tasks(
      seed=seed, base_steps=args.base_steps, task_steps=args.task_steps
    )
    extra = fisher_merge(tasks, seed, args.task_steps)
    results.append(common.compare_merges(tasks, args.scales, extra))
  table = markdown_table(results)
  header = (
    f"Union of both tasks' test digits (600 digits, all ten classes); IVON models; "
    f"seeds {args.seeds}" + (" (mean ± std)" if len(results) > 1 else "") + "."
  )
  with open(args.out, "w") as file:
    file.write(header + "\n\n" + table + "\n")
  print(header + "\n\n" + table)
  wins = {}
  for alpha in args.scales:
    ours = f"uncertainty (alpha={alpha:g})"
    for rival in ("average", f"task arithmetic (alpha={alpha:g})"):
      wins[f"{ours} < {rival}"] = sum(r.test_nll[ours] < r.test_nll[rival] for r in results)
  print(f"\nlower test NLL, seeds out of {len(results)}:")
  for name, count in wins.items():
    print(f"  {name}: {count}")
  print(f"saved {args.out}")
  return {"output": args.out, "results": results, "wins": wins}


if __name__ == "__main__":
  main()
