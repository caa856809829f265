"""The public API is pinned: what each public module exports, and nothing more.

Adding or removing a public name is an API change; it must be made here as well.
"""

import importlib
import subprocess
import sys
import types

import pytest

CORE = {
  "GaussianPrior",
  "IVONState",
  "SampleAverage",
  "add_sample",
  "average_samples",
  "diagnostics",
  "find_ivon_state",
  "init_sample_average",
  "init_scale",
  "ivon",
  "posterior",
  "posterior_as_prior",
  "posterior_precision",
  "posterior_std",
  "recipe",
  "sample_params",
  "value_and_grad_at_sample",
  "scale_by_ivon",
}

SUBMODULES = {
  "ivon_optax.predict": {
    "PredictiveMoments",
    "predictive_log_probs",
    "predictive_moments",
    "sample_outputs",
  },
  "ivon_optax.metrics": {
    "CalibrationBins",
    "accuracy",
    "auroc",
    "brier_score",
    "calibration_bins",
    "expected_calibration_error",
    "negative_log_likelihood",
    "ood_auroc",
    "predictive_entropy",
  },
  "ivon_optax.sensitivity": {
    "LOOEstimate",
    "Sensitivity",
    "classification_sensitivity",
    "gaussian_sensitivity",
    "leave_one_out",
    "loo_change",
    "loo_from_change",
    "prediction_covariance",
    "prediction_variance",
    "regression_sensitivity",
    "sampled_prediction_variance",
    "softmax_error_and_curvature",
    "softmax_sensitivity",
  },
  "ivon_optax.merging": {"merge_models", "merge_with_precisions", "task_arithmetic"},
  "ivon_optax.sharding": {"check_state_sharding", "state_sharding"},
  "ivon_optax.random": {"counter_normal"},
  "ivon_optax.flax": {
    "TrainState",
    "nnx_params_and_state",
    "nnx_value_and_grad_at_sample",
    "refresh_batch_stats",
    "sample_linen_outputs",
    "sample_nnx_model",
    "sample_nnx_outputs",
    "sample_nnx_params",
  },
  "ivon_optax.checkpoint": {"restore"},
  "ivon_optax.calibration": {
    "PosteriorScaleFit",
    "default_scales",
    "fit_posterior_scale",
    "fit_temperature",
    "scale_posterior",
    "temperature_scale",
  },
  "ivon_optax.ensemble": {"sample_ensemble_outputs"},
}

PUBLIC = {"ivon_optax": CORE, **SUBMODULES}


def test_top_level_exports_exactly_the_core():
  import ivon_optax

  assert len(ivon_optax.__all__) == len(set(ivon_optax.__all__)), "duplicates in __all__"
  assert set(ivon_optax.__all__) == CORE


@pytest.mark.parametrize("name", sorted(SUBMODULES))
def test_submodule_exports(name):
  module = importlib.import_module(name)
  assert len(module.__all__) == len(set(module.__all__)), "duplicates in __all__"
  assert set(module.__all__) == SUBMODULES[name]


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_exported_name_exists(name):
  module = importlib.import_module(name)
  missing = [n for n in module.__all__ if not hasattr(module, n)]
  assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_public_name_outside_all(name):
  module = importlib.import_module(name)
  public = {
    n
    for n in dir(module)
    if not n.startswith("_") and not isinstance(getattr(module, n), types.ModuleType)
  }
  assert public == set(module.__all__), (
    f"{name} exposes {sorted(public - set(module.__all__))} outside __all__"
  )


def test_public_submodules_are_attributes_of_the_package():
  import ivon_optax

  for name in (
    "calibration",
    "ensemble",
    "predict",
    "metrics",
    "sensitivity",
    "merging",
    "sharding",
    "random",
  ):
    assert isinstance(getattr(ivon_optax, name), types.ModuleType), name


def test_import_needs_neither_flax_nor_orbax():
  code = (
    "import sys, ivon_optax; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'orbax')))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
  )
  assert result.stdout.strip() == "[]", result.stdout
