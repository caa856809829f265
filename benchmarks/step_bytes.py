r"""Memory traffic of one optimizer step, in parameter-sized passes, from XLA's compiled program.

A step's cost is mostly the parameter-sized arrays it reads and writes. For each parameter tree
this script compiles (``jax.jit(f).lower(...).compile()``, with params and state donated as in
training) and reads off XLA's ``cost_analysis()``:

* ``adamw``: ``optax.adamw``'s update and ``optax.apply_updates``;
* ``ivon.sample``: :func:`ivon_optax.sample_params` (the sampled weights and the noise);
* ``ivon.update``: IVON's update and ``apply_updates``, given that noise;
* ``ivon.step``: the optimizer's whole part of a train step, sampling, then update and apply.
  A data dependence stands for the forward and backward pass between them: the gradient
  exists only once the sampled weights do.

It reports ``bytes accessed`` as *passes*, bytes over the bytes of one float32 copy of the
params, next to the minimum each program needs (every array it must read, read once; every
array it must write, written once), the number of kernels in the optimized HLO, and with
``--details`` each kernel's passes and the source lines it was fused from.

Trees: ``layer`` (one 2048x2048 float32 matrix, 16.8 MB), ``mlp`` (the 784-1024-1024-10 MLP of
``step_time.py``, 1.86M params), ``leaves`` (80 small leaves, 2.1M params) and ``layer-bf16``
(one 2048x2048 layer whose forward pass computes in bfloat16: the sample is written as a
bfloat16 copy, and AdamW's program writes the bfloat16 copy of the params that such a forward
pass reads). ``--train mlp`` adds the whole jitted train step of a model (forward, backward and
optimizer), where IVON's extra bytes over AdamW are counted in place.

``--check`` exits with status 1 when an IVON program makes more passes than its budget
(:func:`budget_passes`): the whole step may make the minimum 5 passes beyond AdamW's step in
the same run, plus the 2 that sampling pays on XLA:CPU (:data:`BACKEND_ALLOWANCE`), plus half a
pass of headroom (7.5 in float32: 1.5 times the minimum). The bytes accessed are a property
of the compiled program, not a timing: the check holds on a loaded machine, and the same
numbers come out every run.

Examples::

  python benchmarks/step_bytes.py
  python benchmarks/step_bytes.py --tree layer --details --dump-hlo outputs/hlo
  python benchmarks/step_bytes.py --check
"""

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import optax

import ivon_optax
from benchmarks import hlo
from benchmarks import measure

ROOT = Path(__file__).resolve().parents[1]

# The settings of step_time.py; the bytes do not depend on their values.
ADAMW = {"learning_rate": 1e-4, "weight_decay": 1e-4}
IVON = {"learning_rate": 1e-2, "ess": 5e4, "hess_init": 1.0, "weight_decay": 1e-4}

# What each program must at least read and write, in passes over float32 params. ``copy`` is
# the pass that writes the sampled weights for the forward pass: 1 in float32, 1/2 for a
# bfloat16 copy (which AdamW's forward pass needs too: it reads p and writes the copy).
#   adamw:       read p, g, mu, nu; write p, mu, nu (bfloat16: + read p, write the copy)
#   ivon.sample: read m, h; write theta, noise
#   ivon.update: read m, g, momentum, h, noise; write m, momentum, h
#   ivon.step:   both; the noise is written once and read back by the update
# In the bfloat16 programs, XLA's cost analysis also charges the stand-in for the forward and
# backward pass (:func:`_between`) a read of the whole bfloat16 copy, though it reads two
# elements (XLA converts, then slices, inside one kernel): the minimum includes that half pass.


def minimum_passes(program: str, copy: float = 1.0) -> float:
  """The passes ``program`` needs at least (see the table above)."""
  stand_in = 0.0 if copy == 1 else copy
  return {
    "adamw": 7.0 + (0.0 if copy == 1 else 1.0 + copy + stand_in),
    "ivon.sample": 3.0 + copy,
    "ivon.update": 8.0,
    "ivon.step": 11.0 + copy + stand_in,
  }[program]


def minimum_extra_passes(copy: float = 1.0) -> float:
  """IVON's least passes beyond AdamW's: 5 in float32 (sampling's 4, the noise read back)."""
  return minimum_passes("ivon.step", copy) - minimum_passes("adamw", copy)


# The budgets of `--check` and tests/test_step_bytes.py, in passes: each program's minimum,
# plus what AdamW's step makes beyond its own minimum when compiled by the same XLA in the
# same run (a backend's habits: XLA:CPU writes each output array from a kernel of its own,
# which re-reads what it needs, so that AdamW makes 10 passes against its 7), plus, where
# IVON samples, BACKEND_ALLOWANCE, plus HEADROOM.
BACKEND_ALLOWANCE = 2.0  # Two passes that only IVON's sampling pays on such a backend: the
# noise read back to add it to the mean (elsewhere a second output of the sampling kernel), and
# the standard-normal sampler's half-size buffer of Box-Muller radii, written and read, which
# spares a second logarithm per pair of draws on a CPU.
HEADROOM = 0.5  # round-off of the scalars' bytes, and small changes in XLA's fusion plan.


def budget_passes(program: str, copy: float, adamw_overhead: float) -> float | None:
  """The most passes an IVON ``program`` may make (None for AdamW's).

  ``adamw_overhead`` is AdamW's passes beyond its minimum in the same run. The whole step's
  budget is then AdamW's passes + :func:`minimum_extra_passes` + :data:`BACKEND_ALLOWANCE` +
  :data:`HEADROOM`: in float32, 7.5 passes beyond AdamW's, 1.5 times the minimum 5.
  """
  if program == "ivon.sample":
    return minimum_passes(program, copy) + BACKEND_ALLOWANCE + HEADROOM
  if program == "ivon.update":
    return minimum_passes(program, copy) + adamw_overhead + HEADROOM
  if program == "ivon.step":
    return minimum_passes(program, copy) + adamw_overhead + BACKEND_ALLOWANCE + HEADROOM
  return None


# --- Parameter trees ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tree:
  """A parameter tree (abstract shapes) and the dtype its forward pass computes in."""

  name: str
  description: str
  params: Any  # a pytree of jax.ShapeDtypeStruct
  compute_dtype: Any = jnp.float32

  @property
  def size(self) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(self.params))

  @property
  def pass_bytes(self) -> int:
    """Bytes of one float32 copy of the params: the unit of a pass."""
    return 4 * self.size

  @property
  def copy(self) -> float:
    """The sampled weights' size in passes: 1 (float32) or 1/2 (bfloat16)."""
    return jnp.dtype(self.compute_dtype).itemsize / 4


def _shapes(shapes: dict, dtype=jnp.float32) -> dict:
  return jax.tree.map(
    lambda shape: jax.ShapeDtypeStruct(shape, dtype),
    shapes,
    is_leaf=lambda node: isinstance(node, tuple),
  )


def make_tree(name: str) -> Tree:
  """One of :data:`TREES` by name."""
  if name in ("layer", "layer-bf16"):
    bf16 = name == "layer-bf16"
    return Tree(
      name,
      "one 2048x2048 float32 layer" + (", bfloat16 forward" if bf16 else ""),
      _shapes({"w": (2048, 2048)}),
      jnp.bfloat16 if bf16 else jnp.float32,
    )
  if name == "mlp":
    widths = (784, 1024, 1024, 10)
    layers = {
      f"Dense_{i}": {"kernel": (fan_in, fan_out), "bias": (fan_out,)}
      for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
    }
    return Tree(name, "MLP 784-1024-1024-10", _shapes(layers))
  if name == "leaves":
    block = {"w1": (256, 256), "w2": (256, 256), "b1": (256,), "b2": (256,), "scale": (256,)}
    return Tree(
      name, "16 blocks of 5 leaves (80 leaves)", _shapes({f"b{i}": block for i in range(16)})
    )
  if name == "tiny":
    return Tree(
      name, "a 128x256 layer and its bias (a test)", _shapes({"w": (128, 256), "b": (256,)})
    )
  raise ValueError(f"Unknown tree {name!r}: use one of {TREES}.")


TREES = ("layer", "mlp", "leaves", "layer-bf16", "tiny")
DEFAULT_TREES = ("layer", "mlp", "leaves", "layer-bf16")


# --- The programs ---------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
  """One jitted function on abstract arguments, with the arguments it donates."""

  name: str
  fn: Callable
  args: tuple
  donate: tuple = ()


def _between(sampled, grads):
  """Stands for the forward and backward pass: ``grads`` that exist only once ``sampled`` does.

  Each gradient gets ``0 *`` the sum of two elements of each sampled leaf added, a data
  dependence that XLA keeps (it does not fold ``0 * x`` in floating point) and that costs a
  few scalar reads. (An ``optimization_barrier`` does not order the kernels on XLA:CPU.)
  """
  first = sum(
    jnp.sum(leaf.reshape(-1)[:2].astype(jnp.float32)) for leaf in jax.tree.leaves(sampled)
  )
  return sampled, jax.tree.map(lambda g: g + (0.0 * first).astype(g.dtype), grads)


def programs(tree: Tree, ivon=None, sample_params=None) -> list[Program]:
  """AdamW's step and IVON's sample, update and whole step on ``tree``'s abstract params.

  ``ivon`` and ``sample_params`` replace ``ivon_optax.ivon(**IVON)`` and
  :func:`ivon_optax.sample_params`, to account for another implementation.
  """
  params = tree.params
  grads = params
  key = jax.eval_shape(lambda: jax.random.key(0))
  adamw = optax.adamw(**ADAMW)
  ivon = ivon or ivon_optax.ivon(**IVON)
  sample_params = sample_params or ivon_optax.sample_params
  adamw_state = jax.eval_shape(adamw.init, params)
  ivon_state = jax.eval_shape(ivon.init, params)
  compute = lambda tree_: optax.tree.cast(tree_, tree.compute_dtype)
  bf16 = tree.copy != 1

  def adamw_step(params, state, grads):
    if bf16:  # the forward pass reads a bfloat16 copy of the params
      copied, grads = _between(compute(params), grads)
    updates, state = adamw.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    return (new_params, state, copied) if bf16 else (new_params, state)

  def ivon_sample(key, state, params):
    sampled, noise = sample_params(key, state, params)
    return compute(sampled), noise

  def ivon_update(params, state, grads, noise):
    updates, state = ivon.update(grads, state, params, noise=noise)
    return optax.apply_updates(params, updates), state

  def ivon_step(key, params, state, grads):
    sampled, noise = sample_params(key, state, params)
    sampled, grads = _between(compute(sampled), grads)
    updates, state = ivon.update(grads, state, params, noise=noise)
    return optax.apply_updates(params, updates), state, sampled

  return [
    Program("adamw", adamw_step, (params, adamw_state, grads), (0, 1)),
    Program("ivon.sample", ivon_sample, (key, ivon_state, params)),
    Program("ivon.update", ivon_update, (params, ivon_state, grads, params), (0, 1)),
    Program("ivon.step", ivon_step, (key, params, ivon_state, grads), (1, 2)),
  ]


def train_programs(model: str) -> tuple[int, list[Program]]:
  """The whole train step of ``model`` (step_time.py's) with AdamW and with IVON."""
  from benchmarks import models  # pylint: disable=import-outside-toplevel
  from benchmarks import step_time  # pylint: disable=import-outside-toplevel

  workload = models.make_workload(model, jax.default_backend())
  params, model_state = jax.eval_shape(workload.init)
  key = jax.eval_shape(lambda: jax.random.key(0))
  found = []
  for name, tx, kind in (
    ("adamw", optax.adamw(**ADAMW), "plain"),
    ("ivon", ivon_optax.ivon(**IVON), "ivon"),
  ):
    step = step_time.jax_step_fn(workload, tx, kind, 1, step_time.SAMPLERS["counter"])
    args = (params, jax.eval_shape(tx.init, params), model_state, key, workload.batch)
    found.append(Program(f"train[{model}].{name}", step, args, (0, 1, 2)))
  return sum(leaf.size for leaf in jax.tree.leaves(params)), found


# --- Accounting -----------------------------------------------------------------------------


@dataclasses.dataclass
class Accounting:
  """XLA's cost analysis and the kernels of one compiled program."""

  bytes_accessed: float
  flops: float
  kernels: list[hlo.Op]
  text: str

  @property
  def fusions(self) -> int:
    return sum(op.opcode == "fusion" for op in self.kernels)


def cost(compiled) -> dict:
  """``compiled.cost_analysis()`` as one dict (older jax returns a list of one)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def account(program: Program) -> Accounting:
  """Compiles ``program`` and counts its bytes, flops and kernels."""
  compiled = jax.jit(program.fn, donate_argnums=program.donate).lower(*program.args).compile()
  analysis = cost(compiled)
  text = compiled.as_text()
  return Accounting(
    bytes_accessed=float(analysis.get("bytes accessed", float("nan"))),
    flops=float(analysis.get("flops", float("nan"))),
    kernels=hlo.kernels(text, source_root=str(ROOT) + "/"),
    text=text,
  )


def tree_rows(tree: Tree, **implementation) -> list[dict]:
  """One row per program on ``tree``: bytes, passes, minimum, budget, kernels.

  ``implementation`` goes to :func:`programs`.
  """
  rows = []
  for program in programs(tree, **implementation):
    result = account(program)
    rows.append(
      {
        "tree": tree.name,
        "program": program.name,
        "bytes_accessed": result.bytes_accessed,
        "passes": result.bytes_accessed / tree.pass_bytes,
        "minimum_passes": minimum_passes(program.name, tree.copy),
        "flops": result.flops,
        "kernels": len(result.kernels),
        "fusions": result.fusions,
        "hlo_bytes": sum(op.bytes for op in result.kernels),
        "details": kernel_details(result.kernels, tree.pass_bytes),
        "hlo_text": result.text,
      }
    )
  adamw = next(row for row in rows if row["program"] == "adamw")
  overhead = adamw["passes"] - adamw["minimum_passes"]
  for row in rows:
    row["budget_passes"] = budget_passes(row["program"], tree.copy, overhead)
  return rows


def kernel_details(kernels: list[hlo.Op], pass_bytes: int, threshold: float = 0.05) -> list[dict]:
  """The kernels that move at least ``threshold`` passes, with what is fused into them."""
  notable = (
    "divide",
    "sqrt",
    "rsqrt",
    "log",
    "exponential",
    "is-finite",
    "select",
    "clamp",
    "maximum",
    "minimum",
    "convert",
    "compare",
    "reduce",
    "iota",
    "xor",
    "power",
    "dot",
    "copy",
  )
  details = []
  for op in kernels:
    if op.bytes < threshold * pass_bytes:
      continue
    details.append(
      {
        "kernel": op.name,
        "read": op.bytes_read / pass_bytes,
        "written": op.bytes_written / pass_bytes,
        "ops": {name: count for name, count in op.inner.items() if name in notable},
        "sources": [s for s in op.sources if s.startswith(("ivon_optax/", "optax/"))],
      }
    )
  return details


def summary(rows: list[dict], copy: float) -> dict:
  """IVON's whole step beyond AdamW's, against the minimum difference and the budget."""
  by_program = {row["program"]: row for row in rows}
  extra = by_program["ivon.step"]["passes"] - by_program["adamw"]["passes"]
  return {
    "extra_passes": extra,
    "minimum_extra_passes": minimum_extra_passes(copy),
    "extra_over_minimum": extra / minimum_extra_passes(copy),
    "extra_pass_budget": by_program["ivon.step"]["budget_passes"] - by_program["adamw"]["passes"],
  }


def violations(rows: list[dict]) -> list[str]:
  """What exceeds its budget, as sentences; empty when every program is within its budget."""
  return [
    f"{row['tree']}: {row['program']} moves {row['passes']:.2f} passes, over its budget of "
    f"{row['budget_passes']:.2f} (minimum {row['minimum_passes']:.2f})"
    for row in rows
    if row.get("budget_passes") is not None and row["passes"] > row["budget_passes"]
  ]


def train_rows(model: str) -> list[dict]:
  """The whole train step of ``model``: AdamW's and IVON's bytes, and IVON's extra passes."""
  size, found = train_programs(model)
  results = [account(program) for program in found]
  rows = []
  for program, result in zip(found, results, strict=True):
    rows.append(
      {
        "tree": f"train[{model}]",
        "program": program.name.split(".", 1)[1],
        "bytes_accessed": result.bytes_accessed,
        "passes": result.bytes_accessed / (4 * size),
        "flops": result.flops,
        "kernels": len(result.kernels),
        "fusions": result.fusions,
        "details": kernel_details(result.kernels, 4 * size, threshold=0.25),
        "hlo_text": result.text,
      }
    )
  return rows


# --- Report ---------------------------------------------------------------------------------


def _number(value, digits=2) -> str:
  return "" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict]) -> str:
  headers = [
    "tree",
    "program",
    "MB accessed",
    "passes",
    "minimum",
    "budget",
    "GFLOP",
    "kernels",
    "fusions",
  ]
  table = [
    [
      row["tree"],
      row["program"],
      f"{row['bytes_accessed'] / 1e6:.1f}",
      _number(row["passes"]),
      _number(row.get("minimum_passes"), 1),
      _number(row.get("budget_passes"), 1),
      f"{row['flops'] / 1e9:.3f}",
      row["kernels"],
      row["fusions"],
    ]
    for row in rows
  ]
  return measure.markdown_table(headers, table)


def details_text(row: dict) -> str:
  lines = [f"\n#### {row['tree']}: {row['program']}\n"]
  lines.append("| kernel | read | written | ops inside | sources |")
  lines.append("|---|---|---|---|---|")
  for detail in row["details"]:
    ops = ", ".join(f"{name} {count}" for name, count in sorted(detail["ops"].items()))
    lines.append(
      f"| {detail['kernel']} | {detail['read']:.2f} | {detail['written']:.2f} | {ops} | "
      f"{' '.join(compact_sources(detail['sources']))} |"
    )
  return "\n".join(lines)


def compact_sources(sources: list[str]) -> list[str]:
  """``['a.py:3', 'a.py:5', 'b.py:1']`` as ``['a.py:3,5', 'b.py:1']``."""
  by_file: dict[str, list[int]] = {}
  for source in sources:
    path, _, line = source.rpartition(":")
    by_file.setdefault(path, []).append(int(line))
  return [f"{path}:{','.join(map(str, sorted(set(lines))))}" for path, lines in by_file.items()]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--tree", nargs="+", choices=TREES, default=list(DEFAULT_TREES))
  parser.add_argument(
    "--train",
    nargs="*",
    default=[],
    choices=("mlp", "resnet20", "gpt2s"),
    help="also count the whole train step of these models (step_time.py's), AdamW and IVON",
  )
  parser.add_argument("--details", action="store_true", help="list each program's kernels")
  parser.add_argument("--dump-hlo", type=Path, help="write each optimized HLO module here")
  parser.add_argument("--json", type=Path, help="write the results as JSON here")
  parser.add_argument(
    "--check",
    action="store_true",
    help="exit with status 1 if an IVON program exceeds its pass budget (budget_passes)",
  )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  env = measure.environment()
  print(f"# Optimizer-step memory traffic on {env['device']} ({env['platform']}), {env['date']}")
  print(f"# {env['command']}")
  print("# passes: bytes accessed / bytes of one float32 copy of the params (XLA cost analysis)\n")
  all_rows, summaries, problems = [], {}, []
  for name in args.tree:
    tree = make_tree(name)
    rows = tree_rows(tree)
    all_rows += rows
    summaries[name] = summary(rows, tree.copy)
    problems += violations(rows)
  print(markdown(all_rows))
  print()
  for name, totals in summaries.items():
    tree = make_tree(name)
    print(
      f"- {name} ({tree.description}, {tree.size:,} params, {tree.pass_bytes / 1e6:.1f} MB "
      f"a pass): IVON's optimizer step moves {totals['extra_passes']:.2f} passes beyond "
      f"AdamW's; the minimum is {totals['minimum_extra_passes']:.1f} "
      f"({totals['extra_over_minimum']:.2f}x), the budget {totals['extra_pass_budget']:.2f}."
    )
  train = []
  for model in args.train:
    train += train_rows(model)
  if train:
    print("\nWhole train steps (forward, backward and optimizer):\n")
    print(markdown(train))
    by_model: dict[str, dict] = {}
    for row in train:
      by_model.setdefault(row["tree"], {})[row["program"]] = row
    for model, found in by_model.items():
      adamw, ivon = found["adamw"], found["ivon"]
      print(
        f"- {model}: IVON's step moves {ivon['passes'] - adamw['passes']:.2f} passes beyond "
        f"AdamW's ({adamw['passes']:.2f} -> {ivon['passes']:.2f}) and runs "
        f"{ivon['kernels'] - adamw['kernels']} more kernels ({adamw['kernels']} -> "
        f"{ivon['kernels']})."
      )
  if args.details:
    for row in all_rows + train:
      print(details_text(row))
  if args.dump_hlo:
    args.dump_hlo.mkdir(parents=True, exist_ok=True)
    for row in all_rows + train:
      (args.dump_hlo / f"{row['tree']}.{row['program']}.hlo.txt").write_text(row["hlo_text"])
  if args.json:
    strip = lambda row: {k: v for k, v in row.items() if k != "hlo_text"}
    report = {
      "environment": env,
      "results": [strip(row) for row in all_rows + train],
      "summary": summaries,
      "violations": problems,
      "budget": {"backend_allowance": BACKEND_ALLOWANCE, "headroom": HEADROOM},
    }
    args.json.write_text(json.dumps(report, indent=2, default=str))
  if problems:
    print("\nOver budget:\n" + "\n".join(f"- {problem}" for problem in problems))
  if args.check and problems:
    print("\nstep_bytes --check: FAILED", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
