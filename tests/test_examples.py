"""Smoke tests of the examples on tiny budgets: each runs as a script and writes sane JSON.

The examples are scripts (``python examples/NAME.py``), so the tests run them
as such, in a subprocess, with their outputs under ``tmp_path``.
``data_parallel.py`` and ``checkpoint_resume.py`` are run by
``test_distributed.py`` and ``test_checkpoint.py``.
"""

import math
import os
import pathlib

import numpy as np
import pytest
from helpers import load_json
from helpers import run_example

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def check_classification(metrics: dict, num_seeds: int) -> None:
  for name, values in metrics.items():
    assert len(values) == num_seeds and all(math.isfinite(v) for v in values), name
  assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"] + metrics["ece"])
  assert all(0.0 < v < 10.0 for v in metrics["nll"])
  assert all(0.0 <= v <= 2.0 for v in metrics["brier"])


def test_main_job(tmp_path):
  stdout = run_example(
    "train_classifier",
    tmp_path,
    *("--dataset", "digits", "--epochs", "5", "--hidden", "32", "--samples", "4"),
    *("--seeds", "0", "1", "--no-progress"),
  )
  assert "Mean ± std over 2 seeds." in stdout
  assert "IVON (Bayes, 4) vs AdamW: accuracy " in stdout
  result = load_json(tmp_path, "results_digits.json")
  assert list(result["metrics"]) == ["SGD", "AdamW", "IVON (mean)", "IVON (Bayes, 4)"]
  for method, metrics in result["metrics"].items():
    check_classification(metrics, num_seeds=2)
    # Five epochs on digits already beat chance (0.1) by far.
    assert min(metrics["accuracy"]) > 0.5, method
  assert len(result["comparisons"]) == 4
  assert "IVON diagnostics (mean over seeds): hess_at_init" in stdout
  diagnostics = result["ivon_diagnostics"]
  assert diagnostics["step"] == [5 * (1437 // 128)] * 2  # 5 epochs of full batches of 128
  assert all(0.0 <= f <= 1.0 for f in diagnostics["hess_at_init"])
  assert all(s > 0 for s in diagnostics["std_q50"])
  assert os.path.getsize(result["reliability_diagram"]) > 10_000


def test_mnist1d_is_generated_without_downloading(monkeypatch, tmp_path):
  import mnist1d.data

  def no_download(*args, **kwargs):
    raise AssertionError("mnist1d tried to download")

  monkeypatch.setattr(mnist1d.data.requests, "get", no_download)
  monkeypatch.syspath_prepend(str(ROOT / "examples"))
  monkeypatch.chdir(tmp_path)
  import data

  dataset = data.mnist1d(num_train=120, num_val=40, num_test=50)
  assert dataset.train.inputs.shape == (120, 40) and dataset.val.inputs.shape == (40, 40)
  assert dataset.test.inputs.shape == (50, 40)
  assert set(np.unique(dataset.train.labels)) <= set(range(10))
  assert not os.listdir(tmp_path)  # nothing cached to disk either
  with pytest.raises(ValueError, match="training pool"):
    data.mnist1d(num_train=4000, num_val=1)
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.load("mnist")


def test_sweep_applies_the_stability_rule(tmp_path):
  run_example(
    "sweep_classifier",
    tmp_path,
    *("--dataset", "digits", "--optimizers", "sgd", "--epochs", "2", "--hidden", "8"),
    *("--seeds", "0", "1", "--num-val", "200", "--no-progress"),
  )
  result = load_json(tmp_path, "sweep_digits.json")
  rows = result["rows"]["sgd"]
  rates = sorted({row["config"]["learning_rate"] for row in rows})
  for row in rows:
    assert row["config"]["name"] == "sgd" and math.isfinite(row["nll_std"])
    # The grid's ends lack a neighbour, so they are never eligible.
    if row["config"]["learning_rate"] in (rates[0], rates[-1]):
      assert not row["eligible"]
  # Stage 2 adds the refinements around the stage-1 winner.
  assert len(rows) > 12 and any(row["config"]["batch_size"] == 32 for row in rows)
  assert result["chosen"]["sgd"] in [row["config"] for row in rows]
  assert "**(chosen)**" in (tmp_path / "sweep_digits.md").read_text()


def test_regression_band_widens_in_the_gap_and_outside(tmp_path):
  # A short run needs a faster Hessian decay (beta2) for the posterior to adapt.
  run_example(
    "regression_1d",
    tmp_path,
    *("--epochs", "30", "--num-points", "500", "--hidden", "32", "32", "--samples", "32"),
    *("--beta2", "0.99", "--seeds", "0", "--no-progress"),
  )
  summary = load_json(tmp_path, "regression_1d.json")
  assert os.path.getsize(summary["plot"]) > 10_000
  on_data = np.mean(summary["data"]["std"])
  assert np.mean(summary["gap"]["std"]) > 1.25 * on_data
  assert np.mean(summary["outside"]["std"]) > on_data
  assert np.mean(summary["gap"]["epistemic_std"]) > np.mean(summary["data"]["epistemic_std"])
  assert 0.01 < summary["noise_std"][0] < 0.5


def test_ood_detection_reports_aurocs(tmp_path):
  run_example(
    "ood_detection",
    tmp_path,
    *("--epochs", "10", "--hidden", "32", "--samples", "4", "--seeds", "0", "1", "--no-progress"),
  )
  aurocs = load_json(tmp_path, "ood_detection.json")["auroc"]
  assert set(aurocs) == {"SGD", "AdamW", "IVON (mean)", "IVON (Bayes, 4)"}
  for by_set in aurocs.values():
    assert set(by_set) == {"uniform noise", "shuffled pixels"}
    assert all(0.0 <= value <= 1.0 for values in by_set.values() for value in values)
  # Trained for a few epochs, IVON is already less sure on noise than on digits.
  assert all(np.mean(values) > 0.6 for values in aurocs["IVON (Bayes, 4)"].values())


def check_png(path):
  plt = pytest.importorskip("matplotlib.pyplot")
  image = plt.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
  assert image[..., :3].std() > 0.05  # not a blank canvas


def test_sensitivity_example(tmp_path):
  run_example(
    "sensitivity",
    tmp_path,
    *("--num-train", "120", "--epochs", "30", "--show", "4", "--mc-samples", "4"),
    *("--seeds", "0", "1"),
  )
  summary = load_json(tmp_path, "sensitivity.json")
  check_png(summary["grid"])
  assert len(summary["seeds"]) == 2
  for seed in summary["seeds"]:
    assert len(seed["top"]) == len(seed["bottom"]) == 4
    assert not set(seed["top"]) & set(seed["bottom"])
    quantiles = seed["score_quantiles"]
    assert all(math.isfinite(q) and q >= 0 for q in quantiles) and quantiles == sorted(quantiles)
    assert -1.0 <= seed["spearman_jacobian_vs_sampled"] <= 1.0


def test_loo_validation_example(tmp_path):
  run_example(
    "loo_validation",
    tmp_path,
    *("--num-train", "100", "--epochs", "4", "--pitfall-epochs", "1", "--seeds", "0", "1"),
  )
  summary = load_json(tmp_path, "loo_validation.json")
  check_png(summary["plot"])
  for seed in summary["seeds"]:
    assert 1 <= seed["picked_epoch"] <= 4 and 1 <= seed["best_epoch"] <= 4
    final = seed["final"]
    assert all(math.isfinite(value) for value in final.values())
    assert final["loo_nll"] > final["train_nll"] > 0
  assert [row["hess_init"] for row in summary["pitfall"]] == [0.01, 0.1, 1.0, 0.1]
  assert all(len(row["loo_nll"]) == 2 for row in summary["pitfall"])


def test_merging_example(tmp_path):
  # The full run (5 seeds, 333 + 100 epochs) takes about a minute; its claim,
  # that the uncertainty merge has a lower mean NLL than plain averaging and
  # task arithmetic, is reported in docs/results.md. Here: structure only.
  run_example(
    "merging",
    tmp_path,
    *("--seeds", "0", "1", "--base-epochs", "5", "--task-epochs", "2", "--scales", "1.0"),
  )
  summary = load_json(tmp_path, "merging.json")
  results = summary["results"]
  for name in ("average", "uncertainty (alpha=1)", "task arithmetic (alpha=1)"):
    assert name in results
  assert "AdamW: Fisher-weighted average" in results
  for scores in results.values():
    assert len(scores["nll"]) == 2 and all(np.isfinite(v) and v > 0 for v in scores["nll"])
    assert all(0.0 <= v <= 1.0 for v in scores["accuracy"])
  assert set(summary["wins"].values()) <= {0, 1, 2}
  assert "| uncertainty (alpha=1) |" in (tmp_path / "merging.md").read_text()
