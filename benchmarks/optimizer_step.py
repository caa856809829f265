r"""Optimizer-only microbenchmark: IVON's sampling and update against AdamW's, as memory traffic.

On a 10M-parameter float32 pytree (about 40 MB per buffer) it times, interleaved in one process:

* ``copy``: ``y = 2 x`` over one 10M buffer, the device's copy bandwidth (read 1, write 1);
* ``adamw``: ``optax.adamw`` update + ``apply_updates`` (reads params, grads, mu, nu; writes
  params, mu, nu: 7 buffers);
* ``ivon``: ``sample_params`` + ``update`` + ``apply_updates`` with the default sampler; the
  update alone reads m, g, h, momentum and noise and writes m, h and momentum (8 buffers), and
  sampling reads m and h and writes the sampled params and the noise (4 more);
* ``ivon[threefry]``: the same with ``sampler=jax.random.normal``;
* ``ivon[given eps]``: the same arithmetic with the standard normals read from memory instead of
  generated (one more buffer);
* the random numbers alone: :func:`ivon_optax.random.counter_normal` and ``jax.random.normal``
  with threefry, rbg and unsafe_rbg keys, as samples per second.

For each it reports the bytes the algorithm must move, the achieved GB/s, the fraction of the
copy bandwidth, the time above that memory-traffic floor, and the bytes XLA's fused program
actually reads and writes (``XLA MB``, from the optimized HLO).

Example::

  python benchmarks/optimizer_step.py --json optimizer_step.json
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import optax

import ivon_optax
from benchmarks import hlo
from benchmarks import measure
from ivon_optax.random import counter_normal


def param_tree(scale: int = 1) -> dict:
  """A 9.97M-parameter float32 tree of four layers (``scale`` divides every dimension)."""
  shapes = {
    "embed": (4096, 1024),
    "up": (1024, 4096),
    "square": (1024, 1024),
    "out": (1024, 512),
    "up_bias": (4096,),
    "square_bias": (1024,),
    "out_bias": (512,),
  }
  return {
    name: jnp.full(tuple(max(1, d // scale) for d in shape), 0.01, jnp.float32)
    for name, shape in shapes.items()
  }


class Case:
  """A jitted program with donated state, its buffer count and its compiled HLO statistics."""

  def __init__(self, name, fn, carry, inputs, buffers, elements, donate=(0,)):
    self.name = name
    self.buffers = buffers
    self.elements = elements
    compiled = jax.jit(fn, donate_argnums=donate).lower(*carry, *inputs).compile()
    self.traffic = hlo.traffic(compiled)
    self.carry = list(carry)
    self.timed = measure.Timed(name, self.run)
    self._compiled = compiled
    self._inputs = inputs

  def run(self):
    outputs = self._compiled(*self.carry, *self._inputs)
    self.carry[: len(self.carry)] = outputs[: len(self.carry)]
    jax.block_until_ready(outputs)


def optimizer_cases(params, grads, key_impl: str) -> list[Case]:
  """Copy, AdamW and the IVON variants on ``params``."""
  size = sum(leaf.size for leaf in jax.tree.leaves(params))
  flat = jnp.ones((size,), jnp.float32)
  keys = jax.random.key(0, impl=key_impl)

  def scale(values):
    return (values * 2.0,)

  adamw = optax.adamw(1e-4, weight_decay=1e-4)

  def adamw_step(params, state, grads):
    updates, state = adamw.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  ivon = ivon_optax.ivon(1e-2, ess=5e4)

  def ivon_step(sampler):
    def step(params, state, key, grads):
      sampled, noise = ivon_optax.sample_params(key, state, params, sampler=sampler)
      updates, state = ivon.update(grads, state, params, noise=noise)
      return optax.apply_updates(params, updates), state, sampled

    return step

  def ivon_given_eps(params, state, eps, grads):
    sigma = ivon_optax.posterior_std(state, params)
    noise = jax.tree.map(lambda s, e: s * e, sigma, eps)
    sampled = jax.tree.map(lambda p, n: p + n, params, noise)
    updates, state = ivon.update(grads, state, params, noise=noise)
    return optax.apply_updates(params, updates), state, sampled

  eps = jax.tree.map(lambda p: counter_normal(jax.random.key(1), p.shape), params)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  return [
    Case("copy", scale, (flat,), (), 2, size),
    Case("adamw", adamw_step, (copy(params), adamw.init(params)), (grads,), 7, size, donate=(0, 1)),
    Case(
      "ivon",
      ivon_step(counter_normal),
      (copy(params), ivon.init(params)),
      (keys, grads),
      12,
      size,
      donate=(0, 1),
    ),
    Case(
      "ivon[threefry]",
      ivon_step(jax.random.normal),
      (copy(params), ivon.init(params)),
      (keys, grads),
      12,
      size,
      donate=(0, 1),
    ),
    Case(
      "ivon[given eps]",
      ivon_given_eps,
      (copy(params), ivon.init(params)),
      (eps, grads),
      13,
      size,
      donate=(0, 1),
    ),
  ]


KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def generator_cases(size: int, key_impls=KEY_IMPLS) -> list[Case]:
  """The standard normal generators alone, writing ``size`` float32 numbers."""
  cases = []
  for sampler_name, sampler in (
    ("counter_normal", counter_normal),
    ("jax.random.normal", jax.random.normal),
  ):
    for impl in key_impls:
      key = jax.random.key(0, impl=impl)
      cases.append(
        Case(
          f"{sampler_name} [{impl}]",
          lambda key, sampler=sampler: (sampler(key, (size,), jnp.float32),),
          (),
          (key,),
          1,
          size,
          donate=(),
        )
      )
  return cases


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case")
  parser.add_argument(
    "--scale", type=int, default=1, help="divide every dimension by this (for a quick test)"
  )
  parser.add_argument(
    "--key-impl",
    default="threefry2x32",
    choices=KEY_IMPLS,
    help="PRNG implementation of IVON's key",
  )
  parser.add_argument(
    "--generator-key-impls",
    nargs="+",
    default=list(KEY_IMPLS),
    choices=KEY_IMPLS,
    help="key implementations to time the generators with",
  )
  parser.add_argument("--json", type=Path, help="write the results as JSON here")
  args = parser.parse_args(argv)

  env = measure.environment()
  params = param_tree(args.scale)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  size = sum(leaf.size for leaf in jax.tree.leaves(params))
  cases = optimizer_cases(params, grads, args.key_impl) + generator_cases(
    size, args.generator_key_impls
  )
  measure.time_interleaved([case.timed for case in cases], args.steps, args.warmup)

  stats = {case.name: measure.summary_ms(case.timed.seconds) for case in cases}
  buffer_bytes = 4 * size
  copy_seconds = stats["copy"]["median"] / 1e3
  bandwidth = 2 * buffer_bytes / copy_seconds
  rows = []
  for case in cases:
    seconds = stats[case.name]["median"] / 1e3
    moved = case.buffers * buffer_bytes
    rows.append(
      {
        "case": case.name,
        "step_ms": stats[case.name],
        "buffers": case.buffers,
        "bytes": moved,
        "gb_per_s": moved / seconds / 1e9,
        "fraction_of_copy_bandwidth": moved / seconds / bandwidth,
        "floor_ms": moved / bandwidth * 1e3,
        "above_floor_ms": (seconds - moved / bandwidth) * 1e3,
        "samples_per_s": case.elements / seconds if case.buffers == 1 else None,
        "xla_bytes": case.traffic["bytes"],
        "xla_passes": case.traffic["passes"],
        "ratio_to_adamw": seconds / (stats["adamw"]["median"] / 1e3),
      }
    )

  print(f"# Optimizer-step microbenchmark on {env['device']} ({env['cpu']}), {env['date']}")
  print(f"# {env['command']}")
  print(
    f"# {size:,} float32 params ({buffer_bytes / 1e6:.1f} MB per buffer); copy bandwidth "
    f"{bandwidth / 1e9:.1f} GB/s (median of {args.steps})\n"
  )
  headers = [
    "case",
    "median ms",
    "min ms",
    "max ms",
    "/ AdamW",
    "buffers",
    "GB/s",
    "of copy BW",
    "floor ms",
    "above floor ms",
    "XLA MB",
    "M samples/s",
  ]
  table = [
    [
      row["case"],
      f"{row['step_ms']['median']:.2f}",
      f"{row['step_ms']['min']:.2f}",
      f"{row['step_ms']['max']:.2f}",
      f"{row['ratio_to_adamw']:.2f}",
      row["buffers"],
      f"{row['gb_per_s']:.1f}",
      f"{row['fraction_of_copy_bandwidth']:.0%}",
      f"{row['floor_ms']:.2f}",
      f"{row['above_floor_ms']:.2f}",
      f"{row['xla_bytes'] / 1e6:.0f}",
      f"{row['samples_per_s'] / 1e6:.0f}" if row["samples_per_s"] else "",
    ]
    for row in rows
  ]
  print(measure.markdown_table(headers, table))

  by_case = {row["case"]: row for row in rows}
  ivon_ms = by_case["ivon"]["step_ms"]["median"]
  generator = by_case.get(f"counter_normal [{args.key_impl}]")
  rng_ms = generator["step_ms"]["median"] if generator else None
  analysis = {
    "ivon_floor_fraction": by_case["ivon"]["fraction_of_copy_bandwidth"],
    "adamw_floor_fraction": by_case["adamw"]["fraction_of_copy_bandwidth"],
    "ivon_floor_ms": by_case["ivon"]["floor_ms"],
    "rng_ms": rng_ms,
    "ivon_extra_xla_bytes": by_case["ivon"]["xla_bytes"] - by_case["ivon"]["bytes"],
    "adamw_extra_xla_bytes": by_case["adamw"]["xla_bytes"] - by_case["adamw"]["bytes"],
  }
  line = (
    f"\nIVON runs at {analysis['ivon_floor_fraction']:.0%} of the copy bandwidth (AdamW: "
    f"{analysis['adamw_floor_fraction']:.0%}). Of its {ivon_ms:.2f} ms, the 12-buffer "
    f"memory-traffic floor is {analysis['ivon_floor_ms']:.2f} ms"
  )
  if rng_ms is not None:
    line += (
      f" and generating its {size:,} normals alone takes {rng_ms:.2f} ms "
      f"(counter_normal [{args.key_impl}])"
    )
  line += (
    f"; XLA's fused program moves {analysis['ivon_extra_xla_bytes'] / 1e6:+.0f} MB over "
    f"the 12-buffer count (AdamW: {analysis['adamw_extra_xla_bytes'] / 1e6:+.0f} MB over "
    "its 7)."
  )
  print(line)
  report = {
    "environment": env,
    "size": size,
    "copy_bandwidth_bytes_per_s": bandwidth,
    "steps": args.steps,
    "results": rows,
    "analysis": analysis,
  }
  if args.json:
    args.json.write_text(json.dumps(report, indent=2, default=str))
  return report


if __name__ == "__main__":
  main()
