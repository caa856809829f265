"""Tests for ivon_optax.calibration: temperature fitting and IVON's posterior scale."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ivon_optax
import ivon_optax.calibration as calibration


def _synthetic(temperature: float, num: int = 20_000, classes: int = 10, seed: int = 0):
  """Logits, and labels drawn from softmax(logits / temperature): the true T is known."""
  logits = 3.0 * jax.random.normal(jax.random.key(seed), (num, classes))
  labels = jax.random.categorical(jax.random.key(seed + 1), logits / temperature)
  return logits, labels


def _nll(logits, labels, temperature):
  log_probs = jax.nn.log_softmax(logits / temperature)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], -1))


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_a_known_temperature(temperature):
  logits, labels = _synthetic(temperature)
  fitted = float(calibration.fit_temperature(logits, labels))
  # 20000 draws: the estimate's sampling error is about 1%.
  assert fitted == pytest.approx(temperature, rel=0.05)


def test_fit_temperature_is_the_nll_minimum():
  with jax.enable_x64(True):
    logits, labels = _synthetic(1.7, num=2000)
    logits = logits.astype(jnp.float64)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted.dtype == jnp.float64
    grid = jnp.geomspace(0.5, 5.0, 2001)  # spacing 0.1%
    nlls = jax.vmap(lambda t: _nll(logits, labels, t))(grid)
    assert float(_nll(logits, labels, fitted)) <= float(nlls.min()) + 1e-12
    assert float(fitted) == pytest.approx(float(grid[jnp.argmin(nlls)]), rel=2e-3)


def test_fit_temperature_treats_log_probs_as_logits():
  logits, labels = _synthetic(2.0, num=2000)
  from_logits = calibration.fit_temperature(logits, labels)
  from_log_probs = calibration.fit_temperature(jax.nn.log_softmax(logits), labels)
  assert float(from_log_probs) == pytest.approx(float(from_logits), rel=1e-3)


def test_fit_temperature_returns_the_lower_bound_on_separable_data():
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  fitted = calibration.fit_temperature(logits, jnp.array([0, 1]), bounds=(0.1, 10.0))
  assert float(fitted) == pytest.approx(0.1, rel=1e-4)


def test_fit_temperature_refuses_bad_input():
  logits, labels = _synthetic(2.0, num=50)
  with pytest.raises(ValueError, match="class indices"):
    calibration.fit_temperature(logits, labels.at[0].set(10))
  with pytest.raises(ValueError, match="one integer label per row"):
    calibration.fit_temperature(logits, labels[:-1])
  with pytest.raises(ValueError, match="bounds"):
    calibration.fit_temperature(logits, labels, bounds=(2.0, 1.0))
  with pytest.raises(TypeError, match="num_iterations"):
    calibration.fit_temperature(logits, labels, num_iterations=10.0)
  jitted = jax.jit(calibration.fit_temperature)
  assert np.isnan(jitted(logits, labels.at[0].set(10)))
  assert np.isnan(jitted(logits.at[3, 2].set(jnp.nan), labels))
  assert np.isfinite(jitted(logits, labels))


def test_temperature_scale():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  np.testing.assert_allclose(
    calibration.temperature_scale(logits, 1.0), jax.nn.log_softmax(logits), rtol=1e-6
  )
  np.testing.assert_allclose(
    calibration.temperature_scale(logits, 2.0), jax.nn.log_softmax(logits / 2.0), rtol=1e-6
  )
  with pytest.raises(ValueError, match="temperature"):
    calibration.temperature_scale(logits, 0.0)
  assert np.all(np.isnan(jax.jit(calibration.temperature_scale)(logits, -1.0)))


# --- The posterior scale ------------------------------------------------------------


def _state(params, wrap=False):
  if wrap:
    tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.inject_hyperparams(ivon_optax.ivon)(learning_rate=0.1, ess=50.0, hess_init=0.3),
    )
  else:
    tx = ivon_optax.ivon(0.1, ess=50.0, hess_init=0.3)
  return tx.init(params)


@pytest.mark.parametrize("wrap", [False, True])
def test_scale_one_leaves_sampling_unchanged(params, wrap):
  state = _state(params, wrap)
  key = jax.random.key(7)
  same = calibration.scale_posterior(state, 1.0)
  chex_equal = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state, same)
  assert all(jax.tree.leaves(chex_equal))
  expected, _ = ivon_optax.sample_params(key, state, params)
  sampled, _ = ivon_optax.sample_params(key, same, params)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(sampled), strict=True):
    np.testing.assert_array_equal(a, b)  # exactly: same key, same samples


@pytest.mark.parametrize("wrap", [False, True])
def test_scale_multiplies_the_posterior_std(params, wrap):
  state = _state(params, wrap)
  key = jax.random.key(7)
  wider = calibration.scale_posterior(state, 3.0)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(3.0 * a, b, rtol=1e-5),
    ivon_optax.posterior_std(state, params),
    ivon_optax.posterior_std(wider, params),
  )
  _, noise = ivon_optax.sample_params(key, state, params)
  _, wider_noise = ivon_optax.sample_params(key, wider, params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(3.0 * a, b, rtol=1e-5, atol=1e-7), noise, wider_noise
  )


def test_scale_posterior_of_stacked_members(params):
  stacked = jax.tree.map(lambda p: jnp.stack([p, 2.0 * p]), params)
  states = jax.vmap(ivon_optax.ivon(0.1, ess=50.0).init)(stacked)
  scaled = calibration.scale_posterior(states, 0.5)
  np.testing.assert_allclose(ivon_optax.find_ivon_state(scaled).ess, [200.0, 200.0])


def test_scale_posterior_refuses_bad_input(params):
  state = _state(params)
  with pytest.raises(ValueError, match="scale"):
    calibration.scale_posterior(state, 0.0)
  with pytest.raises(ValueError, match="no IVON state"):
    calibration.scale_posterior(optax.adam(0.1).init(params), 1.0)
  sampled_at = jax.jit(
    lambda s: ivon_optax.sample_params(
      jax.random.key(0), calibration.scale_posterior(state, s), params
    )[0]
  )
  assert all(np.all(np.isnan(leaf)) for leaf in jax.tree.leaves(sampled_at(-1.0)))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(sampled_at(0.5)))


def _linear_problem():
  params = {"w": 2.0 * jnp.eye(3)}
  state = ivon_optax.ivon(0.1, ess=4.0, hess_init=1.0, weight_decay=0.0).init(params)
  inputs = jnp.tile(jnp.eye(3), (20, 1))
  labels = jnp.tile(jnp.arange(3), 20)
  apply_fn = lambda p, x: x @ p["w"]

  def predict_fn(tau):
    scaled = calibration.scale_posterior(state, tau)
    logits = ivon_optax.predict.sample_outputs(
      jax.random.key(0), apply_fn, scaled, params, inputs, num_samples=16
    )
    return ivon_optax.predict.predictive_log_probs(logits)

  return predict_fn, labels


def test_fit_posterior_scale_picks_the_lowest_nll():
  predict_fn, labels = _linear_problem()
  scales = jnp.array([0.25, 0.5, 1.0, 2.0])
  fit = jax.jit(lambda: calibration.fit_posterior_scale(predict_fn, labels, scales=scales))()
  manual = [
    float(ivon_optax.metrics.negative_log_likelihood(predict_fn(tau), labels)) for tau in scales
  ]
  np.testing.assert_allclose(fit.nlls, manual, rtol=1e-5)
  assert float(fit.scale) == float(scales[int(np.argmin(manual))])
  # The mean classifies every input correctly; sigma = 0.5 only blurs it, so narrowing helps.
  assert manual[0] < manual[2] < manual[3]


def test_fit_posterior_scale_refuses_bad_scales():
  predict_fn, labels = _linear_problem()
  with pytest.raises(ValueError, match="1-D"):
    calibration.fit_posterior_scale(predict_fn, labels, scales=jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="scales"):
    calibration.fit_posterior_scale(predict_fn, labels, scales=jnp.array([0.5, -1.0]))
  bad_labels = jax.jit(
    lambda y: calibration.fit_posterior_scale(predict_fn, y, scales=jnp.array([0.5, 1.0])).scale
  )
  assert np.isnan(bad_labels(labels.at[0].set(5)))
