"""Tests for ivon_optax.predict: multi-sample prediction and model averaging."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import ivon_optax


def _linear_setup(ess=50.0):
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.array([0.5, -0.5])}
  state = ivon_optax.ivon(0.1, ess=ess, hess_init=0.3).init(params)
  inputs = jnp.arange(12.0).reshape(4, 3) / 10.0
  return params, state, inputs


def _linear_apply(params, inputs):
  return inputs @ params["w"] + params["b"]


def _one_at_a_time(key, state, params, inputs, num_samples):
  outputs = []
  for sample_key in jax.random.split(key, num_samples):
    sampled, _ = ivon_optax.sample_params(sample_key, state, params)
    outputs.append(_linear_apply(sampled, inputs))
  return jnp.stack(outputs)


def test_sample_outputs_are_the_model_at_sample_params():
  params, state, inputs = _linear_setup()
  key = jax.random.key(3)
  outputs = ivon_optax.predict.sample_outputs(
    key, _linear_apply, state, params, inputs, num_samples=5
  )
  chex.assert_shape(outputs, (5, 4, 2))
  chex.assert_trees_all_close(outputs, _one_at_a_time(key, state, params, inputs, 5), atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 7])
def test_chunked_samples_equal_vmapped_samples(batch_size):
  params, state, inputs = _linear_setup()
  key = jax.random.key(0)
  vmapped = ivon_optax.predict.sample_outputs(
    key, _linear_apply, state, params, inputs, num_samples=5
  )
  chunked = jax.jit(
    lambda k: ivon_optax.predict.sample_outputs(
      k, _linear_apply, state, params, inputs, num_samples=5, batch_size=batch_size
    )
  )(key)
  chex.assert_trees_all_close(chunked, vmapped, atol=1e-5)


def test_chunking_evaluates_samples_in_a_loop():
  params, state, inputs = _linear_setup()

  def predict(key, batch_size):
    return ivon_optax.predict.sample_outputs(
      key, _linear_apply, state, params, inputs, num_samples=8, batch_size=batch_size
    )

  chunked = str(jax.make_jaxpr(lambda k: predict(k, 2))(jax.random.key(0)))
  vmapped = str(jax.make_jaxpr(lambda k: predict(k, None))(jax.random.key(0)))
  assert "scan" in chunked
  assert "scan" not in vmapped


def test_sample_outputs_moments_match_the_posterior():
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  tx = ivon_optax.ivon(0.1, ess=10.0, hess_init=0.25)
  state = tx.init(params)
  weights = ivon_optax.predict.sample_outputs(
    jax.random.key(1), lambda p: p["w"], state, params, num_samples=4000, batch_size=1000
  )
  mean, std = ivon_optax.posterior(state, params)
  chex.assert_trees_all_close(jnp.mean(weights, axis=0), mean["w"], atol=0.03)
  chex.assert_trees_all_close(jnp.std(weights, axis=0), std["w"], rtol=0.05)


def test_sample_outputs_accepts_pytree_outputs_and_wrapped_states():
  params, _, inputs = _linear_setup()
  tx = optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)(
    learning_rate=0.1, ess=20.0
  )
  state = tx.init(params)
  outputs = ivon_optax.predict.sample_outputs(
    jax.random.key(0),
    lambda p, x: {"out": _linear_apply(p, x), "bias": p["b"]},
    state,
    params,
    inputs,
    num_samples=3,
    batch_size=2,
  )
  chex.assert_shape(outputs["out"], (3, 4, 2))
  chex.assert_shape(outputs["bias"], (3, 2))


def test_sample_outputs_zero_noise_where_ivon_does_not_manage():
  params = {"frozen": jnp.ones(2), "trained": jnp.zeros(2)}
  labels = {"frozen": "none", "trained": "ivon"}
  tx = optax.partition({"none": optax.set_to_zero(), "ivon": ivon_optax.ivon(0.1, ess=1.0)}, labels)
  state = tx.init(params)
  outputs = ivon_optax.predict.sample_outputs(
    jax.random.key(0), lambda p: p, state, params, num_samples=4
  )
  chex.assert_trees_all_close(outputs["frozen"], jnp.ones((4, 2)))
  assert float(jnp.std(outputs["trained"])) > 0.1


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    ({"num_samples": 0}, ValueError, "num_samples"),
    ({"num_samples": 2.0}, TypeError, "num_samples"),
    ({"num_samples": 4, "batch_size": 0}, ValueError, "batch_size"),
  ],
)
def test_sample_outputs_rejects_bad_counts(kwargs, error, match):
  params, state, inputs = _linear_setup()
  with pytest.raises(error, match=match):
    ivon_optax.predict.sample_outputs(
      jax.random.key(0), _linear_apply, state, params, inputs, **kwargs
    )


def test_sample_outputs_rejects_a_batch_of_keys():
  params, state, inputs = _linear_setup()
  with pytest.raises(TypeError, match="key"):
    ivon_optax.predict.sample_outputs(
      jax.random.split(jax.random.key(0), 2), _linear_apply, state, params, inputs, num_samples=2
    )


@settings(max_examples=10, deadline=None)
@given(
  shape=st.sampled_from([(1, 3, 2), (4, 3, 5)]),
  scale=st.floats(0.1, 20.0),
  seed=st.integers(0, 2**16),
)
def test_predictive_log_probs_is_the_log_of_averaged_probabilities(shape, scale, seed):
  logits = (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)
  probs = np.exp(logits - logits.max(-1, keepdims=True), dtype=np.float64)
  expected = np.log(np.mean(probs / probs.sum(-1, keepdims=True), axis=0))
  log_probs = ivon_optax.predict.predictive_log_probs(logits)
  chex.assert_trees_all_close(log_probs, expected.astype(np.float32), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(jax.nn.logsumexp(log_probs, axis=-1), jnp.zeros(3), atol=1e-5)


def test_predictive_log_probs_stays_finite_for_confident_samples():
  # Each sample is certain of a different class: the average is 50/50, and a
  # naive log(mean(softmax)) in float32 would give log(0) for the losing class.
  logits = jnp.array([[[1000.0, 0.0, -1000.0]], [[0.0, 1000.0, -1000.0]]])
  log_probs = ivon_optax.predict.predictive_log_probs(logits)
  chex.assert_trees_all_close(log_probs[0, :2], jnp.log(jnp.array([0.5, 0.5])), atol=1e-5)
  assert bool(jnp.isfinite(log_probs[0, 2])) and float(log_probs[0, 2]) < -900


def test_predictive_log_probs_of_one_sample_is_log_softmax_and_axis_moves():
  logits = jax.random.normal(jax.random.key(0), (1, 4, 3))
  chex.assert_trees_all_close(
    ivon_optax.predict.predictive_log_probs(logits), jax.nn.log_softmax(logits[0]), atol=1e-5
  )
  stacked = jax.random.normal(jax.random.key(1), (6, 4, 3))
  chex.assert_trees_all_close(
    ivon_optax.predict.predictive_log_probs(jnp.moveaxis(stacked, 0, 1), axis=1),
    ivon_optax.predict.predictive_log_probs(stacked),
    atol=1e-5,
  )


def test_predictive_log_probs_needs_sample_and_class_axes():
  with pytest.raises(ValueError, match="class axis"):
    ivon_optax.predict.predictive_log_probs(jnp.zeros(3))


def test_predictive_moments_hand_computed():
  means = jnp.array([[1.0, 0.0], [3.0, 0.0]])
  stds = jnp.array([[1.0, 0.5], [2.0, 0.5]])
  moments = ivon_optax.predict.predictive_moments(means, stds)
  chex.assert_trees_all_close(moments.mean, jnp.array([2.0, 0.0]))
  chex.assert_trees_all_close(moments.epistemic, jnp.array([1.0, 0.0]))
  chex.assert_trees_all_close(moments.aleatoric, jnp.array([2.5, 0.25]))
  chex.assert_trees_all_close(moments.variance, jnp.array([3.5, 0.25]))


def test_predictive_moments_is_the_mixture_variance():
  rng = np.random.default_rng(0)
  means, stds = rng.normal(size=(4, 1)), rng.uniform(0.5, 1.5, size=(4, 1))
  component = rng.integers(0, 4, size=400_000)
  draws = rng.normal(means[component, 0], stds[component, 0])
  moments = ivon_optax.predict.predictive_moments(jnp.asarray(means), jnp.asarray(stds))
  np.testing.assert_allclose(moments.mean[0], draws.mean(), atol=0.01)
  np.testing.assert_allclose(moments.variance[0], draws.var(), rtol=0.01)


def test_predictive_moments_without_noise_scale_is_epistemic_only():
  means = jax.random.normal(jax.random.key(0), (8, 5))
  moments = ivon_optax.predict.predictive_moments(means)
  chex.assert_trees_all_close(moments.aleatoric, jnp.zeros(5))
  chex.assert_trees_all_close(moments.variance, jnp.var(means, axis=0), rtol=1e-5, atol=1e-6)


def test_predictive_moments_rejects_mismatched_stds():
  with pytest.raises(ValueError, match="stds"):
    ivon_optax.predict.predictive_moments(jnp.zeros((4, 3)), jnp.ones((4, 2)))
