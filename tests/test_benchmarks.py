"""Smoke tests for the benchmark scripts: they run on tiny configurations and report sane fields.

They assert nothing about timings, only that every field is there and plausible.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, tmp_path: Path) -> dict:
  output = tmp_path / "results.json"
  result = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(output)],
    capture_output=True,
    text=True,
    check=False,
    cwd=tmp_path,
    timeout=300,
    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(output.read_text())
  report["stdout"] = result.stdout
  report["path"] = output
  return report


def _positive_times(stats: dict, steps: int) -> None:
  assert stats["steps"] == steps
  for field in ("median", "min", "max", "mean", "p10", "p90"):
    assert math.isfinite(stats[field]) and stats[field] > 0, field
  assert stats["min"] <= stats["median"] <= stats["max"]


@pytest.mark.study
def test_step_time_runs_and_reports_every_field(tmp_path):
  report = _run(
    "step_time.py",
    "--model",
    "mlp",
    "--tiny",
    "--steps",
    "3",
    "--warmup",
    "1",
    "--samples",
    "2",
    "--extra-samplers",
    "--profile-steps",
    "2",
    tmp_path=tmp_path,
  )
  env = report["environment"]
  for field in ("date", "command", "platform", "device", "cpu", "versions"):
    assert env[field], field
  rows = {(row["backend"], row["optimizer"]): row for row in report["results"]}
  expected = {
    ("jax", "adamw"),
    ("jax", "sgd"),
    ("jax", "ivon"),
    ("jax", "ivon x2 parallel"),
    ("jax", "ivon x2 sequential"),
  }
  if report["settings"]["torch"]:
    expected |= {
      ("torch", "adamw"),
      ("torch", "sgd"),
      ("torch", "ivon-opt"),
      ("torch", "ivon-opt x2 sequential"),
    }
    assert "PyTorch ivon-opt" in report["stdout"]
  assert set(rows) == expected
  for (backend, optimizer), row in rows.items():
    _positive_times(row["step_ms"], 3)
    assert row["ratio_to_adamw"] > 0 and row["state_bytes"] > 0
    assert row["samples"] == (2 if "x2" in optimizer else 1)
    if backend == "jax":
      assert row["compile_s"] > 0 and row["planned_memory_bytes"] > 0
      assert row["hlo_traffic_bytes"] > 0
  assert rows[("jax", "adamw")]["ratio_to_adamw"] == 1.0
  # IVON keeps momentum and Hessian, like AdamW's two moments; SGD keeps one buffer.
  assert rows[("jax", "ivon")]["state_bytes"] >= rows[("jax", "adamw")]["state_bytes"] - 64
  assert rows[("jax", "sgd")]["state_bytes"] < rows[("jax", "adamw")]["state_bytes"]
  # CPU keeps no device memory statistics: the peak is reported as missing, not as 0.
  assert rows[("jax", "ivon")]["peak_memory_bytes"] is None
  assert "| jax | ivon |" in report["stdout"]
  # The profile attributes the device time (on CPU: XLA's ops) to the program's HLO ops.
  profile = report["profiles"]["mlp:jax/ivon"]
  assert profile["attributed_share"] >= 0.9 and profile["device_ms"] > 0
  assert profile["module"].startswith("jit_") and profile["ops"][0]["op"]
  assert "### profile mlp:jax/ivon" in report["stdout"]
  # Two repetitions of the same run have no spread.
  summary = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "summarize.py"),
      str(report["path"]),
      str(report["path"]),
    ],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
  ).stdout
  median = rows[("jax", "ivon")]["step_ms"]["median"]
  assert f"| mlp | jax | ivon | 2 | {median:.3f} [{median:.3f}, {median:.3f}]" in summary


@pytest.mark.study
def test_optimizer_step_runs_and_reports_bandwidth(tmp_path):
  report = _run(
    "optimizer_step.py",
    "--scale",
    "64",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--generator-key-impls",
    "threefry2x32",
    tmp_path=tmp_path,
  )
  assert report["copy_bandwidth_bytes_per_s"] > 0
  rows = {row["case"]: row for row in report["results"]}
  for case in (
    "copy",
    "adamw",
    "ivon",
    "ivon[threefry]",
    "ivon[given eps]",
    "counter_normal [threefry2x32]",
    "jax.random.normal [threefry2x32]",
  ):
    row = rows[case]
    _positive_times(row["step_ms"], 2)
    assert row["gb_per_s"] > 0 and row["xla_bytes"] > 0
  assert rows["adamw"]["buffers"] == 7 and rows["ivon"]["buffers"] == 12
  assert rows["counter_normal [threefry2x32]"]["samples_per_s"] > 0
  assert set(report["analysis"]) >= {"ivon_floor_fraction", "rng_ms"}


@pytest.mark.parametrize(
  "args, message",
  [
    (["--model", "vgg"], "invalid choice"),
    (["--samples", "0"], "--samples must be >= 1"),
  ],
)
def test_step_time_rejects_bad_arguments(args, message):
  result = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), *args],
    capture_output=True,
    text=True,
    check=False,
    timeout=120,
    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 2 and message in result.stderr


@pytest.mark.study
def test_lm_step_time_reports_both_optimizers_and_their_ratio(tmp_path):
  from benchmarks import lm_step_time

  args = ["--width", "16", "--depth", "1", "--heads", "2", "--context", "8", "--batch-size", "2"]
  output = tmp_path / "lm.json"
  report = lm_step_time.main([*args, "--steps", "3", "--warmup", "1", "--json", str(output)])
  assert json.loads(output.read_text())["parameters"] == report["parameters"] == 7536
  for name in ("adamw", "ivon"):
    _positive_times(report["ms"][name], 3)
  assert (
    report["ivon_over_adamw"] == report["ms"]["ivon"]["median"] / report["ms"]["adamw"]["median"]
  )
