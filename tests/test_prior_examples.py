"""Smoke tests of the prior examples on tiny budgets: they run, write their outputs, make sense."""

import json
import math
import os
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import continual  # noqa: E402
import finetune_prior  # noqa: E402


@pytest.mark.slow
def test_continual_learning_runs_and_reports_every_task(tmp_path):
  summary = continual.main(
    [
      *("--tasks", "2", "--seeds", "0", "1", "--epochs", "1", "--hidden", "16"),
      *("--eval-samples", "2", "--ivon-lrs", "0.1", "--adamw-lrs", "1e-2"),
      *("--out", str(tmp_path)),
    ]
  )
  assert os.path.getsize(tmp_path / "continual.png") > 10_000
  with open(tmp_path / "continual.json") as file:
    saved = json.load(file)
  assert saved["seeds"] == [0, 1]
  for method in continual.METHODS:
    accuracy, nll = (np.asarray(saved[method][metric]) for metric in ("accuracy", "nll"))
    assert accuracy.shape == nll.shape == (2, 2)  # (seeds, tasks)
    assert np.all((accuracy >= 0.0) & (accuracy <= 1.0))
    assert np.all(np.isfinite(nll)) and np.all(nll > 0.0)
    # One epoch of task 1 already beats chance (0.1) on task 1.
    per_task = np.asarray(saved[method]["per_task_accuracy"])
    assert np.all(per_task[:, 0, 0] > 0.15), method
  assert summary["ivon-vcl"]["learning_rate"] == 0.1


@pytest.mark.slow
def test_finetune_prior_runs_and_compares_the_priors(tmp_path):
  finetune_prior.main(
    [
      *("--seeds", "0", "1", "--shots", "50", "--val", "100", "--deltas", "0.01", "1.0"),
      *("--hidden", "16", "--pretrain-epochs", "1", "--finetune-steps", "20"),
      *("--out", str(tmp_path)),
    ]
  )
  assert os.path.getsize(tmp_path / "finetune_prior.png") > 10_000
  with open(tmp_path / "finetune_prior.json") as file:
    results = json.load(file)["results"]
  assert set(results) == {"pretrained only", *finetune_prior.VARIANTS}
  assert results["zero"]["delta"] in (0.01, 1.0)
  assert results["posterior"]["delta"] is None
  for result in results.values():
    for split in ("shifted_test", "original_test"):
      assert len(result[split]["accuracy"]) == 2
      assert all(0.0 <= a <= 1.0 for a in result[split]["accuracy"])
      assert all(math.isfinite(n) and n > 0.0 for n in result[split]["nll"])
