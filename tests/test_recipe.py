"""The main job's IVON recipe is not at the edge of stability: it trains at twice its learning rate.

Runs ``examples/train_classifier.py`` (MNIST-1D, the recipe's MLP and epochs)
on half of the training set with every learning rate doubled. The subsample
is not much smaller: ess = N sets the weight noise, 1/sqrt(N (h + delta)).
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.study
def test_ivon_recipe_trains_at_twice_its_learning_rate(tmp_path):
  command = [
    sys.executable,
    str(ROOT / "examples" / "train_classifier.py"),
    *("--optimizers", "ivon", "--lr-scale", "2", "--num-train", "2000"),
    *("--seeds", "0", "1", "--samples", "4", "--no-progress", "--out", str(tmp_path)),
  ]
  # Compiling dominates this short run; LLVM's optimizations are not needed.
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / "results_mnist1d.json") as file:
    summary = json.load(file)
  assert all(math.isfinite(loss) for loss in summary["final_train_loss"]["ivon"])
  for method in ("IVON (mean)", "IVON (Bayes, 4)"):
    metrics = summary["metrics"][method]
    assert all(math.isfinite(value) for value in metrics["nll"])
    # Far above chance (0.1): training did not blow up.
    assert min(metrics["accuracy"]) > 0.3, method
