"""Smoke tests of the uncertainty examples on tiny budgets: each runs as a script and writes JSON.

The full runs and their numbers are in docs/uncertainty.md; here the budgets
are tiny, so the assertions are on structure, ranges and what holds even
after a few epochs.
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


def check_scores(scores: dict, num_seeds: int) -> None:
  assert set(scores) == {"accuracy", "nll", "ece", "brier"}
  for name, values in scores.items():
    assert len(values) == num_seeds and all(math.isfinite(v) for v in values), name
  assert all(0.0 <= v <= 1.0 for v in scores["accuracy"] + scores["ece"])
  assert all(0.0 < v < 10.0 for v in scores["nll"])


def test_ensembles_example(tmp_path):
  stdout = run_example(
    "ensembles",
    tmp_path,
    *("--epochs", "3", "--hidden", "16", "--seeds", "0", "1", "--members", "2"),
    *("--samples", "4", "--num-train", "400", "--no-progress"),
  )
  assert "Posterior scale tau fitted on the validation split" in stdout
  results = load_json(tmp_path, "ensembles.json")["results"]
  assert list(results) == [
    "SGD",
    "AdamW",
    "Deep ensemble (AdamW, K=2)",
    "IVON (mean)",
    "IVON (Bayes, 4)",
    "MultiIVON (K=2, 2 each)",
  ]
  for method, r in results.items():
    check_scores(r["before"], 2)
    check_scores(r["after"], 2)
    # Temperature scaling keeps every prediction's most probable class.
    assert r["after"]["accuracy"] == r["before"]["accuracy"], method
    assert all(0.01 <= t <= 100.0 for t in r["temperature"])
    for key in ("ood_before", "ood_after"):
      assert set(r[key]) == {"noise", "shuffled"}
      assert all(0.0 <= v <= 1.0 for values in r[key].values() for v in values)
  for method in ("IVON (Bayes, 4)", "MultiIVON (K=2, 2 each)"):
    check_scores(results[method]["after_tau"], 2)
    assert all(0.12 <= tau <= 2.01 for tau in results[method]["posterior_scale"])


def test_ensembles_timing(tmp_path):
  run_example("ensembles", tmp_path, "--timing", "--hidden", "16", "--members", "2")
  cost = load_json(tmp_path, "ensemble_step_cost.json")
  assert cost["members"] == 2
  assert cost["seconds_vmapped"] > 0 and cost["seconds_separate"] > 0
  if cost["bytes_vmapped"] is not None:
    assert cost["bytes_vmapped"] > cost["bytes_one_member"] > 0


def test_regression_ensembles_example(tmp_path):
  run_example(
    "regression_ensembles",
    tmp_path,
    *("--epochs", "5", "--num-points", "200", "--hidden", "16", "16", "--samples", "4"),
    *("--seeds", "0", "1", "--members", "2", "--no-progress"),
  )
  summary = load_json(tmp_path, "regression_ensembles.json")
  assert os.path.getsize(summary["plot"]) > 10_000
  results = summary["results"]
  assert list(results) == ["IVON", "MultiIVON (K=2)", "Deep ensemble (AdamW, K=2)"]
  for by_region in results.values():
    assert set(by_region) == {"data", "gap", "outside"}
    for r in by_region.values():
      assert len(r["coverage"]) == 2 and all(0.0 <= c <= 1.0 for c in r["coverage"])
      assert all(s > 0 for s in r["std"])
  # The mixture of K posteriors is wider than its first member alone (same samples).
  multi, single = results["MultiIVON (K=2)"], results["IVON"]
  assert np.mean(multi["gap"]["std"]) > np.mean(single["gap"]["std"])


def test_flat_minima_example(tmp_path):
  run_example("flat_minima", tmp_path, "--steps", "300", "--grid", "6")
  summary = load_json(tmp_path, "flat_minima.json")
  assert os.path.getsize(summary["plot"]) > 10_000
  assert summary["num_starts"] == 36
  frequencies = summary["basin_frequency"]
  assert set(frequencies) == {"SGD", "Adam", "IVON"}
  for f in frequencies.values():
    assert set(f) == {"sharp", "flat", "neither"} and math.isclose(sum(f.values()), 1.0)
  # The sharp minimum is the deeper one, yet IVON's samples do not settle in it.
  assert summary["loss_at_minimum"]["sharp"] < summary["loss_at_minimum"]["flat"]
  assert frequencies["IVON"]["sharp"] < frequencies["SGD"]["sharp"]
