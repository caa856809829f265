"""Tests for ivon_optax.metrics against hand-computed cases and scikit-learn."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sklearn import metrics as sk_metrics

import ivon_optax


def _random_predictions(seed, num_examples, num_classes, scale=2.0):
  rng = np.random.default_rng(seed)
  logits = scale * rng.normal(size=(num_examples, num_classes))
  labels = rng.integers(0, num_classes, size=num_examples)
  return np.asarray(jax.nn.log_softmax(logits, axis=-1)), labels


def _ece_loop(probs, labels, num_bins):
  """ECE written the slow way, straight from Guo et al. (2017)."""
  confidence, predicted = probs.max(-1), probs.argmax(-1)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ece = 0.0
  for lower, upper in itertools.pairwise(edges):
    in_bin = (confidence > lower) & (confidence <= upper)
    if in_bin.any():
      gap = np.mean(predicted[in_bin] == labels[in_bin]) - np.mean(confidence[in_bin])
      ece += in_bin.mean() * abs(gap)
  return ece


HAND_PROBS = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
HAND_LABELS = np.array([0, 0, 1, 0])


def test_hand_computed_case():
  log_probs, labels = jnp.log(HAND_PROBS), jnp.asarray(HAND_LABELS)
  # Rows 0 and 3 are right (argmax takes the first class on the tie of row 3).
  np.testing.assert_allclose(ivon_optax.metrics.accuracy(log_probs, labels), 0.5)
  nll = -(np.log(0.9) + np.log(0.3) + np.log(0.4) + np.log(0.5)) / 4
  np.testing.assert_allclose(
    ivon_optax.metrics.negative_log_likelihood(log_probs, labels), nll, rtol=1e-5
  )
  brier = (2 * 0.1**2 + 2 * 0.7**2 + 2 * 0.6**2 + 2 * 0.5**2) / 4
  np.testing.assert_allclose(ivon_optax.metrics.brier_score(log_probs, labels), brier, rtol=1e-5)
  # Two bins: (0, .5] holds the 0.5-confidence row (correct); (.5, 1] holds
  # confidences .9, .7, .6 with one correct: |1 - .5| / 4 + 3 |1/3 - 2.2/3| / 4.
  ece = 0.5 / 4 + 3 * abs(1 / 3 - 2.2 / 3) / 4
  np.testing.assert_allclose(
    ivon_optax.metrics.expected_calibration_error(log_probs, labels, num_bins=2), ece, rtol=1e-5
  )
  bins = ivon_optax.metrics.calibration_bins(log_probs, labels, num_bins=2)
  chex.assert_trees_all_close(bins.count, jnp.array([1, 3], jnp.int32))
  chex.assert_trees_all_close(bins.accuracy, jnp.array([1.0, 1 / 3]))
  chex.assert_trees_all_close(bins.confidence, jnp.array([0.5, 2.2 / 3]))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(1, 3), (40, 2), (40, 6)]))
def test_accuracy_nll_and_brier_match_sklearn(seed, shape):
  num_examples, num_classes = shape
  log_probs, labels = _random_predictions(seed, num_examples, num_classes)
  probs = np.exp(log_probs.astype(np.float64))
  probs /= probs.sum(-1, keepdims=True)
  classes = np.arange(num_classes)
  np.testing.assert_allclose(
    ivon_optax.metrics.accuracy(log_probs, labels),
    sk_metrics.accuracy_score(labels, probs.argmax(-1)),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    ivon_optax.metrics.negative_log_likelihood(log_probs, labels),
    sk_metrics.log_loss(labels, probs, labels=classes),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    ivon_optax.metrics.brier_score(log_probs, labels),
    sk_metrics.brier_score_loss(labels, probs, labels=classes, scale_by_half=False),
    rtol=1e-5,
    atol=1e-7,
  )


def test_binary_brier_is_twice_sklearns_positive_class_score():
  log_probs, labels = _random_predictions(0, 50, 2)
  probs = np.exp(log_probs)
  np.testing.assert_allclose(
    ivon_optax.metrics.brier_score(log_probs, labels),
    2 * sk_metrics.brier_score_loss(labels, probs[:, 1]),
    rtol=1e-5,
  )


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), num_bins=st.sampled_from([1, 7, 20]), scale=st.floats(0.1, 5.0))
def test_ece_matches_a_loop_over_bins(seed, num_bins, scale):
  log_probs, labels = _random_predictions(seed, 200, 4, scale)
  np.testing.assert_allclose(
    ivon_optax.metrics.expected_calibration_error(log_probs, labels, num_bins),
    _ece_loop(np.exp(log_probs.astype(np.float64)), labels, num_bins),
    atol=1e-5,
  )
  assert int(jnp.sum(ivon_optax.metrics.calibration_bins(log_probs, labels, num_bins).count)) == 200


def test_ece_extremes_and_default_bins():
  certain = jnp.log(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
  np.testing.assert_allclose(
    ivon_optax.metrics.expected_calibration_error(certain, jnp.array([0, 1])), 0.0, atol=1e-6
  )
  np.testing.assert_allclose(
    ivon_optax.metrics.expected_calibration_error(certain, jnp.array([1, 0])), 1.0, atol=1e-6
  )
  log_probs, labels = _random_predictions(1, 100, 3)
  assert ivon_optax.metrics.calibration_bins(log_probs, labels).count.shape == (15,)
  np.testing.assert_allclose(
    ivon_optax.metrics.expected_calibration_error(log_probs, labels),
    _ece_loop(np.exp(log_probs.astype(np.float64)), labels, 15),
    atol=1e-5,
  )


def test_calibration_bins_are_right_closed():
  # Confidence 0.5 sits on the edge between two bins of width 0.25; it belongs to (0.25, 0.5].
  bins = ivon_optax.metrics.calibration_bins(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([0]), 4)
  chex.assert_trees_all_close(bins.count, jnp.array([0, 1, 0, 0], jnp.int32))


def test_entropy_matches_scipy_and_its_extremes():
  log_probs, _ = _random_predictions(0, 20, 5)
  chex.assert_trees_all_close(
    ivon_optax.metrics.predictive_entropy(log_probs),
    scipy.stats.entropy(np.exp(log_probs), axis=-1).astype(np.float32),
    atol=1e-5,
  )
  chex.assert_trees_all_close(
    ivon_optax.metrics.predictive_entropy(jnp.full((2, 4), -jnp.log(4.0))),
    jnp.full(2, jnp.log(4.0)),
  )
  one_hot = jnp.log(jnp.array([[0.0, 1.0, 0.0]]))
  chex.assert_trees_all_close(ivon_optax.metrics.predictive_entropy(one_hot), jnp.zeros(1))


@settings(max_examples=20, deadline=None)
@given(
  seed=st.integers(0, 2**16), num_examples=st.sampled_from([2, 9, 80]), num_levels=st.integers(2, 6)
)
def test_auroc_matches_sklearn_with_ties(seed, num_examples, num_levels):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, size=num_examples).astype(bool)
  labels[:2] = [True, False]
  # Few distinct levels force many ties, shifted by the label so the AUROC varies.
  scores = rng.integers(0, num_levels, size=num_examples) + 0.7 * labels * rng.integers(0, 2)
  np.testing.assert_allclose(
    jax.jit(ivon_optax.metrics.auroc)(jnp.asarray(scores, jnp.float32), jnp.asarray(labels)),
    sk_metrics.roc_auc_score(labels, scores),
    rtol=1e-5,
  )


def test_auroc_hand_computed_and_ood():
  scores = jnp.array([0.1, 0.4, 0.35, 0.8, 0.4])
  labels = jnp.array([0, 0, 1, 1, 1])
  # Pairs (pos, neg): .35 vs {.1 win, .4 lose}; .8 wins both; .4 vs {.1 win, .4 tie}.
  np.testing.assert_allclose(ivon_optax.metrics.auroc(scores, labels), 4.5 / 6)
  np.testing.assert_allclose(
    ivon_optax.metrics.ood_auroc(jnp.array([0.1, 0.4]), jnp.array([0.35, 0.8, 0.4])), 4.5 / 6
  )
  np.testing.assert_allclose(ivon_optax.metrics.ood_auroc(jnp.zeros(3), jnp.ones(2)), 1.0)
  np.testing.assert_allclose(ivon_optax.metrics.ood_auroc(jnp.ones(3), jnp.zeros(2)), 0.0)
  with pytest.raises(ValueError, match="one positive and one negative"):
    ivon_optax.metrics.auroc(jnp.ones(3), jnp.zeros(3, bool))
  assert bool(jnp.isnan(jax.jit(ivon_optax.metrics.auroc)(jnp.ones(3), jnp.zeros(3, bool))))


def test_metrics_are_jittable_and_accept_batch_axes():
  log_probs, labels = _random_predictions(2, 24, 3)
  log_probs, labels = log_probs.reshape(4, 6, 3), labels.reshape(4, 6)
  for metric in (
    ivon_optax.metrics.accuracy,
    ivon_optax.metrics.negative_log_likelihood,
    ivon_optax.metrics.brier_score,
    ivon_optax.metrics.expected_calibration_error,
  ):
    chex.assert_trees_all_close(
      jax.jit(metric)(log_probs, labels),
      metric(log_probs.reshape(24, 3), labels.reshape(24)),
      rtol=1e-5,
      atol=1e-6,
    )


def test_bad_inputs_raise_clear_errors():
  log_probs = jnp.full((4, 3), -jnp.log(3.0))
  with pytest.raises(ValueError, match="labels"):
    ivon_optax.metrics.negative_log_likelihood(log_probs, jnp.zeros(3, jnp.int32))
  with pytest.raises(TypeError, match="integer"):
    ivon_optax.metrics.accuracy(log_probs, jnp.zeros(4))
  with pytest.raises(ValueError, match="num_bins"):
    ivon_optax.metrics.expected_calibration_error(log_probs, jnp.zeros(4, jnp.int32), num_bins=0)
  with pytest.raises(TypeError, match="num_bins"):
    ivon_optax.metrics.calibration_bins(log_probs, jnp.zeros(4, jnp.int32), num_bins=2.0)
  with pytest.raises(ValueError, match="labels"):
    ivon_optax.metrics.auroc(jnp.zeros(4), jnp.zeros(3))
