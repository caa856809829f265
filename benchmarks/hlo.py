"""Reading XLA's optimized HLO: the kernels a compiled program runs, their bytes and their sources.

``compiled.as_text()`` of a ``jax.jit(f).lower(...).compile()`` is the program after XLA's
fusion passes. Its entry computation is a list of top-level instructions, most of them
fusions, each one kernel that reads its operands once and writes its result once. This module
parses that text into :class:`Op` records: bytes read and written (from the operand and result
shapes), the opcodes inside each fusion, and the Python source lines they came from (the
``stack_frame_id`` of their metadata, resolved through the module's ``StackFrames`` table).

Instructions inside ``call``, ``while`` and ``conditional`` bodies (XLA:CPU's small calls,
XLA:GPU's command buffers) are flattened into the list, so every kernel is counted.
"""

import collections
import dataclasses
import math
import re
from pathlib import Path

# Instructions that launch no kernel and move no bytes of their own.
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}
# Instructions whose work lies in the computations they call.
_CALLERS = {"call", "while", "conditional", "async-start", "async-done"}

_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_ITEMSIZE = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


def shape_bytes(text: str) -> int:
  """Bytes of the arrays in an HLO type, e.g. ``(f32[4,4]{1,0}, s32[])`` is 68."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype in _ITEMSIZE:
      size = _ITEMSIZE[dtype]
    elif dtype.startswith("f8"):
      size = 1
    else:
      size = max(1, int(dtype[1:]) // 8)
    total += size * math.prod(int(d) for d in dims.split(",") if d)
  return total


@dataclasses.dataclass
class Instruction:
  """One parsed HLO instruction."""

  name: str
  type: str
  opcode: str
  operands: list[str]
  attributes: str
  arguments: str = ""  # the text between the opcode's parentheses

  def called(self) -> list[str]:
    """Names of the computations this instruction calls (fusion bodies, call targets, ...)."""
    names = []
    for key in ("calls", "to_apply", "body", "condition"):
      names += re.findall(rf"\b{key}=%([\w.\-]+)", self.attributes)
    for group in re.findall(r"branch_computations=\{([^}]*)\}", self.attributes):
      names += re.findall(r"%([\w.\-]+)", group)
    return names

  def stack_frame(self) -> int | None:
    match = re.search(r"stack_frame_id=(\d+)", self.attributes)
    return int(match.group(1)) if match else None

  def op_name(self) -> str:
    match = re.search(r'op_name="((?:[^"\\]|\\.)*)"', self.attributes)
    return match.group(1) if match else ""

  def source(self) -> tuple[str, int] | None:
    """``(file, line)`` written directly into the metadata (older XLA), if any."""
    match = re.search(r'source_file="([^"]*)" source_line=(\d+)', self.attributes)
    return (match.group(1), int(match.group(2))) if match else None


def _matching(text: str, start: int) -> int:
  """Index just past the bracket that closes the one at ``text[start]``."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  stack = []
  in_string = False
  for index in range(start, len(text)):
    char = text[index]
    if in_string:
      if char == "\\":
        continue
      if char == '"' and text[index - 1] != "\\":
        in_string = False
      continue
    if char == '"':
      in_string = True
    elif char in pairs:
      stack.append(pairs[char])
    elif stack and char == stack[-1]:
      stack.pop()
      if not stack:
        return index + 1
  return len(text)


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+)\s*=\s*(.*)$")


def parse_instruction(line: str) -> Instruction | None:
  """One instruction line of HLO text, or None for anything else."""
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  name, rest = match.groups()
  if rest.startswith("("):
    end = _matching(rest, 0)
  else:
    end = rest.find(" ")
  type_text, rest = rest[:end], rest[end:].lstrip()
  opcode_match = re.match(r"([\w\-]+)\(", rest)
  if not opcode_match:
    return None
  opcode = opcode_match.group(1)
  close = _matching(rest, opcode_match.end() - 1)
  arguments = rest[opcode_match.end() : close - 1]
  operands = re.findall(r"%([\w.\-]+)", arguments)
  return Instruction(name, type_text, opcode, operands, rest[close:], arguments)


@dataclasses.dataclass
class Module:
  """The computations of one HLO module and its table of source locations."""

  computations: dict[str, list[Instruction]]
  entry: str
  frames: dict[int, tuple[str, int, str]]  # stack frame id -> (file, line, function)

  def frame(self, instruction: Instruction) -> tuple[str, int, str] | None:
    frame_id = instruction.stack_frame()
    if frame_id is not None and frame_id in self.frames:
      return self.frames[frame_id]
    source = instruction.source()
    return (source[0], source[1], "") if source else None


def _table(lines: list[str], start: int) -> tuple[dict[int, str], int]:
  """The ``id value`` lines of a table starting at ``lines[start]``, and the index after it."""
  rows = {}
  index = start
  while index < len(lines) and lines[index].strip():
    head, _, value = lines[index].strip().partition(" ")
    if head.isdigit():
      rows[int(head)] = value
    index += 1
  return rows, index


def parse_module(text: str) -> Module:
  """Parses the HLO text of a compiled program (``compiled.as_text()``)."""
  lines = text.splitlines()
  tables = {}
  computations: dict[str, list[Instruction]] = {}
  entry = ""
  current = None
  index = 0
  while index < len(lines):
    line = lines[index]
    stripped = line.strip()
    if stripped in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      tables[stripped], index = _table(lines, index + 1)
      continue
    if stripped.endswith("{") and (stripped.startswith("%") or stripped.startswith("ENTRY")):
      name = re.match(r"(?:ENTRY\s+)?%([^\s(]+)", stripped).group(1)
      if stripped.startswith("ENTRY"):
        entry = name
      current = computations.setdefault(name, [])
    elif stripped == "}":
      current = None
    elif current is not None:
      instruction = parse_instruction(line)
      if instruction:
        current.append(instruction)
    index += 1
  return Module(computations, entry, _frames(tables))


def _frames(tables: dict) -> dict[int, tuple[str, int, str]]:
  files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
  functions = {k: v.strip('"') for k, v in tables.get("FunctionNames", {}).items()}
  locations = {}
  for key, value in tables.get("FileLocations", {}).items():
    fields = dict(re.findall(r"(\w+)=(\d+)", value))
    locations[key] = (
      files.get(int(fields.get("file_name_id", 0)), "?"),
      int(fields.get("line", 0)),
      functions.get(int(fields.get("function_name_id", 0)), ""),
    )
  frames = {}
  for key, value in tables.get("StackFrames", {}).items():
    fields = dict(re.findall(r"(\w+)=(\d+)", value))
    location = locations.get(int(fields.get("file_location_id", 0)))
    if location:
      frames[key] = location
  return frames


@dataclasses.dataclass
class Op:
  """One kernel of a compiled program: a top-level instruction that does work."""

  name: str
  opcode: str
  bytes_read: int
  bytes_written: int
  op_name: str  # the JAX primitive's name path from the metadata
  inner: collections.Counter  # opcodes inside a fusion (the instruction itself otherwise)
  sources: list[str]  # "file:line" of the instructions inside, in order of first appearance

  @property
  def bytes(self) -> int:
    return self.bytes_read + self.bytes_written


def _short(path: str, root: str | None) -> str:
  if root and path.startswith(root):
    return path[len(root) :].lstrip("/")
  parts = Path(path).parts
  for anchor in ("ivon_optax", "optax", "benchmarks", "flax", "jax"):
    if anchor in parts:
      return "/".join(parts[len(parts) - parts[::-1].index(anchor) - 1 :])
  return Path(path).name


def _inner(module: Module, computation: str, seen: set) -> list[Instruction]:
  """The instructions of ``computation`` and of the computations it calls, once each."""
  if computation in seen:
    return []
  seen.add(computation)
  found = []
  for instruction in module.computations.get(computation, []):
    found.append(instruction)
    for called in instruction.called():
      found += _inner(module, called, seen)
  return found


_SLICES = {"slice", "dynamic-slice", "gather"}
_VIEWS = {"bitcast", "reshape"}


def _fusion_read_bytes(module: Module, fusion: Instruction, shapes: dict) -> int:
  """Bytes a fusion reads: each operand once, or only the part its slices read.

  Like XLA's cost analysis, an operand that the fused computation only slices (through
  bitcasts and reshapes) counts the bytes of the slices, not of the whole array.
  """
  body = module.computations.get(fusion.called()[0], []) if fusion.called() else []
  users: dict[str, list[Instruction]] = collections.defaultdict(list)
  for instruction in body:
    for operand in instruction.operands:
      users[operand].append(instruction)

  def sliced_bytes(name: str, depth: int = 0) -> int | None:
    found = users.get(name, [])
    if not found or depth > 4:
      return None
    total = 0
    for user in found:
      if user.opcode in _SLICES:
        total += shape_bytes(user.type)
      elif user.opcode in _VIEWS:
        inner = sliced_bytes(user.name, depth + 1)
        if inner is None:
          return None
        total += inner
      else:
        return None
    return total

  parameters = {
    int(instruction.arguments): instruction.name
    for instruction in body
    if instruction.opcode == "parameter" and instruction.arguments.strip().isdigit()
  }
  total = 0
  for index, operand in enumerate(fusion.operands):
    size = shapes.get(operand, 0)
    sliced = sliced_bytes(parameters[index]) if index in parameters else None
    total += size if sliced is None else min(sliced, size)
  return total


def kernels(text: str, source_root: str | None = None) -> list[Op]:
  """The kernels of a compiled program, in schedule order, from its HLO text.

  Instructions inside ``call``/``while``/``conditional`` bodies are listed in place of the
  caller (a ``while`` body once). Each kernel reads every operand once and writes its result
  once; ``source_root`` is stripped from the source paths.
  """
  module = parse_module(text)
  ops: list[Op] = []

  def visit(computation: str, stack: tuple) -> None:
    shapes = {}
    for instruction in module.computations.get(computation, []):
      shapes[instruction.name] = shape_bytes(instruction.type)
      if instruction.opcode in _FREE:
        continue
      if instruction.opcode in _CALLERS:
        for called in instruction.called():
          if called not in stack:
            visit(called, stack + (called,))
        continue
      inside = [instruction]
      read = sum(shapes.get(operand, 0) for operand in instruction.operands)
      if instruction.opcode == "fusion":
        inside = [i for c in instruction.called() for i in _inner(module, c, set())]
        read = _fusion_read_bytes(module, instruction, shapes)
      sources = []
      for inner in inside:
        frame = module.frame(inner)
        if frame:
          label = f"{_short(frame[0], source_root)}:{frame[1]}"
          if label not in sources:
            sources.append(label)
      ops.append(
        Op(
          name=instruction.name,
          opcode=instruction.opcode,
          bytes_read=read,
          bytes_written=shapes[instruction.name],
          op_name=instruction.op_name(),
          inner=collections.Counter(
            i.opcode for i in inside if i.opcode not in ("parameter", "constant")
          ),
          sources=sources,
        )
      )

  visit(module.entry, (module.entry,))
  return ops


def traffic(compiled) -> dict:
  """Bytes the compiled program's kernels read and write, from the optimized HLO.

  Returns ``{"bytes": total, "passes": number of kernels that move at least 1 MB}``.
  """
  ops = kernels(compiled.as_text())
  return {
    "bytes": sum(op.bytes for op in ops),
    "passes": sum(op.bytes >= 1 << 20 for op in ops),
  }


def instruction_names(compiled) -> set:
  """Names of every instruction of a compiled program, all computations included."""
  return instruction_names_from_text(compiled.as_text())


def instruction_names_from_text(text: str) -> set:
  """Names of every instruction in the HLO ``text`` of a compiled program."""
  module = parse_module(text)
  return {i.name for instructions in module.computations.values() for i in instructions}
