"""Smoke tests of the examples on tiny budgets: they run, write their outputs, and make sense."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import common
import ood_detection
import regression_1d
import sweep_classifier


def _check_classification_metrics(metrics: dict) -> None:
  assert 0.0 <= metrics["accuracy"] <= 1.0
  assert 0.0 < metrics["nll"] < 10.0 and math.isfinite(metrics["nll"])
  assert 0.0 <= metrics["ece"] <= 1.0
  assert 0.0 <= metrics["brier"] <= 2.0


def test_main_job_command_line(tmp_path):
  repo = os.path.dirname(EXAMPLES)
  command = [
    sys.executable,
    os.path.join(EXAMPLES, "train_classifier.py"),
    "--epochs",
    "8",
    "--hidden",
    "32",
    "--samples",
    "4",
    "--seeds",
    "0",
    "1",
    "--out",
    str(tmp_path),
  ]
  environment = {**os.environ, "PYTHONPATH": repo}
  run = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
  for method in ("SGD", "AdamW", "IVON (mean)", "IVON (Bayes, 4 samples)"):
    assert f"| {method} |" in run.stdout
  assert " ± " in run.stdout  # two seeds: mean ± std
  assert os.path.getsize(tmp_path / "reliability_digits.png") > 10_000
  with open(tmp_path / "results_digits.json") as file:
    table = json.load(file)["metrics"]
  assert len(table) == 4
  for method, metrics in table.items():
    assert all(len(values) == 2 for values in metrics.values())
    for seed in range(2):
      _check_classification_metrics({name: values[seed] for name, values in metrics.items()})
      # Eight epochs on digits already beat chance (0.1) by far.
      assert metrics["accuracy"][seed] > 0.5, method


def test_mnist1d_is_generated_without_downloading(monkeypatch, tmp_path):
  import mnist1d.data

  def no_download(*args, **kwargs):
    raise AssertionError("mnist1d tried to download")

  monkeypatch.setattr(mnist1d.data.requests, "get", no_download)
  monkeypatch.chdir(tmp_path)
  data = common.load_mnist1d(num_samples=200)
  assert data.x_train.shape == (160, 40) and data.x_test.shape == (40, 40)
  assert set(np.unique(data.y_train)) <= set(range(10))
  assert not os.listdir(tmp_path)  # nothing cached to disk either


def test_regression_band_widens_in_the_gap_and_outside(tmp_path):
  # A short run needs a faster Hessian decay (beta2) for the posterior to adapt.
  summary = regression_1d.main(
    [
      "--epochs",
      "30",
      "--num-points",
      "500",
      "--hidden",
      "32",
      "32",
      "--samples",
      "32",
      "--beta2",
      "0.99",
      "--no-progress",
      "--out",
      str(tmp_path),
    ]
  )
  assert os.path.getsize(summary["plot"]) > 10_000
  on_data = summary["data"]["std"]
  assert summary["gap"]["std"] > 1.25 * on_data
  assert summary["outside"]["std"] > 1.25 * on_data
  assert summary["gap"]["epistemic_std"] > summary["data"]["epistemic_std"]
  assert 0.01 < summary["noise_std"] < 0.5


def test_ood_detection_reports_aurocs():
  results = ood_detection.main(
    ["--epochs", "10", "--hidden", "32", "--samples", "4", "--no-progress"]
  )
  assert set(results) == {"SGD", "AdamW", "IVON (mean)", "IVON (Bayes, 4 samples)"}
  for aurocs in results.values():
    assert set(aurocs) == {"uniform noise", "shuffled pixels"}
    assert all(0.0 <= value <= 1.0 for value in aurocs.values())
  # Trained for a few epochs, IVON is already less sure on noise than on digits.
  assert all(value > 0.6 for value in results["IVON (Bayes, 4 samples)"].values())


def test_sweep_writes_a_table_and_picks_a_winner_per_optimizer(tmp_path, monkeypatch):
  monkeypatch.setattr(
    sweep_classifier,
    "GRIDS",
    {
      "sgd": ("sgd", {"learning_rate": [0.1, 0.3], "weight_decay": [1e-3]}),
      "ivon-2mc": ("ivon", {"learning_rate": [0.5], "weight_decay": [1e-3], "train_samples": [2]}),
    },
  )
  best = sweep_classifier.main(
    [
      "--dataset",
      "digits",
      "--epochs",
      "2",
      "--hidden",
      "16",
      "--samples",
      "2",
      "--out",
      str(tmp_path),
    ]
  )
  assert set(best) == {"sgd", "ivon-2mc"}
  for row in best.values():
    _check_classification_metrics(row)
  assert "2 samples/step" in best["ivon-2mc"]["config"]
  table = (tmp_path / "sweep_digits.md").read_text()
  assert table.count("**(chosen)**") == 2
  assert len(table.strip().splitlines()) == 2 + 3


def test_optimizer_config_rejects_unknown_names():
  with pytest.raises(ValueError, match="optimizer"):
    common.OptimizerConfig("adam", learning_rate=1e-3, weight_decay=0.0)
