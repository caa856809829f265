"""Smoke tests of the variance examples with tiny budgets: they run and write sane outputs.

Marked slow (each compiles its own training loops); CI runs them.
"""

import math

import numpy as np
import pytest

from examples import loo_validation
from examples import merging
from examples import sensitivity

pytestmark = pytest.mark.slow


def check_png(path):
  plt = pytest.importorskip("matplotlib.pyplot")
  image = plt.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
  assert image[..., :3].std() > 0.05  # not a blank canvas


def test_sensitivity_example(tmp_path):
  out = tmp_path / "grid.png"
  summary = sensitivity.main(
    ["--num-train", "120", "--steps", "60", "--show", "4", "--mc-samples", "4", "--out", str(out)]
  )
  check_png(out)
  assert len(summary["top"]) == len(summary["bottom"]) == 4
  assert not set(summary["top"]) & set(summary["bottom"])
  quantiles = summary["score_quantiles"]
  assert all(math.isfinite(q) and q >= 0 for q in quantiles) and quantiles == sorted(quantiles)
  assert -1.0 <= summary["spearman_jacobian_vs_sampled"] <= 1.0


def test_loo_validation_example(tmp_path):
  out = tmp_path / "curves.png"
  summary = loo_validation.main(
    [
      "--num-train",
      "100",
      "--epochs",
      "4",
      "--steps-per-epoch",
      "3",
      "--pitfall-epochs",
      "1",
      "--out",
      str(out),
    ]
  )
  check_png(out)
  assert 1 <= summary["picked_epoch"] <= 4 and 1 <= summary["best_epoch"] <= 4
  final = summary["final"]
  assert all(math.isfinite(value) for value in final.values())
  assert final["loo_nll"] > final["train_nll"] > 0
  assert [row["hess_init"] for row in summary["pitfall"]] == [0.01, 0.1, 1.0, 0.1]


def test_merging_example(tmp_path):
  out = tmp_path / "table.md"
  summary = merging.main(
    [
      "--seeds",
      "0",
      "--base-steps",
      "20",
      "--task-steps",
      "20",
      "--scales",
      "1.0",
      "--out",
      str(out),
    ]
  )
  table = out.read_text()
  for row in (
    "| average |",
    "| uncertainty (alpha=1) |",
    "| task arithmetic (alpha=1) |",
    "| AdamW: Fisher-weighted average |",
  ):
    assert row in table
  nll = summary["results"][0].test_nll
  assert all(np.isfinite(value) and value > 0 for value in nll.values())
