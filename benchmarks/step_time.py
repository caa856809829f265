r"""Full train-step time of IVON against AdamW and SGD, in JAX and in PyTorch, in one process.

Each step is the whole jitted train step (forward, backward, IVON's weight sampling and the
optimizer update) with params, optimizer state and model state donated, timed until the device
is done (``jax.block_until_ready``). All optimizers run on identical Flax models and synthetic
data, interleaved step by step (see :func:`benchmarks.measure.time_interleaved`), and the table
reports the median, min and max over ``--steps`` steps after warm-up and the ratio to AdamW.

When ``torch`` and ``ivon-opt`` are installed the same models are timed in PyTorch with
``torch.optim.AdamW``, ``torch.optim.SGD`` and the reference ``ivon.IVON`` (its
``sampled_params(train=True)`` context and ``step()``), in the same process.

The runners are timed in three phases, each interleaved within itself: the one-sample JAX
steps, the multi-sample JAX steps (``--samples``), then PyTorch. On a CPU with few cores a step
runs slower right after a much longer one (a 4-sample step with large temporaries, or PyTorch,
whose OpenMP worker threads keep spinning after each op), which would distort the ratios.

Examples::

  python benchmarks/step_time.py --model mlp
  python benchmarks/step_time.py --model mlp resnet20 gpt2s --samples 4 --json results.json

Memory: ``planned MB`` is XLA's memory plan of one compiled step (arguments, outputs and
temporaries, donated buffers once; CPU and GPU). ``peak MB`` is the device's
``peak_bytes_in_use`` (JAX) or ``torch.cuda.max_memory_allocated`` (PyTorch) of AdamW and
IVON, each measured in a child process of its own so that the peaks do not mix; it is ``n/a``
where the device keeps no statistics (CPU). ``--no-peak-memory`` skips the child processes.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# PyTorch shares the GPU with JAX here: let JAX allocate as it goes instead of taking 75%.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import optax

import ivon_optax
from benchmarks import hlo
from benchmarks import kernel_time
from benchmarks import measure
from benchmarks import models
from ivon_optax.random import counter_normal

# Small, stable settings: the timings do not depend on them, but NaNs could.
ADAMW = {"learning_rate": 1e-4, "weight_decay": 1e-4}
SGD = {"learning_rate": 1e-3, "momentum": 0.9}
IVON = {"learning_rate": 1e-2, "ess": 5e4, "hess_init": 1.0, "weight_decay": 1e-4}

# Device peak memory is measured for these (one child process each).
PEAK_MEMORY_OPTIMIZERS = ("adamw", "ivon", "ivon-opt")

SAMPLERS = {"counter": counter_normal, "threefry": jax.random.normal}


@dataclasses.dataclass
class Runner:
  """One optimizer on one model, ready to step."""

  backend: str
  optimizer: str
  samples: int
  run: Callable[[], None]
  compile_s: float | None = None
  state_bytes: int | None = None
  planned_bytes: int | None = None
  traffic: dict | None = None
  hlo_text: str | None = None
  peak_bytes: int | None = None
  timed: measure.Timed | None = None

  @property
  def name(self) -> str:
    return f"{self.backend}/{self.optimizer}"


# --- JAX ------------------------------------------------------------------------------------


def jax_step_fn(workload: models.Workload, tx, kind: str, samples: int, sampler):
  """The train step ``(params, opt_state, model_state, key, batch) -> (..., loss)``.

  ``kind`` is ``'plain'`` (AdamW, SGD), ``'ivon'`` (one sample), ``'parallel'`` (``samples``
  samples under ``vmap``, :func:`ivon_optax.average_samples`) or ``'sequential'`` (a
  ``lax.scan`` of :func:`ivon_optax.add_sample`).
  """
  grad_fn = jax.value_and_grad(workload.loss, has_aux=True)
  sample_kwargs = {"sampler": sampler}

  def plain(params, opt_state, model_state, key, batch):
    del key
    (loss, model_state), grads = grad_fn(params, model_state, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  def one_sample(params, opt_state, model_state, key, batch):
    sampled, noise = ivon_optax.sample_params(key, opt_state, params, **sample_kwargs)
    (loss, model_state), grads = grad_fn(sampled, model_state, batch)
    updates, opt_state = tx.update(grads, opt_state, params, noise=noise)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  def parallel(params, opt_state, model_state, key, batch):
    def gradient_at_sample(sample_key):
      sampled, noise = ivon_optax.sample_params(sample_key, opt_state, params, **sample_kwargs)
      (loss, new_model_state), grads = grad_fn(sampled, model_state, batch)
      return loss, new_model_state, grads, noise

    losses, model_states, grads, noise = jax.vmap(gradient_at_sample)(
      jax.random.split(key, samples)
    )
    average = ivon_optax.average_samples(grads, noise)
    updates, opt_state = tx.update(average.grads, opt_state, params, samples=average)
    model_state = jax.tree.map(lambda stat: stat.mean(axis=0), model_states)
    return optax.apply_updates(params, updates), opt_state, model_state, losses.mean()

  def sequential(params, opt_state, model_state, key, batch):
    def add_one(carry, sample_key):
      average, model_state = carry
      sampled, noise = ivon_optax.sample_params(sample_key, opt_state, params, **sample_kwargs)
      (loss, model_state), grads = grad_fn(sampled, model_state, batch)
      return (ivon_optax.add_sample(average, grads, noise), model_state), loss

    (average, model_state), losses = jax.lax.scan(
      add_one, (ivon_optax.init_sample_average(params), model_state), jax.random.split(key, samples)
    )
    updates, opt_state = tx.update(average.grads, opt_state, params, samples=average)
    return optax.apply_updates(params, updates), opt_state, model_state, losses.mean()

  return {"plain": plain, "ivon": one_sample, "parallel": parallel, "sequential": sequential}[kind]


def jax_runner(
  workload: models.Workload,
  optimizer: str,
  kind: str,
  samples: int,
  sampler_name: str,
  key_impl: str,
  max_steps: int,
) -> Runner:
  """Initializes, compiles (timed) and wraps one JAX optimizer on ``workload``."""
  if optimizer == "adamw":
    tx = optax.adamw(**ADAMW)
  elif optimizer == "sgd":
    tx = optax.sgd(**SGD)
  else:
    tx = ivon_optax.ivon(**IVON)
  params, model_state = workload.init()
  opt_state = tx.init(params)
  step = jax.jit(
    jax_step_fn(workload, tx, kind, samples, SAMPLERS[sampler_name]), donate_argnums=(0, 1, 2)
  )
  # One key per step, sliced before any timing.
  keys = list(jax.random.split(jax.random.key(0, impl=key_impl), max_steps))
  start = time.perf_counter()
  compiled = step.lower(params, opt_state, model_state, keys[0], workload.batch).compile()
  compile_s = time.perf_counter() - start
  carry = [params, opt_state, model_state]
  step_index = [0]

  def run():
    key = keys[step_index[0] % max_steps]
    step_index[0] += 1
    outputs = compiled(*carry, key, workload.batch)
    carry[:] = outputs[:3]
    jax.block_until_ready(outputs)

  label = _jax_label(optimizer, kind, samples, sampler_name)
  return Runner(
    "jax",
    label,
    samples,
    run,
    compile_s=compile_s,
    state_bytes=measure.tree_bytes(opt_state),
    planned_bytes=measure.planned_memory_bytes(compiled),
    traffic=hlo.traffic(compiled),
    hlo_text=compiled.as_text(),
  )


def jax_runners(model: str, args, only: str | None = None) -> list[Runner]:
  """AdamW, SGD and IVON (and IVON with ``--samples``) as JAX runners on ``model``."""
  workload = models.make_workload(model, jax.default_backend(), tiny=args.tiny)
  specs = [
    (optimizer, "ivon" if optimizer == "ivon" else "plain", 1, "counter")
    for optimizer in args.optimizers
  ]
  specs += [("ivon", "ivon", 1, name) for name in args.extra_samplers]
  if args.samples > 1:
    specs += [
      ("ivon", "parallel", args.samples, "counter"),
      ("ivon", "sequential", args.samples, "counter"),
    ]
  runners = []
  total_steps = args.warmup + args.steps + args.profile_steps + 1
  for optimizer, kind, samples, sampler_name in specs:
    label = _jax_label(optimizer, kind, samples, sampler_name)
    if only is not None and f"jax/{label}" != only:
      continue
    runners.append(
      jax_runner(workload, optimizer, kind, samples, sampler_name, args.key_impl, total_steps)
    )
  return runners


def _jax_label(optimizer, kind, samples, sampler_name):
  if kind in ("parallel", "sequential"):
    return f"ivon x{samples} {kind}"
  if optimizer == "ivon" and sampler_name != "counter":
    return f"ivon[{sampler_name}]"
  return optimizer


# --- PyTorch --------------------------------------------------------------------------------


def torch_available() -> bool:
  """Whether ``torch`` and the reference ``ivon-opt`` can be imported."""
  try:
    import ivon  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def torch_device() -> str:
  import torch  # pylint: disable=import-outside-toplevel

  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_runner(model: str, optimizer: str, samples: int, tiny: bool) -> Runner:
  """One PyTorch optimizer on the twin of ``model``; IVON is the reference ``ivon.IVON``."""
  import ivon  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from benchmarks import torch_models  # pylint: disable=import-outside-toplevel

  device = torch_device()
  torch.manual_seed(0)
  workload = torch_models.make_torch_workload(model, device, tiny)
  parameters = list(workload.model.parameters())
  if optimizer == "adamw":
    opt = torch.optim.AdamW(
      parameters, lr=ADAMW["learning_rate"], weight_decay=ADAMW["weight_decay"]
    )
  elif optimizer == "sgd":
    opt = torch.optim.SGD(parameters, lr=SGD["learning_rate"], momentum=SGD["momentum"])
  else:
    opt = ivon.IVON(
      parameters,
      lr=IVON["learning_rate"],
      ess=IVON["ess"],
      hess_init=IVON["hess_init"],
      weight_decay=IVON["weight_decay"],
      mc_samples=samples,
    )
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run():
    if optimizer == "ivon":
      for _ in range(samples):
        with opt.sampled_params(train=True):
          opt.zero_grad(set_to_none=True)
          workload.loss(workload.model).backward()
    else:
      opt.zero_grad(set_to_none=True)
      workload.loss(workload.model).backward()
    opt.step()
    synchronize()

  run()  # creates the optimizer's lazily allocated state before it is counted
  label = "ivon-opt" if optimizer == "ivon" else optimizer
  if samples > 1:
    label += f" x{samples} sequential"
  return Runner("torch", label, samples, run, state_bytes=_torch_state_bytes(opt))


def _torch_state_bytes(opt) -> int:
  import torch  # pylint: disable=import-outside-toplevel

  param_ids = {id(p) for group in opt.param_groups for p in group["params"]}
  tensors = {}

  def collect(value):
    if isinstance(value, torch.Tensor) and id(value) not in param_ids:
      tensors[id(value)] = value
    elif isinstance(value, dict):
      for item in value.values():
        collect(item)
    elif isinstance(value, (list, tuple)):
      for item in value:
        collect(item)

  collect(dict(opt.state))
  for group in opt.param_groups:
    collect({key: value for key, value in group.items() if key != "params"})
  return sum(t.numel() * t.element_size() for t in tensors.values())


def torch_runners(model: str, args, only: str | None = None) -> list[Runner]:
  """AdamW, SGD and the reference IVON in PyTorch (and IVON with ``--samples``)."""
  specs = [(optimizer, 1) for optimizer in args.optimizers]
  if args.samples > 1:
    specs.append(("ivon", args.samples))
  runners = []
  for optimizer, samples in specs:
    label = ("ivon-opt" if optimizer == "ivon" else optimizer) + (
      f" x{samples} sequential" if samples > 1 else ""
    )
    if only is not None and f"torch/{label}" != only:
      continue
    runners.append(torch_runner(model, optimizer, samples, args.tiny))
  return runners


# --- Peak memory, one child process per optimizer -------------------------------------------


def device_keeps_memory_stats() -> bool:
  return measure.device_peak_bytes() is not None


def child_peak_bytes(model: str, runner_name: str, args) -> int | None:
  """Peak device memory of ``runner_name`` alone, measured in a fresh process."""
  command = [
    sys.executable,
    str(Path(__file__).resolve()),
    "--model",
    model,
    "--memory-child",
    runner_name,
    "--samples",
    str(args.samples),
    "--key-impl",
    args.key_impl,
    "--warmup",
    "3",
    "--steps",
    "0",
    "--extra-samplers",
    *args.extra_samplers,
  ]
  if args.tiny:
    command.append("--tiny")
  if args.torch_threads:
    command += ["--torch-threads", str(args.torch_threads)]
  result = subprocess.run(
    command,
    capture_output=True,
    text=True,
    check=False,
    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
  )
  for line in result.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line).get("peak_bytes")
  print(
    f"  (peak memory of {runner_name} not measured: {result.stderr.strip()[-300:]})",
    file=sys.stderr,
  )
  return None


def run_memory_child(args) -> None:
  """``--memory-child NAME``: builds and steps only that runner and prints its peak memory."""
  backend = args.memory_child.split("/", 1)[0]
  model = args.model[0]
  if backend == "jax":
    runner = jax_runners(model, args, only=args.memory_child)[0]
    for _ in range(args.warmup):
      runner.run()
    peak = measure.device_peak_bytes()
  else:
    import torch  # pylint: disable=import-outside-toplevel

    runner = torch_runners(model, args, only=args.memory_child)[0]
    for _ in range(args.warmup):
      runner.run()
    peak = int(torch.cuda.max_memory_allocated()) if torch_device() == "cuda" else None
  print(json.dumps({"runner": args.memory_child, "peak_bytes": peak}))


# --- Profile ---------------------------------------------------------------------------------


def profile_runner(runner: Runner, steps: int) -> dict:
  """Device time of ``steps`` steps of a JAX runner per HLO op (:func:`kernel_time.profile`)."""
  op_bytes = {op.name: op.bytes for op in hlo.kernels(runner.hlo_text)}
  return kernel_time.profile(runner.run, steps, runner.hlo_text, op_bytes=op_bytes)


# --- Report ---------------------------------------------------------------------------------


def result_rows(model: str, description: str, runners: list[Runner]) -> list[dict]:
  """One JSON-ready dict per runner, with the ratio to the same backend's AdamW."""
  adamw = {
    r.backend: measure.summary_ms(r.timed.seconds)["median"]
    for r in runners
    if r.optimizer == "adamw"
  }
  rows = []
  for runner in runners:
    stats = measure.summary_ms(runner.timed.seconds)
    base = adamw.get(runner.backend)
    rows.append(
      {
        "model": model,
        "description": description,
        "backend": runner.backend,
        "optimizer": runner.optimizer,
        "samples": runner.samples,
        "step_ms": stats,
        "ratio_to_adamw": stats["median"] / base if base else None,
        "ratio_to_jax_adamw": stats["median"] / adamw["jax"] if "jax" in adamw else None,
        "compile_s": runner.compile_s,
        "state_bytes": runner.state_bytes,
        "planned_memory_bytes": runner.planned_bytes,
        "peak_memory_bytes": runner.peak_bytes,
        "hlo_traffic_bytes": (runner.traffic or {}).get("bytes"),
        "hlo_passes": (runner.traffic or {}).get("passes"),
      }
    )
  return rows


def markdown(rows: list[dict]) -> str:
  headers = [
    "backend",
    "optimizer",
    "median ms",
    "min ms",
    "max ms",
    "/ AdamW",
    "compile s",
    "state MB",
    "planned MB",
    "peak MB",
  ]
  table = []
  for row in rows:
    stats = row["step_ms"]
    table.append(
      [
        row["backend"],
        row["optimizer"],
        f"{stats['median']:.2f}",
        f"{stats['min']:.2f}",
        f"{stats['max']:.2f}",
        f"{row['ratio_to_adamw']:.3f}" if row["ratio_to_adamw"] else "n/a",
        f"{row['compile_s']:.1f}" if row["compile_s"] is not None else "n/a",
        measure.format_bytes(row["state_bytes"]),
        measure.format_bytes(row["planned_memory_bytes"]),
        measure.format_bytes(row["peak_memory_bytes"]),
      ]
    )
  return measure.markdown_table(headers, table)


def comparison_line(rows: list[dict]) -> str | None:
  """JAX IVON against the reference PyTorch IVON and PyTorch AdamW, when both ran."""
  by_name = {(r["backend"], r["optimizer"]): r["step_ms"]["median"] for r in rows}
  jax_ivon, torch_ivon = by_name.get(("jax", "ivon")), by_name.get(("torch", "ivon-opt"))
  if jax_ivon is None or torch_ivon is None:
    return None
  torch_adamw = by_name.get(("torch", "adamw"))
  speed = torch_ivon / jax_ivon
  line = f"JAX ivon {jax_ivon:.2f} ms vs PyTorch ivon-opt {torch_ivon:.2f} ms: JAX is " + (
    f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower"
  )
  if torch_adamw:
    line += f"; PyTorch AdamW {torch_adamw:.2f} ms"
  return line


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--model",
    nargs="+",
    choices=models.MODELS,
    default=["mlp"],
    help="one or more models, timed one after the other",
  )
  parser.add_argument(
    "--samples",
    type=int,
    default=1,
    help="also time IVON with S Monte-Carlo samples per step, parallel "
    "(vmap) and sequential (scan)",
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=("adamw", "sgd", "ivon"),
    default=["adamw", "sgd", "ivon"],
    help="the one-sample optimizers to time (AdamW is the reference of every ratio)",
  )
  parser.add_argument("--steps", type=int, default=50, help="timed steps per optimizer")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps per optimizer")
  parser.add_argument("--json", type=Path, help="write the results as JSON here")
  parser.add_argument("--tiny", action="store_true", help="tiny models, for a smoke test")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch runs")
  parser.add_argument(
    "--torch-threads",
    type=int,
    help="torch.set_num_threads for the PyTorch runs (default: PyTorch's)",
  )
  parser.add_argument(
    "--no-peak-memory",
    action="store_true",
    help="skip the per-optimizer child processes for device peak memory",
  )
  parser.add_argument(
    "--extra-samplers",
    nargs="*",
    default=["threefry"],
    choices=[s for s in SAMPLERS if s != "counter"],
    help="also time IVON with these samplers (threefry: jax.random.normal)",
  )
  parser.add_argument(
    "--key-impl",
    default="threefry2x32",
    choices=["threefry2x32", "rbg", "unsafe_rbg"],
    help="PRNG implementation of the step keys",
  )
  parser.add_argument(
    "--profile-steps",
    type=int,
    default=0,
    help="if > 0, profile that many steps of each JAX runner: its device time, the share of it "
    "in the program's HLO ops, and its most expensive ops (benchmarks/kernel_time.py)",
  )
  parser.add_argument("--memory-child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.samples < 1:
    parser.error("--samples must be >= 1")
  if "adamw" not in args.optimizers or "ivon" not in args.optimizers:
    parser.error("--optimizers must include adamw and ivon (the ratios are IVON / AdamW)")
  if args.steps < 0 or args.warmup < 0:
    parser.error("--steps and --warmup must be >= 0")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.memory_child:
    run_memory_child(args)
    return {}
  env = measure.environment()
  use_torch = not args.no_torch and torch_available()
  if use_torch and args.torch_threads:
    import torch  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(args.torch_threads)
  print(
    f"# IVON train-step benchmark on {env['device']} ({env['cpu']}, {env['cpu_count']} "
    f"CPUs), {env['date']}"
  )
  print(f"# {env['command']}")
  print(
    f"# load average {env['load_average']}"
    + (f"; PyTorch threads: {_torch_threads()}" if use_torch else "")
  )
  if args.steps < 50:
    print(f"# note: {args.steps} timed steps (< 50): a smoke run, not a measurement")
  all_rows, profiles = [], {}
  for model in args.model:
    runners = jax_runners(model, args)
    if use_torch:
      runners += torch_runners(model, args)
    description = models.make_workload(model, jax.default_backend(), tiny=args.tiny).description
    if not args.no_peak_memory and device_keeps_memory_stats():
      for runner in runners:
        if runner.optimizer in PEAK_MEMORY_OPTIMIZERS:
          runner.peak_bytes = child_peak_bytes(model, runner.name, args)
    for runner in runners:
      runner.timed = measure.Timed(runner.name, runner.run)
    # Three phases, each interleaved within itself: one-sample JAX steps, multi-sample JAX
    # steps, PyTorch. A step that follows a much longer one (a 4-sample step's large temporary
    # buffers, PyTorch's OpenMP threads that spin after every op) runs slower on a small CPU,
    # which would blur the ratios that matter most.
    phases = (
      lambda r: r.backend == "jax" and r.samples == 1,
      lambda r: r.backend == "jax" and r.samples > 1,
      lambda r: r.backend == "torch",
    )
    for in_phase in phases:
      measure.time_interleaved([r.timed for r in runners if in_phase(r)], args.steps, args.warmup)
    if args.profile_steps:
      for runner in runners:
        if runner.backend == "jax":
          profiles[f"{model}:{runner.name}"] = profile_runner(runner, args.profile_steps)
    rows = result_rows(model, description, runners)
    all_rows += rows
    params = sum(
      x.size
      for x in jax.tree.leaves(
        models.make_workload(model, jax.default_backend(), tiny=args.tiny).init()[0]
      )
    )
    print(f"\n## {model}: {description}, {params:,} params\n")
    print(markdown(rows))
    line = comparison_line(rows)
    if line:
      print(f"\n{line}")
  for name, report in profiles.items():
    print("\n" + kernel_time.format_report(name, report))
  report = {
    "environment": env,
    "settings": {
      "steps": args.steps,
      "warmup": args.warmup,
      "samples": args.samples,
      "key_impl": args.key_impl,
      "tiny": args.tiny,
      "torch": use_torch,
      "torch_threads": _torch_threads() if use_torch else None,
      "hyperparameters": {"adamw": ADAMW, "sgd": SGD, "ivon": IVON},
    },
    "results": all_rows,
    "profiles": profiles,
  }
  if args.json:
    args.json.write_text(json.dumps(report, indent=2, default=_json_default))
  return report


def _torch_threads() -> int:
  import torch  # pylint: disable=import-outside-toplevel

  return torch.get_num_threads()


def _json_default(value: Any):
  if isinstance(value, (jnp.ndarray,)):
    return value.tolist()
  return str(value)


if __name__ == "__main__":
  main()
