"""Tests of ivon_optax.sensitivity.leave_one_out: the formulas and their use during training."""

from typing import NamedTuple

import chex
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import ivon_optax


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), num_classes=st.integers(2, 5))
def test_loo_from_change_formula(seed, num_classes):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(6, num_classes)) * 2
  labels = rng.integers(0, num_classes, 6)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  # A change v * e with v >= 0, as the diagonal estimate makes: never below the training NLL.
  change = rng.uniform(0.0, 3.0, size=(6, num_classes)) * (probs - np.eye(num_classes)[labels])
  estimate = ivon_optax.sensitivity.loo_from_change(
    jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(change, jnp.float32)
  )
  perturbed = logits + change
  log_probs = perturbed - np.log(np.exp(perturbed).sum(-1, keepdims=True))
  chex.assert_trees_all_close(estimate.nll, -log_probs[np.arange(6), labels].mean(), rtol=1e-5)
  chex.assert_trees_all_close(estimate.error, np.mean(perturbed.argmax(-1) != labels))
  chex.assert_trees_all_close(estimate.train_error, np.mean(logits.argmax(-1) != labels))


def test_impossible_estimates_are_flagged():
  """Leaving an example out never makes it fit better: an estimate below that is flagged."""
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
  labels = jnp.array([0, 1, 0])
  towards_the_label = jnp.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
  with pytest.warns(UserWarning, match="2 examples.*`nll` and `error` are NaN"):
    estimate = ivon_optax.sensitivity.loo_from_change(logits, labels, towards_the_label)
  assert int(estimate.num_below_train) == 2
  assert np.isnan(estimate.nll) and np.isnan(estimate.error)
  assert np.isfinite(estimate.train_nll) and float(estimate.train_error) == 0.0
  # One impossible example whose mean stays above the training NLL: counted, kept.
  mixed = jnp.array([[0.1, -0.1], [3.0, -3.0], [-3.0, 3.0]])
  with pytest.warns(UserWarning, match="1 examples.*wrong"):
    estimate = ivon_optax.sensitivity.loo_from_change(logits, labels, mixed)
  assert int(estimate.num_below_train) == 1 and float(estimate.nll) > float(estimate.train_nll)
  jitted = jax.jit(ivon_optax.sensitivity.loo_from_change)(logits, labels, towards_the_label)
  assert int(jitted.num_below_train) == 2 and np.isnan(jitted.nll)


def test_diagonal_and_block_estimates_are_never_below_the_training_nll():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(50, 4)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 50))
  factor = rng.normal(size=(50, 4, 4))
  covariance = jnp.asarray(factor @ factor.transpose(0, 2, 1), jnp.float32)  # PSD blocks
  error, curvature = ivon_optax.sensitivity.softmax_error_and_curvature(logits, labels)
  for method in ("diagonal", "block"):
    change = ivon_optax.sensitivity.loo_change(covariance, error, curvature, method=method)
    estimate = ivon_optax.sensitivity.loo_from_change(logits, labels, change)
    assert int(estimate.num_below_train) == 0, method
    assert float(estimate.nll) > float(estimate.train_nll)


def test_loo_probabilities_are_clamped():
  estimate = ivon_optax.sensitivity.loo_from_change(
    jnp.array([[0.0, -1000.0]]), jnp.array([1]), jnp.zeros((1, 2))
  )
  chex.assert_trees_all_close(estimate.nll, -np.log(1e-10), rtol=1e-6)


def test_loo_from_change_rejects_bad_shapes():
  with pytest.raises(ValueError, match="change"):
    ivon_optax.sensitivity.loo_from_change(jnp.zeros((3, 2)), jnp.zeros(3, int), jnp.zeros((3, 3)))
  with pytest.raises(ValueError, match="labels"):
    ivon_optax.sensitivity.loo_from_change(jnp.zeros((3, 2)), jnp.zeros(2, int), jnp.zeros((3, 2)))


def test_leave_one_out_is_the_sensitivity_change():
  params = helpers.init_mlp(jax.random.key(0), [4, 6, 3])
  state = ivon_optax.ivon(0.1, ess=20.0, hess_init=0.3).init(params)
  inputs = jax.random.normal(jax.random.key(1), (20, 4))
  labels = jnp.arange(20) % 3
  estimate = ivon_optax.sensitivity.leave_one_out(helpers.mlp_apply, state, params, inputs, labels)
  sensitivity = ivon_optax.sensitivity.classification_sensitivity(
    helpers.mlp_apply, state, params, inputs, labels
  )
  chex.assert_trees_all_close(
    estimate,
    ivon_optax.sensitivity.loo_from_change(sensitivity.outputs, labels, sensitivity.change),
  )
  assert float(estimate.nll) > float(estimate.train_nll)


def test_leave_one_out_rejects_a_state_without_ivon():
  params = helpers.init_mlp(jax.random.key(0), [4, 3])
  with pytest.raises(ValueError, match="IVON state"):
    ivon_optax.sensitivity.leave_one_out(
      helpers.mlp_apply, optax.sgd(0.1).init(params), params, jnp.ones((5, 4)), jnp.zeros(5, int)
    )


NUM_TRAIN = 300


class EpochLog(NamedTuple):
  """Per-epoch curves, each of shape ``(num_epochs,)``."""

  loo_nll: np.ndarray
  train_nll: np.ndarray
  test_nll: np.ndarray


def train_digits_with_loo(*, hess_init, beta2, num_epochs, learning_rate=0.3):
  """Trains a digits MLP with IVON; after every epoch records the LOO estimate and test NLL."""
  train, test = helpers.load_digits_splits([NUM_TRAIN, 500], seed=0)
  params = helpers.init_mlp(jax.random.key(0), [64, 32, 10])
  steps_per_epoch = 10
  schedule = optax.cosine_decay_schedule(learning_rate, num_epochs * steps_per_epoch, 0.05)
  tx = ivon_optax.ivon(
    schedule, ess=float(NUM_TRAIN), hess_init=hess_init, beta2=beta2, weight_decay=1e-3
  )
  opt_state = tx.init(params)
  inputs, labels = jnp.asarray(train.inputs), jnp.asarray(train.labels)
  rows = []
  for epoch in range(num_epochs):
    params, opt_state = helpers.train_ivon(
      jax.random.fold_in(jax.random.key(1), epoch),
      tx,
      params,
      train,
      num_steps=steps_per_epoch,
      batch_size=32,
      opt_state=opt_state,
    )
    estimate = ivon_optax.sensitivity.leave_one_out(
      helpers.mlp_apply, opt_state, params, inputs, labels
    )
    rows.append(
      (estimate.nll, estimate.train_nll, helpers.mean_nll(params, test.inputs, test.labels))
    )
  return EpochLog(*np.asarray(jax.device_get(rows), dtype=np.float64).T)


def test_loo_tracks_test_nll_across_epochs_and_stops_early_well():
  log = train_digits_with_loo(hess_init=0.1, beta2=0.999, num_epochs=20)
  correlation = np.corrcoef(log.loo_nll, log.test_nll)[0, 1]
  picked = int(np.argmin(log.loo_nll))
  best = float(log.test_nll.min())
  print(
    f"corr(LOO NLL, test NLL) over 20 epochs: {correlation:.3f}; early stopping on LOO "
    f"picks epoch {picked + 1} with test NLL {log.test_nll[picked]:.4f}, best {best:.4f} "
    f"at epoch {int(np.argmin(log.test_nll)) + 1}"
  )
  assert correlation > 0.9
  assert log.test_nll[picked] <= best + 0.05
  # The estimate sits above the training NLL, as leaving data out must cost.
  assert np.all(log.loo_nll > log.train_nll)


def test_hess_init_sets_the_scale_of_the_estimate():
  # With the default beta2 = 0.99999, h stays near hess_init for the whole run:
  # sigma^2 and so the estimate are set by h0, not by the data.
  small = train_digits_with_loo(hess_init=0.01, beta2=0.99999, num_epochs=15)
  large = train_digits_with_loo(hess_init=1.0, beta2=0.99999, num_epochs=15)
  print(
    f"h0=0.01: LOO {small.loo_nll[-1]:.3f} vs test {small.test_nll[-1]:.3f}; "
    f"h0=1: LOO {large.loo_nll[-1]:.3f} vs test {large.test_nll[-1]:.3f} "
    f"(train {large.train_nll[-1]:.3f})"
  )
  assert small.loo_nll[-1] > 2.0 * small.test_nll[-1]  # sigma^2 too large: overshoots
  assert large.loo_nll[-1] < large.test_nll[-1]  # sigma^2 too small: near the train NLL
  assert large.loo_nll[-1] < 1.5 * large.train_nll[-1]


def test_leave_one_out_rejects_an_unknown_method():
  params = helpers.init_mlp(jax.random.key(0), [4, 3])
  state = ivon_optax.ivon(0.1, ess=5.0).init(params)
  with pytest.raises(ValueError, match="method"):
    ivon_optax.sensitivity.leave_one_out(
      helpers.mlp_apply, state, params, jnp.ones((5, 4)), jnp.zeros(5, int), method="full"
    )


def test_prediction_covariance_diagonal_is_prediction_variance():
  params = helpers.init_mlp(jax.random.key(0), [4, 6, 3])
  state = ivon_optax.ivon(0.1, ess=20.0, hess_init=0.3).init(params)
  std = ivon_optax.posterior_std(state, params)
  inputs = jax.random.normal(jax.random.key(1), (7, 4))
  outputs, covariance = ivon_optax.sensitivity.prediction_covariance(
    helpers.mlp_apply, params, std, inputs, chunk_size=3
  )
  _, variance = ivon_optax.sensitivity.prediction_variance(helpers.mlp_apply, params, std, inputs)
  chex.assert_trees_all_close(jnp.diagonal(covariance, axis1=1, axis2=2), variance, rtol=1e-5)
  chex.assert_trees_all_close(covariance, jnp.swapaxes(covariance, 1, 2), rtol=1e-5)
  # A hidden layer shares weights between the outputs: off-diagonal terms appear.
  assert float(jnp.abs(covariance[:, 0, 1]).max()) > 1e-3 * float(variance.max())
  assert outputs.shape == (7, 3)


@pytest.mark.parametrize("method", ["diagonal", "block", "leverage"])
def test_leave_one_out_methods_are_loo_change(method):
  params = helpers.init_mlp(jax.random.key(0), [4, 6, 3])
  state = ivon_optax.ivon(0.1, ess=20.0, hess_init=0.3).init(params)
  inputs = jax.random.normal(jax.random.key(1), (20, 4))
  labels = jnp.arange(20) % 3
  std = ivon_optax.posterior_std(state, params)
  logits, covariance = ivon_optax.sensitivity.prediction_covariance(
    helpers.mlp_apply, params, std, inputs
  )
  error, curvature = ivon_optax.sensitivity.softmax_error_and_curvature(logits, labels)
  change = ivon_optax.sensitivity.loo_change(covariance, error, curvature, method=method)
  estimate = ivon_optax.sensitivity.leave_one_out(
    helpers.mlp_apply, state, params, inputs, labels, method=method
  )
  chex.assert_trees_all_close(
    estimate, ivon_optax.sensitivity.loo_from_change(logits, labels, change), rtol=1e-5
  )
  assert float(estimate.nll) > float(estimate.train_nll)


def test_loo_change_formulas_on_one_block():
  covariance = jnp.array([[[2.0, 0.5], [0.5, 1.0]]])
  error = jnp.array([[1.0, -1.0]])
  curvature = jnp.array([[[0.25, -0.25], [-0.25, 0.25]]])
  change = {
    method: ivon_optax.sensitivity.loo_change(covariance, error, curvature, method=method)
    for method in ("diagonal", "block", "leverage")
  }
  chex.assert_trees_all_close(change["diagonal"], jnp.array([[2.0, -1.0]]))
  chex.assert_trees_all_close(change["block"], jnp.array([[1.5, -0.5]]))
  removal = jnp.eye(2) - covariance[0] @ curvature[0]
  chex.assert_trees_all_close(
    change["leverage"][0], jnp.linalg.solve(removal, change["block"][0]), rtol=1e-6
  )
  with pytest.raises(ValueError, match="curvature"):
    ivon_optax.sensitivity.loo_change(covariance, error, curvature[:, :1])
