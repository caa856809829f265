"""Tests for ivon_optax.flax: IVON with Flax Linen and NNX, with BatchNorm."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import ivon_optax
import ivon_optax.flax as ivon_flax

INPUTS = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
LABELS = (INPUTS.sum(-1) > 0).astype(jnp.int32)


def test_import_ivon_optax_does_not_import_flax():
  code = (
    "import sys, ivon_optax\n"
    "assert not [m for m in sys.modules if m == 'flax' or m.startswith('flax.')]\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


# --- Linen ---------------------------------------------------------------------


class LinenBatchNormNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(4)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(2)(nn.relu(x))


def _linen_state(tx=None):
  model = LinenBatchNormNet()
  variables = model.init(jax.random.key(0), INPUTS, train=False)
  return ivon_flax.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx or ivon_optax.ivon(0.2, ess=200.0, hess_init=0.5),
    collections={"batch_stats": variables["batch_stats"]},
  )


def _linen_loss(state, params):
  logits, updates = state.apply_fn(
    state.variables(params), INPUTS, train=True, mutable=["batch_stats"]
  )
  return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean(), updates


@jax.jit
def _linen_train_step(state, key):
  sampled, noise = state.sample_params(key)
  grads, updates = jax.grad(lambda p: _linen_loss(state, p), has_aux=True)(sampled)
  return state.apply_gradients(grads=grads, noise=noise, collections=updates)


# A bias that feeds BatchNorm has a structurally zero gradient: what the step
# computes for it is round-off, which differs between a jitted and an eager run
# (and between CPUs). Compare the other leaves; that bias must stay at round-off
# distance of where it started.
BATCHNORM_FED = "Dense_0/bias"
ROUND_OFF_MOVE = 1e-4  # the other leaves move by ~1e-2 in this step


def _split_batchnorm_fed(tree, fed_name=BATCHNORM_FED):
  """``({path: leaf} for the other leaves, the BatchNorm-fed bias)``."""
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  return flat, flat.pop(fed_name)


def test_linen_step_is_the_ivon_update_at_the_sample_and_updates_batch_stats():
  state = _linen_state()
  key = jax.random.key(1)
  new_state = _linen_train_step(state, key)

  sampled, noise = ivon_optax.sample_params(key, state.opt_state, state.params)
  grads, updates = jax.grad(lambda p: _linen_loss(state, p), has_aux=True)(sampled)
  steps, opt_state = state.tx.update(grads, state.opt_state, state.params, noise=noise)
  expected, fed_expected = _split_batchnorm_fed(optax.apply_updates(state.params, steps))
  actual, fed_actual = _split_batchnorm_fed(new_state.params)
  chex.assert_trees_all_close(actual, expected, rtol=1e-4, atol=1e-6)
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), actual, _split_batchnorm_fed(state.params)[0]
  )
  assert min(jax.tree.leaves(moved)) > 10 * ROUND_OFF_MOVE
  _, fed_before = _split_batchnorm_fed(state.params)
  for fed in (fed_actual, fed_expected):
    assert float(jnp.abs(fed - fed_before).max()) < ROUND_OFF_MOVE
  hess = ivon_optax.find_ivon_state(new_state.opt_state).hess
  expected_hess = ivon_optax.find_ivon_state(opt_state).hess
  chex.assert_trees_all_close(
    _split_batchnorm_fed(hess)[0], _split_batchnorm_fed(expected_hess)[0], rtol=1e-5
  )
  chex.assert_trees_all_close(new_state.collections, updates, rtol=1e-5, atol=1e-6)
  assert int(new_state.step) == 1
  stats_moved = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), state.collections, new_state.collections
  )
  assert all(jax.tree.leaves(stats_moved))


def test_linen_training_lowers_the_loss():
  state = _linen_state()
  initial = float(_linen_loss(state, state.params)[0])
  for step in range(40):
    state = _linen_train_step(state, jax.random.fold_in(jax.random.key(2), step))
  assert float(_linen_loss(state, state.params)[0]) < 0.5 * initial


def test_linen_apply_gradients_needs_the_noise():
  state = _linen_state()
  grads = jax.tree.map(jnp.zeros_like, state.params)
  with pytest.raises(ValueError, match="noise"):
    state.apply_gradients(grads=grads)


def test_linen_several_samples_per_step():
  state = _linen_state()

  def grad_at(key):
    sampled, noise = state.sample_params(key)
    return jax.grad(lambda p: _linen_loss(state, p)[0])(sampled), noise

  @jax.jit
  def step_and_expected(state):
    grads, noise = jax.vmap(grad_at)(jax.random.split(jax.random.key(3), 4))
    average = ivon_optax.average_samples(grads, noise)
    steps, _ = state.tx.update(average.grads, state.opt_state, state.params, samples=average)
    return (
      state.apply_gradients(grads=average.grads, samples=average),
      optax.apply_updates(state.params, steps),
    )

  new_state, expected = step_and_expected(state)
  assert int(new_state.step) == 1
  chex.assert_trees_all_close(new_state.params, expected)


def test_linen_sample_outputs_sample_params_only():
  state = _linen_state()
  # Move the batch statistics away from their initial values so that passing
  # them through (rather than re-initializing them) shows in the outputs.
  state = state.replace(collections=jax.tree.map(lambda s: s + 0.3, state.collections))
  key = jax.random.key(4)

  @jax.jit
  def predict(state):
    outputs = state.sample_outputs(key, INPUTS, num_samples=3, batch_size=2, train=False)
    functional = ivon_flax.sample_linen_outputs(
      key, state.apply_fn, state.opt_state, state.variables(), INPUTS, num_samples=3, train=False
    )
    expected = []
    for sample_key in jax.random.split(key, 3):
      sampled, _ = ivon_optax.sample_params(sample_key, state.opt_state, state.params)
      expected.append(state.apply_fn(state.variables(sampled), INPUTS, train=False))
    return outputs, functional, jnp.stack(expected)

  outputs, functional, expected = predict(state)
  chex.assert_shape(outputs, (3, 8, 2))
  chex.assert_trees_all_close(outputs, expected, atol=1e-5)
  chex.assert_trees_all_close(functional, outputs, atol=1e-6)


def test_linen_bad_variables_raise():
  state = _linen_state()
  with pytest.raises(ValueError, match="collections"):
    state.replace(collections={"params": state.params}).variables()
  with pytest.raises(ValueError, match="'params'"):
    ivon_flax.sample_linen_outputs(
      jax.random.key(0),
      state.apply_fn,
      state.opt_state,
      dict(state.collections),
      INPUTS,
      num_samples=2,
      train=False,
    )


def test_linen_posterior_is_the_optimizer_posterior():
  state = _linen_state()
  mean, std = state.posterior()
  chex.assert_trees_all_close(mean, state.params)
  chex.assert_trees_all_close(std, ivon_optax.posterior_std(state.opt_state, state.params))


# --- NNX -----------------------------------------------------------------------


class NNXBatchNormNet(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def _nnx_loss(model):
  return optax.softmax_cross_entropy_with_integer_labels(model(INPUTS), LABELS).mean()


@nnx.jit
def _nnx_train_step(model, optimizer, key):
  sampled_model, noise = ivon_flax.sample_nnx_model(key, optimizer, model)
  loss, grads = nnx.value_and_grad(_nnx_loss)(sampled_model)
  optimizer.update(model, grads, noise=noise)
  return loss


def _nnx_setup():
  model = NNXBatchNormNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ivon_optax.ivon(0.2, ess=200.0, hess_init=0.5), wrt=nnx.Param)
  return model, optimizer


def test_nnx_sampling_is_sample_params_on_the_nnx_state():
  model, optimizer = _nnx_setup()
  key = jax.random.key(1)
  sampled, noise = ivon_flax.sample_nnx_params(key, optimizer, model)
  params, opt_state = ivon_flax.nnx_params_and_state(optimizer, model)
  expected_sampled, expected_noise = ivon_optax.sample_params(key, opt_state, params)
  chex.assert_trees_all_close(sampled, expected_sampled)
  chex.assert_trees_all_close(noise, expected_noise)
  _, std = ivon_optax.posterior(opt_state, params)
  chex.assert_trees_all_close(std["hidden"]["kernel"], jnp.full((3, 4), (200.0 * 0.5001) ** -0.5))


def test_nnx_step_takes_the_gradient_at_the_sample_and_moves_the_mean():
  model, optimizer = _nnx_setup()
  key = jax.random.key(2)
  params, opt_state = ivon_flax.nnx_params_and_state(optimizer, model)
  graphdef, _, batch_stats = nnx.split(model, nnx.Param, ...)
  sampled, noise = ivon_optax.sample_params(key, opt_state, params)

  def functional_loss(params):
    return _nnx_loss(nnx.merge(graphdef, params, nnx.clone(batch_stats)))

  grads = jax.grad(functional_loss)(sampled)
  steps, expected_opt_state = optimizer.tx.update(grads, opt_state, params, noise=noise)
  mean_before = nnx.state(model, nnx.BatchStat)["norm"]["mean"][...]

  _nnx_train_step(model, optimizer, key)
  new_params, new_opt_state = ivon_flax.nnx_params_and_state(optimizer, model)
  # hidden.bias feeds BatchNorm: its step is round-off (see the Linen test).
  split = lambda tree: _split_batchnorm_fed(tree, "hidden/bias")
  actual, fed_actual = split(new_params)
  expected, _ = split(optax.apply_updates(params, steps))
  chex.assert_trees_all_close(actual, expected, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(fed_actual - split(params)[1]).max()) < ROUND_OFF_MOVE
  hess = ivon_optax.find_ivon_state(new_opt_state).hess
  chex.assert_trees_all_close(
    split(hess)[0], split(ivon_optax.find_ivon_state(expected_opt_state).hess)[0], rtol=1e-5
  )
  assert int(optimizer.step[...]) == 1
  assert bool(jnp.any(model.norm.mean[...] != mean_before))


def test_nnx_training_lowers_the_loss():
  model, optimizer = _nnx_setup()
  initial = float(_nnx_loss(nnx.view(model, use_running_average=True)))
  for step in range(40):
    _nnx_train_step(model, optimizer, jax.random.fold_in(jax.random.key(3), step))
  assert float(_nnx_loss(nnx.view(model, use_running_average=True))) < 0.5 * initial


def test_nnx_sample_outputs():
  model, optimizer = _nnx_setup()
  _nnx_train_step(model, optimizer, jax.random.key(4))
  eval_model = nnx.view(model, use_running_average=True)
  key = jax.random.key(5)
  outputs = nnx.jit(
    lambda m, o, k: ivon_flax.sample_nnx_outputs(k, o, m, INPUTS, num_samples=3, batch_size=2)
  )(eval_model, optimizer, key)
  chex.assert_shape(outputs, (3, 8, 2))
  graphdef, _, batch_stats = nnx.split(eval_model, nnx.Param, ...)
  for sample, sample_key in enumerate(jax.random.split(key, 3)):
    sampled, _ = ivon_flax.sample_nnx_params(sample_key, optimizer, eval_model)
    expected = nnx.merge(graphdef, sampled, batch_stats)(INPUTS)
    chex.assert_trees_all_close(outputs[sample], expected, atol=1e-5)


class _LinenWithCounter(nn.Module):
  @nn.compact
  def __call__(self, x):
    counter = self.param("counter", lambda key: jnp.arange(4, dtype=jnp.int32))
    return nn.Dense(2)(x) + 0 * counter[:2].astype(x.dtype)


class _NNXWithCounter(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(4, 2, rngs=rngs)
    self.counter = nnx.Param(jnp.arange(4, dtype=jnp.int32))

  def __call__(self, x):
    return self.linear(x)


def test_linen_and_nnx_integer_params_are_never_perturbed_or_updated():
  x = jnp.ones((3, 4))
  model = _LinenWithCounter()
  params = model.init(jax.random.key(0), x)["params"]
  state = ivon_flax.TrainState.create(
    apply_fn=model.apply, params=params, tx=ivon_optax.ivon(0.1, ess=10.0)
  )
  sampled, noise = state.sample_params(jax.random.key(1))
  loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
  state = state.apply_gradients(grads=jax.grad(loss, allow_int=True)(sampled), noise=noise)
  np.testing.assert_array_equal(sampled["counter"], np.arange(4))
  np.testing.assert_array_equal(state.params["counter"], np.arange(4))
  assert not np.allclose(state.params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])

  module = _NNXWithCounter(nnx.Rngs(0))
  optimizer = nnx.Optimizer(module, ivon_optax.ivon(0.1, ess=10.0), wrt=nnx.Param)
  kernel = np.asarray(module.linear.kernel[...])
  sampled_module, noise = ivon_flax.sample_nnx_model(jax.random.key(2), optimizer, module)
  np.testing.assert_array_equal(sampled_module.counter[...], np.arange(4))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2), allow_int=True)(sampled_module)
  optimizer.update(module, grads, noise=noise)
  np.testing.assert_array_equal(module.counter[...], np.arange(4))
  assert not np.allclose(module.linear.kernel[...], kernel)


# --- The gradient at a sample, posterior scaling and BatchNorm statistics, NNX --------------


def test_nnx_gradient_helper_is_the_hand_written_step():
  model, optimizer = _nnx_setup()
  key = jax.random.key(6)
  grad_fn = ivon_flax.nnx_value_and_grad_at_sample(lambda m: _nnx_loss(m))
  loss, grads, noise = grad_fn(key, optimizer, nnx.clone(model))
  sampled_model, expected_noise = ivon_flax.sample_nnx_model(key, optimizer, nnx.clone(model))
  expected_loss, expected_grads = nnx.value_and_grad(_nnx_loss)(sampled_model)
  chex.assert_trees_all_equal(noise, expected_noise)
  chex.assert_trees_all_equal(grads, expected_grads)
  assert float(loss) == float(expected_loss)


def test_plain_gradient_helper_is_the_hand_written_step():
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
  state = ivon_optax.ivon(0.1, ess=50.0).init(params)
  loss_fn = lambda p, x: jnp.sum(jnp.sin(x @ p["w"]))
  x, key = jnp.ones((4, 2)), jax.random.key(7)
  value, grads, noise = ivon_optax.value_and_grad_at_sample(loss_fn)(key, state, params, x)
  sampled, expected_noise = ivon_optax.sample_params(key, state, params)
  expected_value, expected_grads = jax.value_and_grad(loss_fn)(sampled, x)
  chex.assert_trees_all_equal(
    (value, grads, noise), (expected_value, expected_grads, expected_noise)
  )


def test_nnx_posterior_scale_is_scale_posterior_on_the_plain_state():
  model, optimizer = _nnx_setup()
  eval_model = nnx.view(model, use_running_average=True)
  key = jax.random.key(8)
  outputs = ivon_flax.sample_nnx_outputs(
    key, optimizer, eval_model, INPUTS, num_samples=4, posterior_scale=0.5
  )
  params, opt_state = ivon_flax.nnx_params_and_state(optimizer, eval_model)
  graphdef, _, rest = nnx.split(eval_model, nnx.Param, ...)
  expected = ivon_optax.predict.sample_outputs(
    key,
    lambda p, x: nnx.merge(graphdef, p, rest)(x),
    ivon_optax.calibration.scale_posterior(opt_state, 0.5),
    params,
    INPUTS,
    num_samples=4,
  )
  chex.assert_trees_all_close(outputs, expected, atol=1e-6)


def test_nnx_posterior_scale_and_temperature_can_be_fitted():
  """fit_posterior_scale and fit_temperature on an NNX model's Bayesian average."""
  model, optimizer = _nnx_setup()
  for step in range(20):
    _nnx_train_step(model, optimizer, jax.random.fold_in(jax.random.key(9), step))
  eval_model = nnx.view(model, use_running_average=True)

  def predict_fn(tau):
    outputs = ivon_flax.sample_nnx_outputs(
      jax.random.key(10), optimizer, eval_model, INPUTS, num_samples=8, posterior_scale=tau
    )
    return ivon_optax.predict.predictive_log_probs(outputs)

  fit = ivon_optax.calibration.fit_posterior_scale(predict_fn, LABELS, scales=[0.25, 1.0, 4.0])
  nlls = [
    ivon_optax.metrics.negative_log_likelihood(predict_fn(t), LABELS) for t in (0.25, 1.0, 4.0)
  ]
  np.testing.assert_allclose(fit.nlls, nlls, rtol=1e-5)
  assert float(fit.scale) == [0.25, 1.0, 4.0][int(np.argmin(nlls))]
  temperature = ivon_optax.calibration.fit_temperature(predict_fn(fit.scale), LABELS)
  assert np.isfinite(float(temperature)) and float(temperature) > 0


def test_refresh_batch_stats_sets_the_batch_statistics_of_the_sampled_weights():
  model, optimizer = _nnx_setup()
  eval_model = nnx.view(model, use_running_average=True)
  sampled_model, _ = ivon_flax.sample_nnx_model(
    jax.random.key(11), optimizer, nnx.clone(eval_model)
  )
  ivon_flax.refresh_batch_stats(sampled_model, INPUTS)
  pre_norm = sampled_model.hidden(INPUTS)
  np.testing.assert_allclose(
    sampled_model.norm.mean[...], pre_norm.mean(axis=0), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    sampled_model.norm.var[...], pre_norm.var(axis=0), rtol=1e-4, atol=1e-6
  )
  assert sampled_model.norm.use_running_average and sampled_model.norm.momentum == 0.5
  # Through sample_nnx_outputs: each sample predicts with its own statistics.
  key = jax.random.key(12)
  outputs = ivon_flax.sample_nnx_outputs(
    key, optimizer, eval_model, INPUTS, num_samples=2, batch_stats_inputs=INPUTS
  )
  graphdef, _, rest = nnx.split(eval_model, nnx.Param, ...)
  for sample, sample_key in enumerate(jax.random.split(key, 2)):
    sampled, _ = ivon_flax.sample_nnx_params(sample_key, optimizer, eval_model)
    one = nnx.merge(graphdef, sampled, nnx.clone(rest))
    ivon_flax.refresh_batch_stats(one, INPUTS)
    chex.assert_trees_all_close(outputs[sample], one(INPUTS), atol=1e-5)
  with pytest.raises(ValueError, match="no nnx.BatchNorm"):
    ivon_flax.refresh_batch_stats(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), INPUTS)
