"""Tests for ivon_optax.random: the counter-based normal sampler is Gaussian, independent across
elements, leaves and steps, deterministic in the key, and usable under jit and vmap."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special
from scipy import stats

import ivon_optax
from ivon_optax._src import counter_normal as noise

SIZE = 1 << 20

# Compiled once per shape and dtype: eager mode would dispatch and compile each of its ops.
draw = jax.jit(noise.counter_normal, static_argnums=(1, 2))


def _draws(key=None, size=SIZE, dtype=jnp.float32):
  key = jax.random.key(0) if key is None else key
  return np.asarray(draw(key, (size,), dtype), np.float64)


def _max_abs_correlation(first, second, lags=(0,)):
  values = []
  for lag in lags:
    a, b = (first[:-lag], second[lag:]) if lag else (first, second)
    values.append(abs(np.corrcoef(a, b)[0, 1]))
  return max(values)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_moments_are_standard_normal(dtype):
  with jax.enable_x64(dtype == jnp.float64):
    draws = _draws(jax.random.key(1), dtype=dtype)
  # Five standard errors of each sample moment under N(0, 1).
  assert abs(draws.mean()) < 5 / np.sqrt(SIZE)
  assert abs(draws.var() - 1) < 5 * np.sqrt(2 / SIZE)
  assert abs(stats.skew(draws)) < 5 * np.sqrt(6 / SIZE)
  assert abs(stats.kurtosis(draws)) < 5 * np.sqrt(24 / SIZE)


@pytest.mark.parametrize("seed", [0, 7])
def test_kolmogorov_smirnov_accepts_normal(seed):
  draws = _draws(jax.random.key(seed))
  assert stats.kstest(draws, "norm").pvalue > 1e-3
  # The test has power: the same draws scaled by 1.01 are rejected.
  assert stats.kstest(draws * 1.01, "norm").pvalue < 1e-3


def test_tails_reach_the_24_bit_limit():
  draws = _draws(jax.random.key(2), size=1 << 21)
  # The radius sqrt(-2 log u) is largest at the smallest uniform, 2**-25.
  limit = np.sqrt(-2 * np.log(2.0**-25))
  assert np.abs(draws).max() <= limit * (1 + 1e-6)
  # P(|z| > 4) = 6.3e-5: about 133 of 2M draws (Poisson, sd 11.5).
  assert 80 < np.sum(np.abs(draws) > 4) < 190


def test_cos_and_log_helpers_are_accurate():
  turns = np.linspace(-0.3, 1.0, 100_003, dtype=np.float32)
  np.testing.assert_allclose(
    np.asarray(noise.cos_turns(jnp.asarray(turns))),
    np.cos(2 * np.pi * turns.astype(np.float64)),
    atol=2e-7,
  )
  uniforms = np.asarray(
    noise.open_unit_uniform(jnp.arange(0, 2**32 - 1, 4099, dtype=jnp.uint32)), np.float64
  )
  assert uniforms.min() == 2.0**-25 and uniforms.max() < 1
  np.testing.assert_allclose(
    np.asarray(noise.log_of_normal_float(jnp.asarray(uniforms, jnp.float32))),
    np.log(uniforms),
    rtol=2e-7,
    atol=1e-7,
  )


def test_elements_are_independent():
  draws = _draws(jax.random.key(3))
  lags = (1, 2, 3, 5, 8, 64, 255, 256, 4096, 65536)
  threshold = 5 / np.sqrt(SIZE)
  assert _max_abs_correlation(draws, draws, lags) < threshold
  # Dependence that a linear correlation misses: of squares and of signs.
  assert _max_abs_correlation(draws**2, draws**2, lags) < threshold
  assert _max_abs_correlation(np.sign(draws), np.sign(draws), lags) < threshold


@pytest.mark.parametrize("size", [SIZE, SIZE + 1])
def test_the_two_draws_of_a_box_muller_pair_are_independent(size):
  """Draw j and draw P + j share a radius: their product, squares and signs are uncorrelated."""
  draws = _draws(jax.random.key(20), size=size)
  pairs = (size + 1) // 2
  cosines, sines = draws[: size - pairs], draws[pairs:]
  threshold = 5 / np.sqrt(sines.size)
  assert _max_abs_correlation(cosines, sines) < threshold
  assert _max_abs_correlation(cosines**2, sines**2) < threshold
  assert _max_abs_correlation(np.abs(cosines), np.abs(sines)) < threshold


def test_leaves_are_independent():
  params = {f"layer{i}": jnp.zeros((256, 256)) for i in range(4)}
  state = ivon_optax.ivon(0.1, ess=100.0).init(params)
  _, sample_noise = jax.jit(ivon_optax.sample_params)(jax.random.key(4), state, params)
  sigma = ivon_optax.posterior_std(state, params)
  eps = [np.asarray(sample_noise[name] / sigma[name], np.float64).ravel() for name in params]
  size = eps[0].size
  for i in range(len(eps)):
    for j in range(i + 1, len(eps)):
      assert _max_abs_correlation(eps[i], eps[j], lags=(0, 1, 2, 256)) < 5 / np.sqrt(size)


@pytest.mark.parametrize(
  "keys",
  [
    (jax.random.key(0), jax.random.key(1)),
    (jax.random.PRNGKey(5), jax.random.PRNGKey(6)),
    tuple(jax.random.split(jax.random.key(9))),
  ],
)
def test_different_keys_are_not_shifted_copies(keys):
  """Two streams share no more values than two independent ones would."""
  size = 1 << 16
  first, second = (_draws(key, size) for key in keys)
  shared = np.intersect1d(first, second).size
  # Values live on a grid of 2**24 points; independent streams share about size**2 / 2**24
  # values (less, as the grid points are not equally likely), a shifted copy about size.
  assert shared < 2 * size**2 / 2**24
  assert _max_abs_correlation(first, second, lags=range(64)) < 5 / np.sqrt(size)


def test_steps_are_independent():
  base = jax.random.key(11)
  steps = [_draws(jax.random.fold_in(base, step), size=1 << 16) for step in range(4)]
  for step in range(3):
    assert _max_abs_correlation(steps[step], steps[step + 1], lags=(0, 1)) < 5 / 256


def test_same_key_same_draws_and_different_keys_differ():
  key = jax.random.key(12)
  chex.assert_trees_all_equal(draw(key, (5, 7), jnp.float32), draw(key, (5, 7), jnp.float32))
  assert not np.any(
    np.asarray(draw(jax.random.key(13), (64,), jnp.float32))
    == np.asarray(draw(key, (64,), jnp.float32))
  )


def test_flat_index_order_is_shape_independent():
  """Element i is a function of the key, i and the size, so reshaping a draw keeps its numbers."""
  key = jax.random.key(14)
  chex.assert_trees_all_equal(draw(key, (6, 4), jnp.float32).ravel(), draw(key, (24,), jnp.float32))


def test_jit_matches_eager_and_vmap_over_keys_matches_a_loop():
  keys = jax.random.split(jax.random.key(15), 3)
  draw_one = lambda key: noise.counter_normal(key, (4, 5))
  eager = jnp.stack([draw_one(key) for key in keys])
  looped = jnp.stack([jax.jit(draw_one)(key) for key in keys])
  # Compiled code may contract a multiply-add into one FMA: 1-ulp differences from eager.
  chex.assert_trees_all_close(looped, eager, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(jax.vmap(draw_one)(keys), eager, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(jax.jit(jax.vmap(draw_one))(keys), looped, rtol=1e-6, atol=1e-6)


def test_typed_and_legacy_keys():
  typed = draw(jax.random.key(16), (32,), jnp.float32)
  legacy = draw(jax.random.PRNGKey(16), (32,), jnp.float32)
  # Both hold the same threefry key data, so they draw the same numbers.
  chex.assert_trees_all_equal(typed, legacy)
  for impl in ("rbg", "unsafe_rbg"):
    draws = draw(jax.random.key(16, impl=impl), (32,), jnp.float32)
    assert draws.shape == (32,) and bool(jnp.all(jnp.isfinite(draws)))
  vmapped = jax.vmap(lambda key: noise.counter_normal(key, (8,)))(
    jax.random.split(jax.random.PRNGKey(17), 2)
  )
  assert vmapped.shape == (2, 8)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
  dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
  seed=st.integers(0, 2**31 - 1),
)
def test_shape_dtype_and_determinism(shape, dtype, seed):
  draws = draw(jax.random.key(seed), shape, dtype)
  assert draws.shape == shape and draws.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(draws)))
  chex.assert_trees_all_equal(draws, draw(jax.random.key(seed), shape, dtype))
  # Narrow dtypes are the float32 draws, rounded.
  chex.assert_trees_all_equal(draws, draw(jax.random.key(seed), shape, jnp.float32).astype(dtype))


def test_float64_has_52_bit_uniforms():
  with jax.enable_x64(True):
    draws = draw(jax.random.key(18), (1 << 16,), jnp.float64)
    assert draws.dtype == jnp.float64
    uniforms = special.ndtr(np.asarray(draws))
  # float32 draws take 2**24 distinct values; float64 ones are all distinct.
  assert np.unique(uniforms).size == uniforms.size
  assert np.any(np.abs(uniforms * 2**24 - np.round(uniforms * 2**24 - 0.5) - 0.5) > 1e-3)


def test_bad_input_is_rejected_with_a_clear_error():
  with pytest.raises(ValueError, match="floating dtype"):
    noise.counter_normal(jax.random.key(0), (3,), jnp.int32)
  with pytest.raises(ValueError, match="2\\*\\*32"):
    noise.counter_normal(jax.random.key(0), (1 << 16, 1 << 16))
  with pytest.raises(TypeError, match="PRNG key"):
    noise.counter_normal(np.array([0, 1], np.int64), (3,))


def test_mix32_is_a_bijection_on_a_window():
  counters = jnp.arange(1 << 16, dtype=jnp.uint32)
  assert np.unique(np.asarray(noise.mix32(counters))).size == 1 << 16


def test_sample_params_uses_it_by_default_and_keeps_jax_random_as_an_option():
  params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
  state = ivon_optax.ivon(0.1, ess=10.0).init(params)
  key = jax.random.key(19)
  sample = jax.jit(ivon_optax.sample_params, static_argnames="sampler")
  chex.assert_trees_all_equal(
    sample(key, state, params), sample(key, state, params, sampler=noise.counter_normal)
  )
  _, jax_noise = sample(key, state, params, sampler=jax.random.normal)
  sigma = ivon_optax.posterior_std(state, params)
  expected = jax.tree.map(
    lambda s, n: s * n, sigma, optax.tree.random_like(key, params, sampler=jax.random.normal)
  )
  chex.assert_trees_all_close(jax_noise, expected)
