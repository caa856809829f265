"""Tests of the uncertainty examples (ensembles, regression ensembles, flat minima) on tiny budgets.

In-process through the examples' functions, against closed-form values where
there are some; the whole programs and the step-cost timing run in the
``study`` tier.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ivon_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import data  # noqa: E402
import ensembles  # noqa: E402
import flat_minima  # noqa: E402
import models  # noqa: E402
import regression_ensembles  # noqa: E402

# --- Ensembles ----------------------------------------------------------------------


def test_mixture_is_the_average_of_the_probabilities():
  log_probs = jnp.log(jnp.array([[0.2, 0.8], [0.6, 0.4]]))  # two members, two classes
  np.testing.assert_allclose(jnp.exp(ensembles.mixture(log_probs, 0)), [0.4, 0.6], rtol=1e-6)


@pytest.mark.study
def test_bayes_predictor_shrinks_to_the_mean_members_as_tau_goes_to_zero():
  dataset = data.mnist1d(num_train=200, num_val=0, num_test=100)
  model = models.MLP((16,), dataset.num_classes)
  members = 2
  runs = models.train(
    model,
    models.CLASSIFIER_CONFIGS["ivon"],
    dataset.train.inputs,
    dataset.train.labels,
    seeds=regression_ensembles.run_seeds([0], members),
    epochs=2,
    progress=False,
  )
  inputs = dataset.test.inputs
  at_mean = jax.nn.log_softmax(models.predict_at_mean(model, runs.params, inputs))
  # MultiIVON: the mixture of the members' posteriors, hence of their means as tau -> 0.
  predict, _ = ensembles.make_bayes_predictor(model, runs, 1, 4, members)
  expected = ensembles.mixture(at_mean, 0)
  np.testing.assert_allclose(predict(inputs, jnp.full(1, 1e-5))[0], expected, atol=1e-3)
  # At tau 1 the samples spread: the prediction differs from the means'.
  assert np.max(np.abs(predict(inputs, jnp.ones(1))[0] - expected)) > 1e-3


def test_temperature_calibration_recovers_a_known_temperature():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2000, 5)) * 3.0
  labels = np.array([rng.choice(5, p=p) for p in np.asarray(jax.nn.softmax(logits / 2.0))])
  # The labels follow the logits at temperature 2: calibration divides by about 2.
  log_probs = jax.nn.log_softmax(jnp.asarray(logits))[None]
  scaled, temperatures = ensembles.calibrate({"val": log_probs, "test": log_probs}, labels)
  assert abs(temperatures[0] - 2.0) < 0.25, temperatures
  nll = lambda lp: float(ivon_optax.metrics.negative_log_likelihood(lp[0], labels))
  assert nll(scaled["test"]) < nll(log_probs)


# --- Regression ensembles --------------------------------------------------------------


def test_coverage_counts_the_truth_inside_two_standard_deviations():
  mean = np.zeros((1, 4))
  variance = np.full((1, 4), 0.25)  # std 0.5: the band is ±1
  moments = ivon_optax.predict.PredictiveMoments(mean, variance, variance, np.zeros((1, 4)))
  truth = np.array([0.5, -0.99, 1.5, -3.0])
  masks = {"all": np.ones(4, bool), "first two": np.array([True, True, False, False])}
  result = regression_ensembles.coverage(moments, truth, masks)
  assert result == {
    "all": {"coverage": [0.5], "std": [0.5]},
    "first two": {"coverage": [1.0], "std": [0.5]},
  }


@pytest.mark.study
def test_multi_ivon_band_is_wider_in_the_gap_than_one_member():
  hidden, members = (16, 16), 2
  model = models.MeanAndNoiseMLP(hidden)
  fits = models.fit_regression(
    data.regression_1d(200),
    hidden=hidden,
    seeds=regression_ensembles.run_seeds([0], members),
    epochs=10,
    beta2=0.99,
  )
  grid = np.linspace(-4.0, 4.0, 101, dtype=np.float32)
  bands = regression_ensembles.predictive_bands(
    model, fits["ivon"], fits["adamw"], 1, members, 8, grid[:, None]
  )
  results = {
    method: regression_ensembles.coverage(
      m, data.true_function(grid), data.regression_regions(grid)
    )
    for method, m in bands.items()
  }
  # The mixture of K posteriors is wider than its first member alone (same samples).
  multi, single = results["MultiIVON (K=2)"], results["IVON"]
  assert multi["gap"]["std"][0] > single["gap"]["std"][0]


# --- Flat minima ---------------------------------------------------------------------------


def test_flat_minima_loss_has_its_two_wells_where_stated():
  sharp, flat = flat_minima.SHARP, flat_minima.FLAT
  cross = lambda a, b, radius: np.exp(-np.sum((a - b) ** 2) / (2 * radius**2))
  expected = flat_minima.BOWL * np.sum(sharp**2) - flat_minima.SHARP_DEPTH
  expected -= flat_minima.FLAT_DEPTH * cross(sharp, flat, flat_minima.FLAT_RADIUS)
  np.testing.assert_allclose(float(flat_minima.loss(jnp.asarray(sharp))), expected, rtol=1e-5)
  assert flat_minima.loss(jnp.asarray(sharp)) < flat_minima.loss(jnp.asarray(flat))


def test_ivon_avoids_the_sharp_minimum_that_sgd_finds():
  starts = flat_minima.grid_starts(6)
  _, sigmas, frequencies, state = flat_minima.run_all(starts, ess=4.0, steps=300, seed=0)
  for f in frequencies.values():
    assert sum(f.values()) == pytest.approx(1.0)
  assert frequencies["SGD"]["sharp"] > 0.1
  assert frequencies["IVON"]["sharp"] < frequencies["SGD"]["sharp"]
  assert np.all(sigmas["SGD"] == 0) and np.all(sigmas["IVON"][:, -1] > 0)


# --- Whole programs ----------------------------------------------------------------------


@pytest.mark.study
def test_ensembles_program(tmp_path):
  summary = ensembles.main(
    [
      *("--epochs", "3", "--hidden", "16", "--seeds", "0", "1", "--members", "2"),
      *("--samples", "4", "--num-train", "400", "--no-progress", "--out", str(tmp_path)),
    ]
  )
  results = summary["results"]
  for method, r in results.items():
    # Temperature scaling keeps every prediction's most probable class.
    assert r["after"]["accuracy"] == r["before"]["accuracy"], method
  assert json.loads((tmp_path / "ensembles.json").read_text())["results"] == results


@pytest.mark.study
def test_ensembles_step_cost(tmp_path):
  cost = ensembles.main(["--timing", "--hidden", "16", "--members", "2", "--out", str(tmp_path)])
  if cost["bytes_vmapped"] is not None:
    assert cost["bytes_vmapped"] > cost["bytes_one_member"] > 0


@pytest.mark.study
def test_regression_ensembles_program(tmp_path):
  summary = regression_ensembles.main(
    [
      *("--epochs", "5", "--num-points", "200", "--hidden", "16", "16", "--samples", "4"),
      *("--seeds", "0", "1", "--members", "2", "--no-progress", "--out", str(tmp_path)),
    ]
  )
  assert list(summary["results"]) == ["IVON", "MultiIVON (K=2)", "Deep ensemble (AdamW, K=2)"]
  assert (tmp_path / "regression_ensembles.png").stat().st_size > 10_000


@pytest.mark.study
def test_flat_minima_program(tmp_path):
  summary = flat_minima.main(["--steps", "300", "--grid", "6", "--out", str(tmp_path)])
  assert summary["num_starts"] == 36
  assert (tmp_path / "flat_minima.png").stat().st_size > 10_000
