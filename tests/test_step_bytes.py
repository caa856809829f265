"""The optimizer step's memory traffic (``benchmarks/step_bytes.py``) and the HLO reader it uses.

Bytes accessed are a property of the compiled program, not a timing: they hold on a loaded
machine and come out the same every time the same program is compiled.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import optax
import pytest

from benchmarks import hlo
from benchmarks import step_bytes

ROOT = Path(__file__).resolve().parents[1]
TREE = step_bytes.make_tree("tiny")


@pytest.fixture(scope="module")
def rows():
  return step_bytes.tree_rows(TREE)


def _by_program(rows):
  return {row["program"]: row for row in rows}


@pytest.mark.study
def test_accounting_is_deterministic(rows):
  jax.clear_caches()
  again = step_bytes.tree_rows(TREE)
  assert [row["bytes_accessed"] for row in again] == [row["bytes_accessed"] for row in rows]
  assert [row["kernels"] for row in again] == [row["kernels"] for row in rows]


def test_kernels_account_for_xla_bytes(rows):
  # The per-kernel reading of the HLO adds up to XLA's own cost analysis.
  for row in rows:
    assert row["hlo_bytes"] == pytest.approx(row["bytes_accessed"], rel=0.01), row["program"]


def test_adamw_moves_at_least_its_minimum(rows):
  adamw = _by_program(rows)["adamw"]
  # Reading p, g, mu, nu and writing p, mu, nu cannot take fewer than 7 passes; XLA:CPU makes
  # 10 (one kernel per output, each re-reading what it needs).
  assert 7.0 - 1e-6 <= adamw["passes"] <= 10.0 + step_bytes.HEADROOM


def test_ivon_moves_at_least_its_minimum(rows):
  for row in rows:
    assert row["passes"] >= row["minimum_passes"] - 1e-6, row["program"]


def test_an_added_pass_is_counted():
  # Clipping by the global norm reduces over every gradient before the update: one more pass.
  def step(tx):
    def fn(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    state = jax.eval_shape(tx.init, TREE.params)
    return step_bytes.Program("adamw", fn, (TREE.params, state, TREE.params), (0, 1))

  adamw = optax.adamw(**step_bytes.ADAMW)
  clipped = optax.chain(optax.clip_by_global_norm(1.0), adamw)
  plain = step_bytes.account(step(adamw)).bytes_accessed / TREE.pass_bytes
  more = step_bytes.account(step(clipped)).bytes_accessed / TREE.pass_bytes
  assert more - plain >= 1.0 - 1e-3


def test_budgets_follow_the_minimum():
  # In float32 the whole step may make 1.5 times the minimum 5 passes beyond AdamW's.
  overhead = 3.0
  step_budget = step_bytes.budget_passes("ivon.step", 1.0, overhead)
  adamw = step_bytes.minimum_passes("adamw") + overhead
  assert step_budget - adamw == pytest.approx(1.5 * step_bytes.minimum_extra_passes(1.0))
  assert step_bytes.minimum_extra_passes(0.5) == pytest.approx(3.0)
  assert step_bytes.budget_passes("adamw", 1.0, overhead) is None


def test_ivon_is_within_its_pass_budget(rows):
  assert step_bytes.violations(rows) == []


def test_check_exit_status_follows_the_budget(tmp_path):
  output = tmp_path / "bytes.json"
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "step_bytes.py"),
      "--tree",
      "tiny",
      "--check",
      "--details",
      "--json",
      str(output),
    ],
    capture_output=True,
    text=True,
    check=False,
    timeout=300,
    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
  )
  report = json.loads(output.read_text())
  assert result.returncode == (1 if report["violations"] else 0), result.stderr[-2000:]
  programs = {row["program"] for row in report["results"]}
  assert programs == {"adamw", "ivon.sample", "ivon.update", "ivon.step"}
  assert "| tiny | ivon.step |" in result.stdout
  assert "#### tiny: ivon.update" in result.stdout


# --- The HLO reader ---------------------------------------------------------------------------


def test_shape_bytes():
  assert hlo.shape_bytes("f32[4,4]{1,0}") == 64
  assert hlo.shape_bytes("(f32[4,4]{1,0}, s32[], /*index=2*/bf16[8])") == 64 + 4 + 16
  assert hlo.shape_bytes("pred[3]") == 3


def test_parse_instruction_with_a_tuple_result():
  line = (
    "  ROOT %tuple.1 = (f32[2,2]{1,0}, s32[]) tuple(%a.1, %b), "
    'metadata={op_name="jit(f)/x" stack_frame_id=3}'
  )
  instruction = hlo.parse_instruction(line)
  assert instruction.name == "tuple.1"
  assert instruction.opcode == "tuple"
  assert instruction.operands == ["a.1", "b"]
  assert instruction.stack_frame() == 3
  assert instruction.op_name() == "jit(f)/x"


def test_kernels_of_a_compiled_program():
  def fn(x, y):
    return jax.numpy.tanh(x) * y + 1.0

  x = jax.ShapeDtypeStruct((256, 256), jax.numpy.float32)
  compiled = jax.jit(fn).lower(x, x).compile()
  ops = hlo.kernels(compiled.as_text())
  assert sum(op.bytes for op in ops) == 3 * 256 * 256 * 4
  assert any(op.opcode == "fusion" and op.inner["tanh"] == 1 for op in ops)
  assert all(source.startswith("test_step_bytes.py:") for op in ops for source in op.sources)
  assert {op.name for op in ops} <= hlo.instruction_names(compiled)
