"""Shared measuring helpers for the benchmarks.

Interleaved timing, statistics, environment and XLA's memory plan. The compiled program's
kernels and bytes are read in :mod:`benchmarks.hlo`, its device time per kernel in
:mod:`benchmarks.kernel_time`.
"""

import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class Timed:
  """Something to time: ``run()`` performs one step and returns once the device is done."""

  name: str
  run: Callable[[], None]
  seconds: list = dataclasses.field(default_factory=list)


def time_interleaved(items: list[Timed], rounds: int, warmup: int) -> None:
  """Runs ``warmup`` untimed steps of each item, then ``rounds`` rounds of one timed step each.

  The order within a round rotates, so that no item always follows the same neighbour; load
  from other processes then spreads evenly over the items, and ratios stay meaningful on a
  shared machine.
  """
  if not items:
    return
  for item in items:
    for _ in range(warmup):
      item.run()
  for round_index in range(rounds):
    shift = round_index % len(items)
    for item in items[shift:] + items[:shift]:
      start = time.perf_counter()
      item.run()
      item.seconds.append(time.perf_counter() - start)


def summary_ms(seconds: list[float]) -> dict:
  """Median, min, max, mean and the 10th/90th percentiles of step times, in milliseconds."""
  if not seconds:
    return {}
  values = np.asarray(seconds) * 1e3
  return {
    "median": float(np.median(values)),
    "min": float(values.min()),
    "max": float(values.max()),
    "mean": float(values.mean()),
    "p10": float(np.percentile(values, 10)),
    "p90": float(np.percentile(values, 90)),
    "steps": len(values),
  }


def tree_bytes(tree: Any) -> int:
  """Total bytes of the array leaves of ``tree`` (typed PRNG keys count their key data)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    total += int(np.prod(np.shape(leaf))) * np.dtype(getattr(leaf, "dtype", np.float32)).itemsize
  return total


def planned_memory_bytes(compiled) -> int | None:
  """XLA's planned memory of one compiled step: arguments + outputs + temporaries - aliased.

  Donated buffers that the outputs reuse count once. This is the buffer assignment's total,
  available on CPU and GPU alike (``peak_memory_in_bytes`` is not filled in on CPU).
  """
  try:
    stats = compiled.memory_analysis()
  except (RuntimeError, NotImplementedError, AttributeError):
    return None
  if stats is None:
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def device_peak_bytes(device=None) -> int | None:
  """``peak_bytes_in_use`` of ``device.memory_stats()``, or None where there are none (CPU)."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except (RuntimeError, NotImplementedError, AttributeError):
    return None
  if not stats:
    return None
  return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or ``platform.processor()``)."""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def environment() -> dict:
  """Device, CPU, versions, date and the exact command, for the results file."""
  device = jax.devices()[0]
  versions = {}
  for package in ("jax", "jaxlib", "optax", "flax", "torch", "ivon-opt", "numpy"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": " ".join(shlex.quote(arg) for arg in [Path(sys.executable).name] + sys.argv),
    "platform": jax.default_backend(),
    "device": getattr(device, "device_kind", str(device)),
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "python": platform.python_version(),
    "versions": versions,
  }


def format_bytes(count: float | None) -> str:
  """``count`` bytes as MB with one decimal, or ``n/a``."""
  return "n/a" if count is None else f"{count / 1e6:.1f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
  """A GitHub-flavoured markdown table."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def spread(values: list[float]) -> str:
  """``median [min, max]`` of a few repeated measurements."""
  return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
