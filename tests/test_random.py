"""Tests for ivon_optax.random: ``counter_normal`` and ``jax.random.normal`` pass one statistical
battery, and ``counter_normal`` is deterministic in the key, usable under jit, vmap and a mesh.

Each statistical test computes p-values under the hypothesis that the draws are i.i.d. N(0, 1)
(and, between two sets of draws, independent) and fails when the smallest p-value times the number
it computed is below ``ALPHA`` (a Bonferroni bound). A correct generator thus fails a given test
with probability below ``ALPHA`` = 1e-6 over the choice of its fixed seeds, and the whole battery
with probability below 1e-4.
"""

import functools
import inspect
import math
import os
import pathlib
import subprocess
import sys

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

ALPHA = 1e-6
SIZE = 1 << 20
SAMPLERS = {"counter_normal": noise.counter_normal, "jax.random.normal": jax.random.normal}
# Equiprobable bins of N(0, 1) for the chi-square tests.
GOODNESS_BINS = 1000
PAIR_BINS = 16


# --- Drawing ---------------------------------------------------------------------------------


@functools.cache
def jitted(sampler):
  """Compiled once per generator, shape and dtype: eager mode would compile each of its ops."""
  return jax.jit(sampler, static_argnums=(1, 2))


def draws(sampler, key, shape=(SIZE,), dtype=jnp.float32):
  """``sampler``'s draws as float64 numpy; float64 is drawn with x64 enabled."""
  with jax.enable_x64(dtype == jnp.float64):
    return np.asarray(jitted(sampler)(key, shape, dtype), np.float64)


# --- Statistics: each returns {name: p-value} ------------------------------------------------


def assert_p_values(p_values):
  """Fails if any p-value is below ``ALPHA`` divided by their number, or is NaN."""
  assert all(np.isfinite(list(p_values.values()))), p_values
  name = min(p_values, key=p_values.get)
  assert p_values[name] * len(p_values) >= ALPHA, (
    f"{name}: p = {p_values[name]:.3g}, below {ALPHA:g} / {len(p_values)}"
  )


def normal_p(z):
  """Two-sided p-value of a statistic that is N(0, 1) under the hypothesis."""
  return float(2 * stats.norm.sf(abs(z)))


def moment_p_values(x):
  """Mean (z-test), variance (sum of squares ~ chi2(n)), skewness and kurtosis (D'Agostino)."""
  n = x.size
  squares = float(np.sum(x**2))
  return {
    "mean": normal_p(x.mean() * math.sqrt(n)),
    "variance": float(2 * min(stats.chi2.cdf(squares, n), stats.chi2.sf(squares, n))),
    "skewness": float(stats.skewtest(x).pvalue),
    "kurtosis": float(stats.kurtosistest(x).pvalue),
  }


def rounding_cells(edges, dtype):
  """Moves each bin edge to the nearest midpoint between two values of ``dtype``.

  A draw rounded to ``dtype`` then lies in a bin exactly when the unrounded normal does, so the
  bins' N(0, 1) probabilities stay exact for bfloat16 and float16 (where bins narrower than a
  rounding cell merge). Float32 and float64 cells are far narrower than any bin: edges stay.
  """
  if jnp.finfo(dtype).bits > 16:
    return edges
  values = np.arange(1 << 16, dtype=np.uint16).view(dtype)
  values = np.unique(values[np.isfinite(values)].astype(np.float64))
  midpoints = (values[1:] + values[:-1]) / 2
  above = np.searchsorted(midpoints, edges)
  below = above - 1
  nearest = np.where(
    midpoints[above] - edges < edges - midpoints[below], midpoints[above], midpoints[below]
  )
  return np.unique(nearest)


def goodness_of_fit_p_values(x, dtype=jnp.float32):
  """Pearson's chi-square over ``GOODNESS_BINS`` equiprobable bins; Kolmogorov-Smirnov for
  float32 and float64 (narrower types take too few values for it)."""
  edges = rounding_cells(stats.norm.ppf(np.arange(1, GOODNESS_BINS) / GOODNESS_BINS), dtype)
  expected = np.diff(stats.norm.cdf(np.concatenate([[-np.inf], edges, [np.inf]]))) * x.size
  counts = np.bincount(np.searchsorted(edges, x), minlength=edges.size + 1)
  p_values = {"chi_square": float(stats.chisquare(counts, expected).pvalue)}
  if jnp.finfo(dtype).bits > 16:
    p_values["kolmogorov_smirnov"] = float(stats.kstest(x, "norm").pvalue)
  return p_values


TAILS = (3.0, 4.0, 4.5)


def tail_p_values(x):
  """Exact binomial tests of the frequencies of |x| > 3, 4 and 4.5."""
  return {
    f"|x| > {t}": float(
      stats.binomtest(int(np.sum(np.abs(x) > t)), x.size, 2 * stats.norm.sf(t)).pvalue
    )
    for t in TAILS
  }


def normal_bins(x):
  return np.searchsorted(stats.norm.ppf(np.arange(1, PAIR_BINS) / PAIR_BINS), x)


def pair_p_values(a, b, name="", bins=None):
  """Independence of paired draws: correlation of values and of squares (sqrt(n) r ~ N(0, 1)),
  and a chi-square test on a ``PAIR_BINS`` x ``PAIR_BINS`` table of their quantile bins."""
  n = a.size
  bins_a, bins_b = (normal_bins(a), normal_bins(b)) if bins is None else bins
  table = np.bincount(bins_a * PAIR_BINS + bins_b, minlength=PAIR_BINS**2)
  table = table.reshape(PAIR_BINS, PAIR_BINS)
  # An empty bin, of probability 1/16, is itself a rejection (and leaves the test undefined).
  empty_bin = np.any(table.sum(0) == 0) or np.any(table.sum(1) == 0)
  return {
    f"{name} correlation": normal_p(np.corrcoef(a, b)[0, 1] * math.sqrt(n)),
    f"{name} correlation of squares": normal_p(np.corrcoef(a**2, b**2)[0, 1] * math.sqrt(n)),
    f"{name} contingency": 0.0
    if empty_bin
    else float(stats.chi2_contingency(table, correction=False).pvalue),
  }


def cross_correlation_p_values(a, b, max_lag, name=""):
  """Correlation of ``a[i]`` with ``b[i + lag]`` for ``|lag| <= max_lag``, by FFT."""
  n = a.size
  a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
  # sums[k] = sum_i a[i] b[i + k], with negative k at the end.
  sums = np.fft.irfft(np.conj(np.fft.rfft(a, 2 * n)) * np.fft.rfft(b, 2 * n), 2 * n)
  return {
    f"{name} lag {lag}": normal_p(sums[lag] / math.sqrt(n - abs(lag)))
    for lag in range(-max_lag, max_lag + 1)
  }


def shared_values_p(streams):
  """Shifted copies: streams of float32 draws that overlap share many values.

  Two independent streams of sizes ``n`` and ``m`` share about ``n * m * sum(p_v**2)`` values,
  where ``p_v`` is the probability of float32 value ``v``: at most 2**-23 for both generators
  (their uniforms have 23 or more bits). The Poisson tail is taken at twice that mean, summed
  over pairs of streams.
  """
  distinct = [np.unique(np.asarray(stream, np.float32)) for stream in streams]
  merged = np.sort(np.concatenate(distinct))
  shared = int(np.sum(merged[1:] == merged[:-1]))
  sizes = np.array([stream.size for stream in streams], np.float64)
  pairs = (sizes.sum() ** 2 - np.sum(sizes**2)) / 2
  return {"shared values": float(stats.poisson.sf(shared - 1, pairs * 2.0**-22))}


def streams_p_values(streams, max_lag, kind=""):
  """Every pair of streams: cross-correlations, `pair_p_values`; and their shared values."""
  bins = [normal_bins(stream) for stream in streams]
  p_values = shared_values_p(streams)
  for i in range(len(streams)):
    for j in range(i + 1, len(streams)):
      name = f"{kind} {i}, {j}"
      p_values.update(cross_correlation_p_values(streams[i], streams[j], max_lag, name))
      p_values.update(pair_p_values(streams[i], streams[j], name, (bins[i], bins[j])))
  return p_values


# --- The battery, for both generators --------------------------------------------------------

by_sampler = pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())


@by_sampler
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_moments(sampler, dtype):
  assert_p_values(moment_p_values(draws(sampler, jax.random.key(1), dtype=dtype)))


@by_sampler
@pytest.mark.parametrize("seed", [0, 7])
def test_goodness_of_fit(sampler, seed):
  assert_p_values(goodness_of_fit_p_values(draws(sampler, jax.random.key(seed))))


@by_sampler
def test_goodness_of_fit_float64(sampler):
  x = draws(sampler, jax.random.key(8), dtype=jnp.float64)
  assert_p_values(goodness_of_fit_p_values(x, jnp.float64))


def test_the_tests_have_power():
  """The same draws, scaled by 1.02 or shifted by 0.01, are rejected."""
  x = draws(noise.counter_normal, jax.random.key(0))
  assert stats.kstest(x * 1.02, "norm").pvalue < ALPHA
  assert moment_p_values(x * 1.02)["variance"] < ALPHA
  assert moment_p_values(x + 0.01)["mean"] < ALPHA
  assert goodness_of_fit_p_values(x * 1.02)["chi_square"] < ALPHA


@by_sampler
def test_tail_frequencies(sampler):
  # 4M draws: about 11,300 beyond 3, 266 beyond 4 and 28 beyond 4.5.
  assert_p_values(tail_p_values(draws(sampler, jax.random.key(2), shape=(1 << 22,))))


@by_sampler
def test_elements_of_one_draw_are_independent(sampler):
  """Lag-k pairs within one array, including the Box-Muller partners ``j`` and ``n/2 + j``."""
  x = draws(sampler, jax.random.key(3))
  bins = normal_bins(x)
  half = SIZE // 2
  p_values = {}
  for lag in (1, 2, 3, 4, 5, 8, 64, 255, 256, 1024, 4096, 65536, half - 1, half, half + 1):
    p_values.update(pair_p_values(x[:-lag], x[lag:], f"lag {lag}", (bins[:-lag], bins[lag:])))
  assert_p_values(p_values)


RELATED_KEYS = {
  "adjacent seeds": lambda: (jax.random.key(0), jax.random.key(1)),
  "adjacent legacy seeds": lambda: (jax.random.PRNGKey(5), jax.random.PRNGKey(6)),
  "adjacent rbg seeds": lambda: (jax.random.key(0, impl="rbg"), jax.random.key(1, impl="rbg")),
  "split": lambda: tuple(jax.random.split(jax.random.key(9))),
}


@by_sampler
@pytest.mark.parametrize("keys", RELATED_KEYS.values(), ids=RELATED_KEYS.keys())
def test_related_keys_give_independent_streams(sampler, keys):
  assert_p_values(streams_p_values([draws(sampler, key, shape=(1 << 18,)) for key in keys()], 64))


@by_sampler
def test_steps_are_independent(sampler):
  """Eight consecutive ``fold_in(key, step)`` keys, as in a training loop: every pair of steps."""
  base = jax.random.key(11)
  steps = [draws(sampler, jax.random.fold_in(base, step), shape=(1 << 17,)) for step in range(8)]
  assert_p_values(streams_p_values(steps, max_lag=1, kind="steps"))


@functools.cache
def jitted_sample_params(sampler):
  return jax.jit(functools.partial(ivon_optax.sample_params, sampler=sampler))


@by_sampler
def test_leaves_of_one_pytree_are_independent(sampler):
  """``sample_params`` gives leaves of one shape a key each: their draws are unrelated."""
  params = {name: jnp.zeros((256, 512)) for name in "abcd"}
  state = ivon_optax.ivon(0.1, ess=100.0).init(params)
  _, sample_noise = jitted_sample_params(sampler)(jax.random.key(4), state, params)
  sigma = ivon_optax.posterior_std(state, params)
  eps = [np.asarray(sample_noise[name] / sigma[name], np.float64).ravel() for name in params]
  assert_p_values(
    {**moment_p_values(np.concatenate(eps)), **streams_p_values(eps, max_lag=2, kind="leaves")}
  )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_narrow_dtypes(dtype):
  """bfloat16 and float16 draws are float32 draws, rounded; their bins and tails are right.

  ``jax.random.normal`` fails this test: it draws narrow dtypes from uniforms of the same width
  (in bfloat16, 128 distinct values, none beyond 2.9 in magnitude).
  """
  key = jax.random.key(5)
  x = draws(noise.counter_normal, key, shape=(1 << 21,), dtype=dtype)
  rounded = draws(noise.counter_normal, key, shape=(1 << 21,)).astype(dtype)
  # Two programs: the float32 values may differ in their last bits, which can move a value
  # near a rounding boundary of the narrow type by one of its ulps, and a program may flush
  # the narrow type's subnormals to zero.
  wide, narrow = (np.asarray(v, np.float32) for v in (rounded, x))
  finfo = jnp.finfo(dtype)
  bound = float(finfo.eps) * np.abs(wide) + float(finfo.smallest_normal)
  assert np.all(np.abs(narrow - wide) <= bound), np.max(np.abs(narrow - wide) / bound)
  assert np.mean(narrow == wide) > 0.999
  assert_p_values({**moment_p_values(x), **goodness_of_fit_p_values(x, dtype), **tail_p_values(x)})


# --- On a mesh -------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mesh_draws(tmp_path_factory):
  """Runs ``tests/random_on_mesh.py`` on 8 simulated devices and loads what it saved."""
  out = tmp_path_factory.mktemp("mesh") / "draws.npz"
  flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
  env = dict(
    os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}"
  )
  result = subprocess.run(
    [sys.executable, "tests/random_on_mesh.py", str(out)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return dict(np.load(out))


def test_draws_on_a_mesh(mesh_draws):
  """Both generators on 8 devices, sharded as columns, blocks or FSDP params under explicit
  axes: the same numbers as on one device, each device hashing only its shard; the 8 shards of a
  draw, and the draws of 8 devices with keys folded with their index, pass the battery."""
  for name in ("counter_normal", "jax"):
    for layout in ("columns", "blocks"):
      np.testing.assert_allclose(
        mesh_draws[f"{name}/{layout}"], mesh_draws[f"{name}/unsharded"], rtol=1e-5, atol=1e-6
      )
    for leaf in ("kernel", "embedding", "odd"):
      np.testing.assert_allclose(
        mesh_draws[f"{name}/explicit/{leaf}"],
        mesh_draws[f"{name}/explicit/{leaf}/unsharded"],
        rtol=1e-5,
        atol=1e-7,
      )
    for layout in ("columns", "blocks", "explicit"):
      largest = int(mesh_draws[f"{name}/{layout}/largest_u32"])
      assert largest <= int(mesh_draws[f"{name}/{layout}/shard_size"]), (name, layout, largest)
    blocks = mesh_draws[f"{name}/blocks"].reshape(2, 256, 4, 256).transpose(0, 2, 1, 3)
    p_values = {}
    for kind, parts in (
      ("shards", list(blocks.reshape(8, -1).astype(np.float64))),
      ("devices", list(mesh_draws[f"{name}/per_device"].reshape(8, -1).astype(np.float64))),
    ):
      p_values.update({f"{kind} {k}": p for k, p in moment_p_values(np.concatenate(parts)).items()})
      p_values.update(
        {f"{kind} {k}": p for k, p in streams_p_values(parts, max_lag=1, kind=kind).items()}
      )
    assert_p_values(p_values)


# --- counter_normal's own properties ---------------------------------------------------------


def test_tails_reach_the_24_bit_limit():
  x = draws(noise.counter_normal, jax.random.key(2), shape=(1 << 22,))
  # The radius sqrt(-2 log u) is largest at the smallest uniform, 2**-25.
  assert np.abs(x).max() <= np.sqrt(-2 * np.log(2.0**-25)) * (1 + 1e-6)


def test_cos_and_log_helpers_are_accurate():
  turns = np.linspace(-0.3, 1.0, 100_003, dtype=np.float32)
  np.testing.assert_allclose(
    np.asarray(jax.jit(noise.cos_turns)(turns)),
    np.cos(2 * np.pi * turns.astype(np.float64)),
    atol=2e-7,
  )
  uniforms = np.asarray(
    jax.jit(noise.open_unit_uniform)(np.arange(0, 2**32 - 1, 4099, dtype=np.uint32)), np.float64
  )
  assert uniforms.min() == 2.0**-25 and uniforms.max() < 1
  np.testing.assert_allclose(
    np.asarray(jax.jit(noise.log_of_normal_float)(uniforms.astype(np.float32))),
    np.log(uniforms),
    rtol=2e-7,
    atol=1e-7,
  )


@pytest.mark.parametrize("shape", [(SIZE + 1,), (1025, 1023)])
def test_box_muller_partners_of_an_odd_first_axis_are_independent(shape):
  """With an odd first axis the pairs are flat: draw j and draw P + j share a radius."""
  x = draws(noise.counter_normal, jax.random.key(20), shape=shape).ravel()
  pairs = (x.size + 1) // 2
  assert_p_values(pair_p_values(x[: x.size - pairs], x[pairs:]))


def test_same_key_same_draws_and_different_keys_differ():
  key = jax.random.key(12)
  draw = jitted(noise.counter_normal)
  chex.assert_trees_all_equal(draw(key, (5, 7), jnp.float32), draw(key, (5, 7), jnp.float32))
  assert not np.any(
    np.asarray(draw(jax.random.key(13), (64,), jnp.float32))
    == np.asarray(draw(key, (64,), jnp.float32))
  )


def test_flat_index_order_is_shape_independent():
  """Element i is a function of the key, i and the size, so reshaping a draw keeps its numbers."""
  key, draw = jax.random.key(14), jitted(noise.counter_normal)
  flat = draw(key, (24,), jnp.float32)
  # Even and odd first axes: pairs laid out as rows, and flat.
  for shape in ((2, 3, 4), (3, 8)):
    chex.assert_trees_all_equal(draw(key, shape, jnp.float32).ravel(), flat)


def test_vmap_over_keys_matches_a_loop():
  keys = jax.random.split(jax.random.key(15), 3)
  looped = jnp.stack([jitted(noise.counter_normal)(key, (5, 7), jnp.float32) for key in keys])
  vmapped = jax.jit(jax.vmap(lambda key: noise.counter_normal(key, (5, 7))))(keys)
  # Another program may contract a multiply-add into one FMA: 1-ulp differences.
  chex.assert_trees_all_close(vmapped, looped, rtol=1e-6, atol=1e-6)


def test_typed_and_legacy_keys():
  draw = jitted(noise.counter_normal)
  typed = draw(jax.random.key(16), (32,), jnp.float32)
  legacy = draw(jax.random.PRNGKey(16), (32,), jnp.float32)
  # Both hold the same threefry key data, so they draw the same numbers.
  chex.assert_trees_all_equal(typed, legacy)
  for impl in ("rbg", "unsafe_rbg"):
    x = draw(jax.random.key(16, impl=impl), (32,), jnp.float32)
    assert x.shape == (32,) and bool(jnp.all(jnp.isfinite(x)))


def test_out_sharding_on_a_one_device_mesh_with_explicit_axes():
  mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  key = jax.random.key(21)
  spec = jax.sharding.PartitionSpec(None, "x")
  with jax.set_mesh(mesh):
    x = jax.jit(functools.partial(noise.counter_normal, shape=(5, 7), out_sharding=spec))(key)
  assert x.sharding.spec == spec
  chex.assert_trees_all_close(
    x, jitted(noise.counter_normal)(key, (5, 7), jnp.float32), rtol=1e-6, atol=1e-6
  )


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(
  shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
  dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
  seed=st.integers(0, 2**31 - 1),
)
def test_shape_dtype_and_determinism(shape, dtype, seed):
  draw = jitted(noise.counter_normal)
  x = draw(jax.random.key(seed), shape, dtype)
  assert x.shape == shape and x.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(x)))
  chex.assert_trees_all_equal(x, draw(jax.random.key(seed), shape, dtype))
  # Narrow dtypes are the float32 draws, rounded.
  chex.assert_trees_all_equal(x, draw(jax.random.key(seed), shape, jnp.float32).astype(dtype))


def test_float64_has_52_bit_uniforms():
  uniforms = special.ndtr(draws(noise.counter_normal, jax.random.key(18), (1 << 16,), jnp.float64))
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
  default = inspect.signature(ivon_optax.sample_params).parameters["sampler"].default
  assert default is ivon_optax.random.counter_normal
  _, jax_noise = jitted_sample_params(jax.random.normal)(key, state, params)
  sigma = ivon_optax.posterior_std(state, params)
  expected = jax.tree.map(
    lambda s, n: s * n, sigma, optax.tree.random_like(key, params, sampler=jax.random.normal)
  )
  chex.assert_trees_all_close(jax_noise, expected)
