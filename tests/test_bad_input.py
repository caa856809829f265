"""Bad input: each row must raise a clear error or give NaN, never a wrong result."""

import functools
import warnings

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ivon_optax

LR, ESS = 0.1, 100.0


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.zeros(2)}


def _step(tx, params, grads=None, key=0, state=None):
  state = tx.init(params) if state is None else state
  _, noise = ivon_optax.sample_params(jax.random.key(key), state, params)
  grads = jax.tree.map(jnp.ones_like, params) if grads is None else grads
  return tx.update(grads, state, params, noise=noise)


def _build(**kwargs):
  return ivon_optax.ivon(**{"learning_rate": LR, "ess": ESS, **kwargs})


def _update_with(state, params=None):
  params = _params() if params is None else params
  return ivon_optax.scale_by_ivon(ESS).update(params, state, params, noise=params)


def _empty_average():
  params = _params()
  tx = _build()
  average = ivon_optax.init_sample_average(params)
  return tx.update(average.grads, tx.init(params), params, samples=average)


def _both_noise_and_samples():
  params = _params()
  tx = _build()
  average = ivon_optax.add_sample(ivon_optax.init_sample_average(params), params, params)
  return tx.update(params, tx.init(params), params, noise=params, samples=average)


def _mask(mask):
  return _step(_build(weight_decay_mask=mask), _params())


def _injected_mask_callable():
  tx = optax.inject_hyperparams(ivon_optax.ivon)(
    LR, ESS, weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  )
  return _step(tx, _params())


def _average_samples_of_two_sizes():
  grads = {"a": jnp.ones((2, 3)), "b": jnp.ones((5, 3))}
  return ivon_optax.average_samples(grads, grads)


def _complex(where):
  params = _params()
  if where == "params":
    return _build().init({"w": jnp.ones(2, jnp.complex64)})
  grads = dict(params, b=jnp.ones(2, jnp.complex64))
  return _step(_build(), params, grads=grads)


def _check_other_models_sharding():
  state = _build().init({"w": jnp.ones(3)})
  return ivon_optax.sharding.check_state_sharding(state, {"w": jnp.ones((3, 2))})


def _init_with_prior(mean=None, precision=1.0, params=None):
  params = _params() if params is None else params
  return _build(prior=ivon_optax.GaussianPrior(mean, precision)).init(params)


def _with_first_entry(tree, value):
  return jax.tree.map(lambda leaf: leaf.at[(0,) * leaf.ndim].set(value), tree)


def _update_with_transform(state_kwargs, transform_kwargs):
  """A state made by one transform, updated by another over the same params."""
  params = _params()
  state = _build(**state_kwargs).init(params)
  return _step(_build(**transform_kwargs), params, state=state)


def _posterior_prior(ess=ESS):
  """A posterior handed over as a prior: precision ess * (h + delta) / ess = 25 per element."""
  params = _params()
  state = _build(learning_rate=0.01, hess_init=25.0).init(params)
  return ivon_optax.posterior_as_prior(state, params, ess=ess)


def _stack(tree, members=2):
  return jax.tree.map(lambda leaf: jnp.stack([leaf] * members), tree)


def _stacked():
  params = _stack(_params())
  return jax.vmap(_build().init)(params), params


def _multi_steps_states(micro_steps):
  """A MultiSteps(ivon) state after ``micro_steps`` micro-steps (all at one sample)."""
  params = _params()
  tx = optax.MultiSteps(_build(), every_k_schedule=4)
  state = tx.init(params)
  _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  for _ in range(micro_steps):
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params, noise=noise)
  return tx, state, params


def _fresh_sample_mid_accumulation():
  _, state, params = _multi_steps_states(1)
  return ivon_optax.sample_params(jax.random.key(1), state, params)


def _rescaled_schedule_over_the_limit():
  """A schedule that rises above 2 / (h0 + delta) refuses the step where it does."""
  tx = _build(learning_rate=optax.linear_schedule(0.5, 3.0, 4), hess_init=1.0)
  params, state = _params(), None
  for step in range(4):
    updates, state = _step(tx, params, key=step, state=state)
  return updates


# (id, call, exception type, message fragment). Each row failed silently or with
# a raw error before it was handled.
RAISING = [
  ("ess_numpy_0d", lambda: _build(ess=np.array(-10.0)), ValueError, "`ess`"),
  ("lr_numpy_0d", lambda: _build(learning_rate=np.array(-0.1)), ValueError, "`learning_rate`"),
  ("hess_init_inf", lambda: _build(hess_init=float("inf")), ValueError, "`hess_init`"),
  ("ess_overflows_float32", lambda: _build(ess=1e39), ValueError, "`ess`"),
  ("beta1_one_with_debias", lambda: _build(beta1=1.0), ValueError, "debias=True"),
  ("ess_string", lambda: _build(ess="10"), TypeError, "`ess` must be a real number"),
  ("ess_vector", lambda: _build(ess=jnp.ones(3)), TypeError, "`ess` must be a scalar"),
  ("state_dtype_int32", lambda: _build(state_dtype=jnp.int32), TypeError, "`state_dtype`"),
  ("adam_state", lambda: _update_with(optax.adam(0.1).init(_params())), TypeError, "`state`"),
  (
    "state_of_other_shapes",
    lambda: _update_with(
      ivon_optax.scale_by_ivon(ESS).init({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
    ),
    ValueError,
    "`params`",
  ),
  (
    "state_of_a_vector_for_a_matrix",
    lambda: _update_with(
      ivon_optax.scale_by_ivon(ESS).init({"w": jnp.ones(2)}), {"w": jnp.ones((3, 2))}
    ),
    ValueError,
    "`params`",
  ),
  ("empty_sample_average", _empty_average, ValueError, "count 0"),
  ("noise_and_samples", _both_noise_and_samples, ValueError, "not both"),
  ("mask_wrong_structure", lambda: _mask({"w": True}), ValueError, "`weight_decay_mask`"),
  (
    "mask_per_element",
    lambda: _mask({"w": np.ones((3, 2), bool), "b": True}),
    ValueError,
    "per-element",
  ),
  ("mask_callable_injected", _injected_mask_callable, TypeError, "static_args"),
  ("average_samples_sizes", _average_samples_of_two_sizes, ValueError, "leading sample axes"),
  ("complex_params", lambda: _complex("params"), TypeError, "complex"),
  ("complex_grads", lambda: _complex("grads"), TypeError, "`grads`"),
  ("sharding_other_model", _check_other_models_sharding, ValueError, "`params`"),
  # Priors: the values are checked in the state's dtype, after the cast.
  (
    "prior_mean_nan",
    lambda: _init_with_prior(mean=_with_first_entry(_params(), jnp.nan)),
    ValueError,
    "`prior.mean`",
  ),
  (
    "prior_mean_inf",
    lambda: _init_with_prior(mean=_with_first_entry(_params(), jnp.inf)),
    ValueError,
    "`prior.mean`",
  ),
  (
    "prior_precision_overflows_float32",
    lambda: _init_with_prior(precision=1e39),
    ValueError,
    "`prior.precision`.*float32",
  ),
  ("prior_precision_string", lambda: _init_with_prior(precision="1.0"), TypeError, "real numbers"),
  (
    "prior_precision_vector_for_two_leaves",
    lambda: _init_with_prior(precision=jnp.ones(2)),
    ValueError,
    "`prior.precision`",
  ),
  (
    "posterior_as_prior_ess_inf",
    lambda: _posterior_prior(ess=float("inf")),
    ValueError,
    "`ess`",
  ),
  ("posterior_as_prior_ess_vector", lambda: _posterior_prior(ess=jnp.ones(2)), TypeError, "`ess`"),
  (
    "posterior_as_prior_ess_vector_jit",
    lambda: jax.jit(_posterior_prior)(jnp.ones(2)),
    TypeError,
    "`ess` must be a scalar",
  ),
  # A state made under one prior, updated by a transform with another.
  (
    "state_without_prior_mean",
    lambda: _update_with_transform({}, dict(prior=ivon_optax.GaussianPrior(_params(), 1.0))),
    ValueError,
    "without a prior mean",
  ),
  (
    "state_with_another_prior_mean",
    lambda: _update_with_transform(
      dict(prior=ivon_optax.GaussianPrior(_params(), 1.0)),
      dict(prior=ivon_optax.GaussianPrior(jax.tree.map(jnp.ones_like, _params()), 1.0)),
    ),
    ValueError,
    "prior",
  ),
  (
    "state_with_per_leaf_precision_given_per_element",
    lambda: _update_with_transform(
      dict(prior=ivon_optax.GaussianPrior(None, {"w": 1.0, "b": 1.0})),
      dict(prior=ivon_optax.GaussianPrior(None, jax.tree.map(jnp.ones_like, _params()))),
    ),
    ValueError,
    "prior",
  ),
  (
    "prior_precision_tree_unlike_the_state",
    lambda: _update_with_transform(
      dict(prior=ivon_optax.GaussianPrior(None, 1.0)),
      dict(prior=ivon_optax.GaussianPrior(None, {"w": 1.0})),
    ),
    ValueError,
    "`prior.precision`",
  ),
  # rescale_lr multiplies the step by h0 + delta: at lr * (h0 + delta) >= 2 it diverges.
  (
    "rescale_lr_with_a_posterior_prior",
    lambda: _build(prior=_posterior_prior()),
    ValueError,
    "`learning_rate`=0.1 with rescale_lr=True.*rescale_lr=False",
  ),
  ("rescale_lr_with_weight_decay_25", lambda: _build(weight_decay=25.0), ValueError, "< 0.07692"),
  (
    "rescale_lr_schedule_over_the_limit",
    _rescaled_schedule_over_the_limit,
    ValueError,
    "`learning_rate`=2.",
  ),
  # A stack of ensemble members' states where one is expected.
  (
    "stacked_state_update",
    lambda: _update_with(jax.vmap(ivon_optax.scale_by_ivon(ESS).init)(_stack(_params()))),
    ValueError,
    "stack of IVON states",
  ),
  (
    "stacked_state_sample_params",
    lambda: ivon_optax.sample_params(jax.random.key(0), *_stacked()),
    ValueError,
    "stack of IVON states",
  ),
  (
    "stacked_state_posterior_std",
    lambda: ivon_optax.posterior_std(*_stacked()),
    ValueError,
    "jax.vmap",
  ),
  (
    "stacked_state_posterior_as_prior",
    lambda: ivon_optax.posterior_as_prior(*_stacked(), ess=ESS),
    ValueError,
    "stack of IVON states",
  ),
  # optax.MultiSteps hands IVON the mean gradient of k micro-steps and the last noise.
  (
    "multisteps_fresh_sample_mid_accumulation",
    _fresh_sample_mid_accumulation,
    ValueError,
    "MultiSteps between micro-steps",
  ),
  (
    "scale_posterior_vector_tau",
    lambda: ivon_optax.calibration.scale_posterior(_build().init(_params()), jnp.ones(2)),
    TypeError,
    "`scale` must be a scalar",
  ),
  (
    "scale_posterior_vector_tau_jit",
    lambda: jax.jit(ivon_optax.calibration.scale_posterior)(_build().init(_params()), jnp.ones(2)),
    TypeError,
    "`scale` must be a scalar",
  ),
]


@pytest.mark.parametrize(
  "call,error,fragment", [r[1:] for r in RAISING], ids=[r[0] for r in RAISING]
)
def test_bad_input_raises_a_clear_error(call, error, fragment):
  with pytest.raises(error, match=fragment):
    call()


def test_low_precision_state_dtype_warns():
  with pytest.warns(UserWarning, match="state_dtype=None"):
    _build(state_dtype=jnp.bfloat16)


# --- Traced invalid values give NaN, never a plausible step ----------------------


def _injected(name, value):
  """One jitted step with ``name`` injected as ``value``; returns (updates, noise)."""
  tx = optax.inject_hyperparams(ivon_optax.ivon)(
    LR, ESS, hess_init=1.0, beta2=0.99999, weight_decay=1e-4
  )
  params = _params()
  state = tx.init(params)
  state.hyperparams[name] = jnp.asarray(value, jnp.float32)

  @jax.jit
  def step(state):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params, noise=params)
    _, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
    return updates, noise

  return step(state)


def _traced_empty_average():
  params = _params()
  tx = _build()
  average = ivon_optax.init_sample_average(params)
  return jax.jit(lambda a: tx.update(a.grads, tx.init(params), params, samples=a)[0])(average)


def _traced_init(name, value):
  """A state initialized under jit with ``name`` traced as ``value``: its samples."""
  params = _params()

  @jax.jit
  def sample(value):
    state = ivon_optax.ivon(LR, **{"ess": ESS, name: value}).init(params)
    return ivon_optax.sample_params(jax.random.key(0), state, params)[1]

  return sample(jnp.asarray(value, jnp.float32))


NAN = [
  # A changed (or invalid) posterior argument makes the step NaN: the state is its home.
  ("ess_negative", lambda: _injected("ess", -10.0)[0]),
  ("ess_inf", lambda: _injected("ess", np.inf)[0]),
  ("learning_rate_negative", lambda: _injected("learning_rate", -0.1)[0]),
  ("beta2_above_one", lambda: _injected("beta2", 1.5)[0]),
  ("weight_decay_negative", lambda: _injected("weight_decay", -1.0)[0]),
  ("hess_init_negative", lambda: _injected("hess_init", -1.0)[0]),
  # Traced invalid values at init reach sigma, hence every sample.
  ("ess_negative_at_init", lambda: _traced_init("ess", -10.0)),
  ("weight_decay_negative_at_init", lambda: _traced_init("weight_decay", -1.0)),
  ("hess_init_nan_at_init", lambda: _traced_init("hess_init", np.nan)),
  ("empty_sample_average_jit", _traced_empty_average),
  # A rate at or above the limit 2 / (h0 + delta) of the rescaled step.
  ("learning_rate_over_the_rescale_limit", lambda: _injected("learning_rate", 2.5)[0]),
  # A fresh sample between MultiSteps micro-steps.
  (
    "multisteps_fresh_sample_jit",
    lambda: jax.jit(ivon_optax.sample_params)(jax.random.key(1), *_multi_steps_states(1)[1:])[1],
  ),
]


@pytest.mark.parametrize("call", [r[1] for r in NAN], ids=[r[0] for r in NAN])
def test_traced_bad_input_gives_nan(call):
  leaves = jax.tree.leaves(call())
  assert leaves and all(bool(jnp.all(jnp.isnan(leaf))) for leaf in leaves)


@pytest.mark.parametrize("name, value", [("ess", ESS), ("learning_rate", 0.2), ("beta2", 0.99)])
def test_valid_injected_values_give_no_nan(name, value):
  updates, noise = _injected(name, value)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((updates, noise)))


# --- Silent wrong results that now work -------------------------------------------


def test_injected_mask_works_with_static_args_or_as_a_pytree():
  params = _params()
  decay_on_matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  expected = ivon_optax.find_ivon_state(_build(weight_decay_mask=decay_on_matrices).init(params))
  for tx in (
    optax.inject_hyperparams(ivon_optax.ivon, static_args=("weight_decay_mask",))(
      LR, ESS, weight_decay_mask=decay_on_matrices
    ),
    optax.inject_hyperparams(ivon_optax.ivon)(LR, ESS, weight_decay_mask={"w": True, "b": False}),
  ):
    _, state = _step(tx, params)
    decay = ivon_optax.find_ivon_state(state).prior_precision
    chex.assert_trees_all_equal(decay, expected.prior_precision)
    assert float(decay["w"]) > 0 and float(decay["b"]) == 0


def test_integer_and_boolean_leaves_are_never_perturbed_or_updated():
  params = {
    "w": jnp.ones(3),
    "index": jnp.arange(1000, dtype=jnp.int32),
    "flag": jnp.array([True, False]),
  }
  tx = _build(learning_rate=1.0, ess=1.0, hess_init=1e-3)  # sigma ~ 30: noise would show
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  chex.assert_trees_all_equal(sampled["index"], params["index"])
  chex.assert_trees_all_equal(sampled["flag"], params["flag"])
  assert sampled["index"].dtype == jnp.int32
  chex.assert_trees_all_equal(noise["index"], jnp.zeros(1000, jnp.int32))
  grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2), allow_int=True)(sampled)
  updates, state = tx.update(grads, state, params, noise=noise)
  new_params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal(new_params["index"], params["index"])
  chex.assert_trees_all_equal(new_params["flag"], params["flag"])
  assert not np.allclose(new_params["w"], params["w"])
  assert isinstance(ivon_optax.find_ivon_state(state).hess["index"], optax.MaskedNode)


def test_python_float_leaf_is_learned():
  params = {"w": jnp.ones(2), "scale": 2.0}
  tx = _build()
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  grads = jax.grad(lambda p: jnp.sum(p["w"]) * p["scale"])(sampled)
  updates, _ = tx.update(grads, state, params, noise=noise)
  assert float(updates["scale"]) < 0


@pytest.mark.parametrize("container", ["masked", "partition"])
def test_prefix_masks_and_labels_work_everywhere_the_state_is_read(container):
  params = {"a": {"x": jnp.ones(3), "y": jnp.ones(2)}, "c": {"z": jnp.ones((2, 2))}}
  ivon_tx = ivon_optax.ivon(LR, ESS)
  if container == "masked":
    tx = optax.masked(ivon_tx, {"a": False, "c": True})
  else:
    tx = optax.partition(
      {"frozen": optax.set_to_zero(), "trained": ivon_tx}, {"a": "frozen", "c": "trained"}
    )
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  chex.assert_trees_all_equal(sampled["a"], params["a"])
  assert float(jnp.abs(noise["c"]["z"]).min()) > 0
  std = ivon_optax.posterior_std(state, params)
  chex.assert_trees_all_equal_shapes(std, params)
  chex.assert_trees_all_equal(std["a"], jax.tree.map(jnp.zeros_like, params["a"]))
  precision = ivon_optax.posterior_precision(state, params)
  chex.assert_trees_all_close(precision["c"]["z"], jnp.full((2, 2), ESS * 1.0001))
  mean, _ = ivon_optax.posterior(state, params)
  chex.assert_trees_all_equal(mean, params)
  updates, state = jax.jit(tx.update)(
    jax.tree.map(jnp.ones_like, params), state, params, noise=noise
  )
  logs = ivon_optax.diagnostics(state, params)
  assert int(logs["step"]) == 1
  outputs = ivon_optax.predict.sample_outputs(
    jax.random.key(1), lambda p, x: p["c"]["z"].sum() * x, state, params, jnp.ones(4), num_samples=3
  )
  assert outputs.shape == (3, 4) and bool(jnp.all(jnp.isfinite(outputs)))
  merged = ivon_optax.merging.merge_models(params, [(params, state), (params, state)])
  chex.assert_trees_all_close(merged, params)
  mesh = jax.make_mesh((1,), ("fsdp",))
  placed = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  shardings = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, placed), placed)
  ivon_optax.sharding.check_state_sharding(
    jax.jit(tx.init, out_shardings=shardings)(placed), placed
  )


# --- h never overflows into NaN ------------------------------------------------------


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
def test_huge_gradients_keep_h_sigma_and_the_step_finite(hess_approx):
  """Gradients of 1e30, and adversarial -1e20 * noise, made h inf at step 1 and NaN at step 2."""
  params = {"w": jnp.zeros(64)}
  tx = _build(ess=1e4, hess_approx=hess_approx)
  adam = optax.adam(0.1)
  state, adam_state = tx.init(params), adam.init(params)
  for step in range(3):
    _, noise = ivon_optax.sample_params(jax.random.key(step), state, params)
    for grads in ({"w": jnp.full(64, 1e30)}, {"w": -1e20 * jnp.sign(noise["w"])}):
      updates, state = tx.update(grads, state, params, noise=noise)
      adam_updates, adam_state = adam.update(grads, adam_state, params)
      assert_finite(updates, state, params)
      assert bool(jnp.all(jnp.isfinite(adam_updates["w"])))


def assert_finite(updates, state, params):
  ivon_state = ivon_optax.find_ivon_state(state)
  std = ivon_optax.posterior_std(state, params)
  for name, tree in dict(
    updates=updates, hess=ivon_state.hess, momentum=ivon_state.momentum, std=std
  ).items():
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)), name


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
  log_magnitude=st.floats(-30.0, np.log10(3e38)),
  sign_pattern=st.sampled_from(["same", "flip", "adversarial"]),
  hess_approx=st.sampled_from(["price", "gradsq"]),
  seed=st.integers(0, 2**16),
)
def test_extreme_gradients_never_give_non_finite_state_or_steps(
  log_magnitude, sign_pattern, hess_approx, seed
):
  updates, hess, momentum, std = _extreme_steps(
    jnp.float32(log_magnitude), seed, sign_pattern=sign_pattern, hess_approx=hess_approx
  )
  for name, value in dict(updates=updates, hess=hess, momentum=momentum, std=std).items():
    assert bool(jnp.all(jnp.isfinite(value))), name


@functools.partial(jax.jit, static_argnames=("sign_pattern", "hess_approx"))
def _extreme_steps(log_magnitude, seed, *, sign_pattern, hess_approx):
  """20 IVON steps with gradients of magnitude 10**log_magnitude (up to 3e38)."""
  params = {"w": jnp.zeros(32)}
  tx = ivon_optax.ivon(0.5, 1e4, hess_init=0.5, beta2=0.9, hess_approx=hess_approx)
  magnitude = jnp.minimum(10.0**log_magnitude, jnp.finfo(jnp.float32).max)

  def body(state, step_key):
    sign_key, sample_key = jax.random.split(step_key)
    _, noise = ivon_optax.sample_params(sample_key, state, params)
    if sign_pattern == "same":
      direction = jnp.ones(32)
    elif sign_pattern == "flip":
      direction = jnp.sign(jax.random.normal(sign_key, (32,)))
    else:  # against the noise: drives the Price estimate down
      direction = -jnp.where(noise["w"] >= 0, 1.0, -1.0)
    updates, state = tx.update({"w": magnitude * direction}, state, params, noise=noise)
    return state, updates["w"]

  state, updates = jax.lax.scan(body, tx.init(params), jax.random.split(jax.random.key(seed), 20))
  ivon_state = ivon_optax.find_ivon_state(state)
  std = ivon_optax.posterior_std(state, params)["w"]
  return updates, ivon_state.hess["w"], ivon_state.momentum["w"], std


def test_non_finite_gradients_still_give_a_non_finite_step():
  """optax.apply_if_finite must keep seeing inf/NaN gradients."""
  params = {"w": jnp.zeros(3)}
  for bad in (jnp.inf, jnp.nan):
    updates, _ = _step(_build(), params, grads={"w": jnp.array([1.0, bad, 1.0])})
    assert not bool(jnp.isfinite(updates["w"][1])) and bool(jnp.isfinite(updates["w"][0]))


def test_no_warning_for_float32_state():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _build(state_dtype=jnp.float32)


# --- rescale_lr: the limit lr * (h0 + delta) < 2 is where the weights start to diverge --------


def _prior_pull(learning_rate, *, rescale_lr=True, steps=200):
  """|m - mu_0| after ``steps`` steps of zero gradients under a prior of precision 25.

  Without curvature from the data, h decays towards 0 (fast, with beta2 0.5),
  and each step then multiplies m - mu_0 by 1 - lr * (h0 + delta).
  """
  params = {"w": jnp.ones(4)}
  prior = ivon_optax.GaussianPrior(jax.tree.map(jnp.zeros_like, params), 25.0)
  direction = ivon_optax.scale_by_ivon(
    ESS, hess_init=1.0, beta2=0.5, prior=prior, rescale_lr=rescale_lr
  )
  # optax.scale applies the rate unchecked: the divergence the check refuses.
  tx = optax.chain(direction, optax.scale(-learning_rate))
  state = tx.init(params)

  def step(carry, _):
    params, state = carry
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zeros, state, params, noise=zeros)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, state), length=steps)
  return float(jnp.max(jnp.abs(params["w"])))


def test_the_rescaled_step_diverges_exactly_beyond_the_limit():
  limit = 2.0 / 26.0  # 2 / (h0 + delta)
  assert _prior_pull(0.9 * limit) < 1e-3  # contracts: |1 - 0.9 * 2| = 0.8 per step
  assert _prior_pull(1.1 * limit) > 1e6  # grows: |1 - 1.1 * 2| = 1.2 per step, once h ~ 0
  with pytest.raises(ValueError, match="rescale_lr=False"):
    ivon_optax.ivon(1.1 * limit, ESS, prior=ivon_optax.GaussianPrior(None, 25.0))
  ivon_optax.ivon(0.9 * limit, ESS, prior=ivon_optax.GaussianPrior(None, 25.0))
  # Without rescale_lr the step is a Newton step: lr 0.1 converges.
  assert _prior_pull(0.1, rescale_lr=False) < 1e-3
  ivon_optax.ivon(0.1, ESS, prior=_posterior_prior(), rescale_lr=False)


# --- MultiSteps: one sample per optimizer step; predictions may sample at any micro-step ---


def test_multisteps_sample_once_per_step_and_predict_at_any_micro_step():
  tx, state, params = _multi_steps_states(0)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)  # first micro-step
  for micro_step in range(1, 4):
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params, noise=noise)
    assert int(state.mini_step) == micro_step
    outputs = ivon_optax.predict.sample_outputs(
      jax.random.key(micro_step), lambda p, x: p["b"] * x, state, params, 1.0, num_samples=2
    )
    assert bool(jnp.all(jnp.isfinite(outputs)))
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params, noise=noise)
  assert int(state.mini_step) == 0 and int(ivon_optax.find_ivon_state(state).count) == 1
  ivon_optax.sample_params(jax.random.key(5), state, params)  # the next step's sample
