"""Smoke test of ``examples/lora_finetune.py``: tiny sizes, a few steps, sane JSON."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Compiling dominates this tiny run; LLVM's optimizations are not needed.
FAST_COMPILE = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
pytestmark = pytest.mark.slow


def test_lora_finetune_writes_scores_for_both_optimizers(tmp_path):
  command = [
    sys.executable,
    str(ROOT / "examples" / "lora_finetune.py"),
    *("--dim", "16", "--heads", "2", "--depth", "1", "--rank", "2"),
    *("--pretrain-epochs", "1", "--epochs", "2", "--batch-size", "16"),
    *("--num-train", "32", "--num-val", "32", "--num-test", "64"),
    *("--seeds", "0", "1", "--tiny-grid", "--out", str(tmp_path)),
  ]
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_COMPILE}
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "| IVON-LoRA (16) |" in result.stdout

  with open(tmp_path / "lora_finetune.json") as file:
    output = json.load(file)
  assert list(output["metrics"]) == [
    "AdamW-LoRA",
    "IVON-LoRA (mean)",
    *(f"IVON-LoRA ({k})" for k in (1, 2, 4, 8, 16)),
  ]
  for method, scores in output["metrics"].items():
    assert sorted(scores) == ["accuracy", "ece", "nll"], method
    for name, values in scores.items():
      assert len(values) == 2 and all(math.isfinite(v) for v in values), (method, name)
    assert all(0.0 <= v <= 1.0 for v in scores["accuracy"] + scores["ece"]), method
    assert all(v > 0.0 for v in scores["nll"]), method
  assert set(output["chosen"]) == {"AdamW-LoRA", "IVON-LoRA"}
  assert output["grids"]["IVON-LoRA"]["rescale_lr"] is False
  for grid in output["searched"].values():
    assert all(math.isfinite(point["val_nll"]) or point["val_nll"] == math.inf for point in grid)
  for task in ("source", "target"):
    assert 0.0 <= output["base"][task]["accuracy"] <= 1.0
  assert (tmp_path / "lora_finetune.png").stat().st_size > 0
  assert (tmp_path / "lora_pretrained").is_dir()
