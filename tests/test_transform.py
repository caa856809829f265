"""Optax-native behaviour of ``ivon`` / ``scale_by_ivon``."""

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import loss_fn
from helpers import make_batch
from helpers import make_params
from helpers import train_step

import ivon_optax

LR, ESS = 0.05, 1000.0


def run(tx, params, steps=5, state=None):
  state = tx.init(params) if state is None else state
  step = jax.jit(functools.partial(train_step, tx))
  for index in range(steps):
    params, state = step(params, state, jax.random.key(index), make_batch(index))
  return params, state


def test_state_is_a_stable_namedtuple_of_arrays(params):
  tx = ivon_optax.ivon(LR, ESS)
  state = tx.init(params)
  ivon_state = ivon_optax.find_ivon_state(state)
  assert isinstance(ivon_state, ivon_optax.IVONState)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))
  assert ivon_state.count.dtype == jnp.int32 and ivon_state.count.shape == ()
  _, new_state = run(tx, params, steps=2, state=state)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  jitted_state = jax.jit(tx.init)(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(jitted_state, state)
  assert int(ivon_optax.find_ivon_state(new_state).count) == 2


def test_no_recompilation(params):
  tx = ivon_optax.ivon(LR, ESS)
  step = jax.jit(functools.partial(train_step, tx))
  state = tx.init(params)
  for index in range(3):
    params, state = step(params, state, jax.random.key(index), make_batch(index))
  assert step._cache_size() == 1


def test_usable_as_scan_carry(params):
  tx = ivon_optax.ivon(LR, ESS)
  keys = jax.random.split(jax.random.key(0), 4)
  batches = jax.vmap(make_batch)(jnp.arange(4))

  def body(carry, inputs):
    key, batch = inputs
    return train_step(tx, *carry, key, batch), None

  (scanned, scanned_state), _ = jax.lax.scan(body, (params, tx.init(params)), (keys, batches))
  looped, looped_state = params, tx.init(params)
  for index in range(4):
    looped, looped_state = train_step(
      tx, looped, looped_state, keys[index], jax.tree.map(lambda x, i=index: x[i], batches)
    )
  chex.assert_trees_all_close(scanned, looped, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(scanned_state, looped_state, rtol=1e-5, atol=1e-6)


def test_inject_hyperparams_matches_and_can_change_the_step_hyperparameters(params):
  direct, _ = run(ivon_optax.ivon(LR, ESS, hess_init=0.5, clip_radius=10.0), params)
  injected_tx = optax.inject_hyperparams(ivon_optax.ivon)(
    LR, ESS, hess_init=0.5, beta1=0.9, beta2=0.99999, clip_radius=10.0
  )
  injected, state = run(injected_tx, params)
  chex.assert_trees_all_close(injected, direct, rtol=1e-6, atol=1e-7)

  # Changing the step's hyperparameters between steps acts like a fresh ivon()
  # with them, from the same IVON state.
  new_values = dict(learning_rate=0.2, beta1=0.5, beta2=0.99, clip_radius=0.3)
  for name, value in new_values.items():
    state.hyperparams[name] = jnp.asarray(value, jnp.float32)
  ivon_state = ivon_optax.find_ivon_state(state)
  injected_next, injected_state = run(injected_tx, injected, steps=1, state=state)
  reference_tx = ivon_optax.ivon(new_values.pop("learning_rate"), ESS, hess_init=0.5, **new_values)
  expected, expected_state = run(
    reference_tx, injected, steps=1, state=(ivon_state, optax.EmptyState())
  )
  chex.assert_trees_all_close(injected_next, expected, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(
    ivon_optax.find_ivon_state(injected_state), expected_state[0], rtol=1e-6
  )
  unchanged, _ = run(
    ivon_optax.ivon(LR, ESS, hess_init=0.5, clip_radius=10.0),
    injected,
    steps=1,
    state=(ivon_state, optax.EmptyState()),
  )
  assert not np.allclose(injected_next["out"]["kernel"], unchanged["out"]["kernel"])


def test_gradient_transforms_before_ivon(params):
  """``clip_by_global_norm`` before IVON equals IVON on clipped gradients."""
  tx = ivon_optax.ivon(LR, ESS)
  chained = optax.chain(optax.clip_by_global_norm(1e-3), ivon_optax.ivon(LR, ESS))
  state, chained_state = tx.init(params), chained.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), chained_state, params)
  grads = jax.grad(loss_fn)(sampled, make_batch(0))
  clipped, _ = optax.clip_by_global_norm(1e-3).update(grads, optax.EmptyState())
  expected, _ = tx.update(clipped, state, params, noise=noise)
  actual, _ = chained.update(grads, chained_state, params, noise=noise)
  chex.assert_trees_all_close(actual, expected)
  assert optax.tree.norm(clipped) < optax.tree.norm(grads)


def test_apply_if_finite_skips_non_finite_steps(params):
  tx = optax.apply_if_finite(ivon_optax.ivon(LR, ESS), max_consecutive_errors=5)
  state = tx.init(params)
  _, state = run(tx, params, steps=1, state=state)
  _, noise = ivon_optax.sample_params(jax.random.key(1), state, params)
  bad_grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  updates, new_state = jax.jit(tx.update)(bad_grads, state, params, noise=noise)
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  assert int(new_state.notfinite_count) == 1


def test_multisteps_with_one_sample_per_step_equals_mean_gradient(params):
  """MultiSteps accumulates micro-batch gradients at one weight sample."""
  every_k = 3
  multi = optax.MultiSteps(ivon_optax.ivon(LR, ESS), every_k_schedule=every_k)
  tx = ivon_optax.ivon(LR, ESS)
  multi_state, state = multi.init(params), tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), multi_state, params)
  micro_grads = [jax.grad(loss_fn)(sampled, make_batch(i)) for i in range(every_k)]
  update_fn = jax.jit(multi.update)
  for grads in micro_grads:
    multi_updates, multi_state = update_fn(grads, multi_state, params, noise=noise)
  mean_grads = jax.tree.map(lambda *g: sum(g) / every_k, *micro_grads)
  updates, _ = tx.update(mean_grads, state, params, noise=noise)
  chex.assert_trees_all_close(multi_updates, updates, rtol=1e-5, atol=1e-8)
  assert int(ivon_optax.find_ivon_state(multi_state).count) == 1


def test_bf16_params_keep_dtype_and_state_is_float32():
  params = make_params(jnp.bfloat16)
  tx = ivon_optax.ivon(LR, ESS)
  new_params, state = run(tx, params, steps=2)
  chex.assert_trees_all_equal_dtypes(new_params, params)
  ivon_state = ivon_optax.find_ivon_state(state)
  for leaf in jax.tree.leaves((ivon_state.momentum, ivon_state.hess)):
    assert leaf.dtype == jnp.float32
  _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  updates, _ = tx.update(params, state, params, noise=noise)
  chex.assert_trees_all_equal_dtypes(updates, params)
  with pytest.warns(UserWarning, match="state_dtype"):
    wide = ivon_optax.ivon(LR, ESS, state_dtype=jnp.bfloat16).init(params)
  assert jax.tree.leaves(ivon_optax.find_ivon_state(wide).hess)[0].dtype == jnp.bfloat16


def test_mixed_dtypes_in_one_tree():
  params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
  tx = ivon_optax.ivon(LR, ESS)
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  chex.assert_trees_all_equal_dtypes(sampled, params)
  chex.assert_trees_all_equal_dtypes(noise, params)
  updates, _ = tx.update(params, state, params, noise=noise)
  chex.assert_trees_all_equal_dtypes(updates, params)


def test_weight_decay_mask_follows_gpt2_recipe(params):
  no_decay_on_vectors = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  tx = ivon_optax.ivon(LR, ESS, weight_decay=0.1, weight_decay_mask=no_decay_on_vectors)
  state = tx.init(params)
  decay = ivon_optax.find_ivon_state(state).prior_precision
  assert float(decay["dense"]["kernel"]) == pytest.approx(0.1)
  assert float(decay["dense"]["bias"]) == 0.0
  # A masked-out leaf steps exactly like a run with weight_decay=0.
  _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  grads = jax.grad(loss_fn)(params, make_batch(0))
  updates, _ = tx.update(grads, state, params, noise=noise)
  undecayed = ivon_optax.ivon(LR, ESS, weight_decay=0.0)
  expected, _ = undecayed.update(grads, undecayed.init(params), params, noise=noise)
  chex.assert_trees_all_close(updates["out"]["bias"], expected["out"]["bias"])
  assert not np.allclose(updates["out"]["kernel"], expected["out"]["kernel"])


@pytest.mark.parametrize(
  "name,value",
  [
    ("ess", 0.0),
    ("hess_init", 0.0),
    ("beta1", 1.5),
    ("beta2", -0.1),
    ("weight_decay", -1.0),
    ("clip_radius", 0.0),
    ("learning_rate", -1.0),
  ],
)
def test_rejects_invalid_hyperparameters(name, value):
  kwargs = dict(learning_rate=LR, ess=ESS)
  kwargs[name] = value
  with pytest.raises(ValueError, match=f"`{name}`"):
    ivon_optax.ivon(**kwargs)


def test_rejects_unknown_hess_approx():
  with pytest.raises(ValueError, match="`hess_approx`"):
    ivon_optax.ivon(LR, ESS, hess_approx="diag")


def test_update_without_noise_or_params_says_what_to_pass(params):
  tx = ivon_optax.ivon(LR, ESS)
  state = tx.init(params)
  with pytest.raises(ValueError, match="noise=noise"):
    tx.update(params, state, params)
  _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  with pytest.raises(ValueError, match="noise=noise"):
    tx.update(params, state, noise=noise)


@pytest.mark.parametrize("argument", ["noise", "grads"])
def test_update_rejects_mismatched_trees(params, argument):
  tx = ivon_optax.ivon(LR, ESS)
  state = tx.init(params)
  _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  trees = {"noise": noise, "grads": params}
  wrong_shape = jax.tree.map(lambda x: x, trees[argument])
  wrong_shape["out"]["kernel"] = jnp.zeros((8, 2))
  wrong_structure = {"dense": trees[argument]["dense"]}
  for bad in (wrong_shape, wrong_structure):
    kwargs = dict(trees, **{argument: bad})
    with pytest.raises(ValueError, match=f"`{argument}`"):
      tx.update(kwargs["grads"], state, params, noise=kwargs["noise"])


def test_low_precision_injected_hyperparameters_are_rejected():
  params = make_params(jnp.bfloat16)
  tx = optax.inject_hyperparams(ivon_optax.ivon)(LR, ESS)
  state = tx.init(params)
  _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  with pytest.raises(ValueError, match="hyperparam_dtype=jnp.float32"):
    tx.update(params, state, params, noise=noise)
  safe = optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)(LR, ESS)
  _, state = run(safe, params, steps=1)
  assert float(state.hyperparams["beta2"]) == np.float32(0.99999) < 1.0


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(
  log_scale=st.floats(-3.0, 1.0),
  beta2=st.sampled_from([0.9, 0.999, 0.99999]),
  weight_decay=st.sampled_from([0.0, 1e-6, 1e-4, 1e-1]),
  hess_approx=st.sampled_from(["price", "gradsq"]),
  dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
  seed=st.integers(0, 2**16),
)
def test_precision_stays_positive_under_extreme_gradients(
  log_scale, beta2, weight_decay, hess_approx, dtype, seed
):
  """h + weight_decay > 0 after 300 steps of spiky, sign-flipping gradients.

  Gradient magnitudes span 10^(log_scale +- 2), so single steps move the
  Price estimate far below zero and the squared-gradient one far above h.
  """
  lowest_precision, precision = _spiky_run(
    log_scale, beta2, weight_decay, seed, hess_approx=hess_approx, dtype=dtype
  )
  assert bool(jnp.all(lowest_precision > 0)), lowest_precision
  assert bool(jnp.all(jnp.isfinite(precision)))


@functools.partial(jax.jit, static_argnames=("hess_approx", "dtype"))
def _spiky_run(log_scale, beta2, weight_decay, seed, *, hess_approx, dtype):
  """300 IVON steps on spiky gradients; hyperparameters traced, so one compile per dtype."""
  params = {"w": jnp.zeros((64,), dtype)}
  tx = ivon_optax.ivon(
    0.1, 1e4, beta2=beta2, weight_decay=weight_decay, hess_init=0.5, hess_approx=hess_approx
  )

  def body(state, step_key):
    sign_key, spike_key, sample_key = jax.random.split(step_key, 3)
    _, noise = ivon_optax.sample_params(sample_key, state, params)
    spikes = 10.0 ** (log_scale + jax.random.uniform(spike_key, (64,), minval=-2, maxval=2))
    grads = {"w": (spikes * jax.random.normal(sign_key, (64,))).astype(dtype)}
    _, state = tx.update(grads, state, params, noise=noise)
    ivon_state = ivon_optax.find_ivon_state(state)
    return state, jnp.min(ivon_state.hess["w"] + ivon_state.prior_precision["w"])

  keys = jax.random.split(jax.random.key(seed), 300)
  state, lowest_precision = jax.lax.scan(body, tx.init(params), keys)
  ivon_state = ivon_optax.find_ivon_state(state)
  return lowest_precision, ivon_state.hess["w"] + ivon_state.prior_precision["w"]
