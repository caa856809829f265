"""Where a compiled step spends its device time: kernels from a ``jax.profiler`` trace, per HLO op.

A GPU kernel's name is not its HLO instruction's name (``loop_add_fusion_3``, ``nvjet_...``,
``sm90_xmma_gemm_...`` for ``loop_add_fusion.3``, a cuBLAS call, ...), so matching event
names against the HLO, as a first version of ``step_time.py --profile-steps`` did, finds
almost nothing. This module reads the trace's own records instead:

1. ``jax.profiler.trace`` writes an XSpace (``*.xplane.pb``); :func:`load` reads it with
   ``jax.profiler.ProfileData``.
2. :func:`device_events` takes the events that ran on the device: on a GPU every event of the
   ``/device:GPU:N`` planes' stream lines (kernels, copies and memsets), leaving out the lines
   that the profiler derives from them (``XLA Ops``, ``XLA Modules``, ``Steps``, ...); on a CPU,
   where XLA runs its kernels on host threads, the ``/host:CPU`` events that carry an
   ``hlo_op`` statistic.
3. :func:`attribute` labels each event with its HLO instruction: the instruction whose name,
   with ``.`` and ``-`` as ``_``, is the kernel's name (XLA:GPU names a fusion's kernel after
   it), or else the ``hlo_op`` statistic that XLA's annotations attach to every kernel it
   launches (with ``hlo_module``), which also covers library kernels (cuBLAS, cuDNN). It reports the
   device's busy time (the union of all events' intervals), the share of it in labelled events,
   and each HLO op's time (the union of its events, so that a CPU op split across threads
   counts once).

What the GPU path expects of the trace: planes named ``/device:GPU:<n>`` (``/device:`` for
any accelerator), one line per stream, one event per kernel, copy or memset with its start
and duration, and for XLA's kernels the statistics ``hlo_op`` (the instruction's name) and
``hlo_module`` (the jitted module's name, e.g. ``jit_step``). Kernels that carry neither a
known ``hlo_op`` nor a matching name are reported by kernel name, as unattributed.
"""

import collections
import dataclasses
import re
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path

import jax

# Lines that the profiler derives from the stream lines; their events repeat the kernels'.
DERIVED_LINES = frozenset(
  {
    "Steps",
    "XLA Modules",
    "XLA Ops",
    "Async XLA Ops",
    "XLA TraceMe",
    "TensorFlow Ops",
    "TensorFlow Name Scope",
    "Framework Ops",
    "Framework Name Scope",
    "Source code",
    "Launch Stats",
    "_counters_",
  }
)


@dataclasses.dataclass(frozen=True)
class DeviceEvent:
  """One kernel, copy or (on CPU) XLA op as the trace recorded it."""

  name: str
  start_ns: float
  duration_ns: float
  hlo_op: str | None = None
  hlo_module: str | None = None
  line: str = ""

  @property
  def end_ns(self) -> float:
    return self.start_ns + self.duration_ns


def load(directory: str | Path):
  """The ``jax.profiler.ProfileData`` of the newest ``*.xplane.pb`` under ``directory``."""
  files = sorted(Path(directory).rglob("*.xplane.pb"), key=lambda path: path.stat().st_mtime)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb under {directory}")
  return jax.profiler.ProfileData.from_file(str(files[-1]))


def _event(event, line: str) -> DeviceEvent:
  stats = dict(event.stats)
  return DeviceEvent(
    name=event.name,
    start_ns=float(event.start_ns),
    duration_ns=float(event.duration_ns),
    hlo_op=_text(stats.get("hlo_op")),
    hlo_module=_text(stats.get("hlo_module")),
    line=line,
  )


def _text(value) -> str | None:
  if value is None:
    return None
  return value.decode() if isinstance(value, bytes) else str(value)


def device_events(profile) -> tuple[str, list[DeviceEvent]]:
  """``(kind, events)``: the accelerator's events (``kind`` ``'device'``), or XLA:CPU's.

  ``profile`` is a ``jax.profiler.ProfileData`` (or anything with its ``planes``).
  """
  found = []
  for plane in profile.planes:
    if not plane.name.startswith("/device:"):
      continue
    for line in plane.lines:
      if line.name in DERIVED_LINES:
        continue
      found += [_event(event, line.name) for event in line.events if event.duration_ns > 0]
  if found:
    return "device", found
  for plane in profile.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      for event in line.events:
        converted = _event(event, line.name)
        if converted.hlo_op and converted.duration_ns > 0:
          found.append(converted)
  return "cpu", found


def union_ns(intervals: Iterable[tuple[float, float]]) -> float:
  """Total length of the union of ``(start, end)`` intervals."""
  total, current_start, current_end = 0.0, None, None
  for start, end in sorted(intervals):
    if current_end is None or start > current_end:
      if current_end is not None:
        total += current_end - current_start
      current_start, current_end = start, end
    else:
      current_end = max(current_end, end)
  if current_end is not None:
    total += current_end - current_start
  return total


def kernel_key(name: str) -> str:
  """A kernel or instruction name with ``.`` and ``-`` as ``_`` (XLA:GPU's kernel naming)."""
  return re.sub(r"[.\-]", "_", name)


def attribute(
  events: list[DeviceEvent],
  steps: int,
  instructions: Iterable[str] = (),
  module: str | None = None,
  op_bytes: dict[str, int] | None = None,
  wall_s: float | None = None,
) -> dict:
  """Device time per HLO op, per step.

  Args:
    events: from :func:`device_events`.
    steps: how many steps the trace holds.
    instructions: the compiled program's instruction names (``hlo.instruction_names``), to
      match kernels that carry no ``hlo_op`` by name, and to check those that do.
    module: the compiled module's name (``jit_...``); events of other modules count as
      device time but not as this program's.
    op_bytes: bytes each instruction reads and writes (once per step), for the achieved
      bandwidth.
    wall_s: the traced steps' wall-clock time.

  Returns:
    A dict with ``device_ms`` (busy time per step), ``attributed_ms`` and ``attributed_share``
    (of the busy time), ``wall_ms`` and ``ops``, one dict per HLO op (``op``, ``ms``,
    ``share``, ``calls``, ``kernels``, and ``gb_per_s`` where ``op_bytes`` knows the op),
    longest first; kernels that none of this matched are listed as ``op`` ``None``.
  """
  instructions = set(instructions)
  by_key = {kernel_key(name): name for name in instructions}
  groups: dict[str | None, list[DeviceEvent]] = collections.defaultdict(list)
  unmatched: dict[str, list[DeviceEvent]] = collections.defaultdict(list)
  for event in events:
    op = None
    if module is None or event.hlo_module in (None, module):
      # A fusion's kernel is named after it; the name is the more specific label where the
      # annotation names an enclosing call (a command buffer).
      op = by_key.get(kernel_key(event.name))
      if op is None and event.hlo_op and (not instructions or event.hlo_op in instructions):
        op = event.hlo_op
    if op is None:
      unmatched[event.name].append(event)
    else:
      groups[op].append(event)
  spans = lambda found: [(e.start_ns, e.end_ns) for e in found]
  busy = union_ns(spans(events))
  attributed = union_ns(spans([e for found in groups.values() for e in found]))
  rows = []
  for op, found in list(groups.items()) + [(None, found) for found in unmatched.values()]:
    ns = union_ns(spans(found))
    kernels = collections.Counter(e.name for e in found)
    row = {
      "op": op,
      "ms": ns / steps / 1e6,
      "share": ns / busy if busy else 0.0,
      "calls": len(found) / steps,
      "kernels": [name for name, _ in kernels.most_common(3)],
    }
    if op is not None and op_bytes and op in op_bytes and ns > 0:
      row["gb_per_s"] = op_bytes[op] * steps / ns
    rows.append(row)
  rows.sort(key=lambda row: -row["ms"])
  return {
    "steps": steps,
    "events": len(events),
    "device_ms": busy / steps / 1e6,
    "attributed_ms": attributed / steps / 1e6,
    "attributed_share": attributed / busy if busy else 0.0,
    "wall_ms": wall_s / steps * 1e3 if wall_s is not None else None,
    "ops": rows,
  }


def profile(
  run: Callable[[], None],
  steps: int,
  hlo_text: str,
  module: str | None = None,
  op_bytes: dict[str, int] | None = None,
) -> dict:
  """Traces ``steps`` calls of ``run`` and attributes their device time (see :func:`attribute`).

  ``hlo_text`` is the compiled program's ``as_text()``; ``module`` its module name (read from
  the text's ``HloModule`` line when not given).
  """
  from benchmarks import hlo  # pylint: disable=import-outside-toplevel

  if module is None:
    match = re.match(r"HloModule ([\w.\-]+)", hlo_text)
    module = match.group(1) if match else None
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      start = time.perf_counter()
      for _ in range(steps):
        run()
      wall_s = time.perf_counter() - start
    kind, events = device_events(load(directory))
  report = attribute(
    events,
    steps,
    instructions=hlo.instruction_names_from_text(hlo_text),
    module=module,
    op_bytes=op_bytes,
    wall_s=wall_s,
  )
  report["kind"] = kind
  report["module"] = module
  return report


def format_report(name: str, report: dict, top: int = 12) -> str:
  """The report as a few lines of text: the totals, then the ``top`` ops."""
  wall = report.get("wall_ms")
  ops = sum(row["op"] is not None for row in report["ops"])
  lines = [
    f"### profile {name}: {report['steps']} steps, device busy {report['device_ms']:.3f} "
    f"ms/step" + (f" of {wall:.3f} ms/step wall" if wall else "") + "; "
    f"{report['attributed_share']:.1%} of the busy time in {ops} HLO ops of "
    f"{report.get('module') or 'the program'} ({report.get('kind', '?')} events)"
  ]
  lines.append("   ms/step   share  calls  GB/s    HLO op  [kernels]")
  for row in report["ops"][:top]:
    bandwidth = f"{row['gb_per_s']:6.0f}" if "gb_per_s" in row else "      "
    label = row["op"] if row["op"] is not None else "(unattributed)"
    lines.append(
      f"  {row['ms']:8.3f}  {row['share']:6.1%}  {row['calls']:5.1f} {bandwidth}  {label}  "
      f"[{', '.join(name[:60] for name in row['kernels'])}]"
    )
  return "\n".join(lines)
