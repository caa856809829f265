"""Mixed precision: bfloat16 params and activations, IVON's state and hyperparameters in float32."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import ivon_optax

BETA2 = 0.99999


def test_bf16_cannot_hold_beta2_or_its_increments():
  """Why IVON keeps h and its hyperparameters in float32."""
  assert float(jnp.asarray(BETA2, jnp.bfloat16)) == 1.0
  assert float(jnp.asarray(1.0, jnp.bfloat16) + jnp.asarray(1e-5, jnp.bfloat16)) == 1.0
  assert float(jnp.asarray(BETA2, jnp.float32)) != 1.0


@pytest.mark.parametrize("param_dtype", [jnp.bfloat16, jnp.float16])
def test_state_is_float32_for_half_precision_params(param_dtype):
  params = {"w": jnp.ones((3, 2), param_dtype)}
  state = ivon_optax.ivon(0.1, ess=100.0).init(params)
  ivon_state = ivon_optax.find_ivon_state(state)
  for leaf in (
    ivon_state.momentum["w"],
    ivon_state.hess["w"],
    ivon_state.ess,
    ivon_state.prior_precision["w"],
  ):
    assert leaf.dtype == jnp.float32
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  assert sampled["w"].dtype == noise["w"].dtype == param_dtype


@pytest.mark.parametrize("param_dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_hyperparameters_are_rejected(param_dtype):
  """inject_hyperparams casts to the params' dtype unless told otherwise."""
  params = {"w": jnp.ones(3, param_dtype)}
  tx = optax.inject_hyperparams(ivon_optax.ivon)(learning_rate=0.1, ess=100.0)
  state = tx.init(params)
  assert state.hyperparams["beta2"].dtype == param_dtype
  with pytest.raises(ValueError, match=r"`beta1` arrived as .*hyperparam_dtype=jnp.float32"):
    tx.update(params, state, params, noise=params)


def test_float32_hyperparameters_keep_beta2():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)(
    learning_rate=0.1, ess=100.0
  )
  state = tx.init(params)
  assert state.hyperparams["beta2"].dtype == jnp.float32
  assert float(state.hyperparams["beta2"]) == np.float32(BETA2)
  updates, _ = tx.update(params, state, params, noise=params)
  # The float32 learning rate promotes the updates; apply_updates casts back.
  assert optax.apply_updates(params, updates)["w"].dtype == jnp.bfloat16


def test_one_minus_beta2_increment_is_kept_with_bf16_params():
  """One step: h moves by (1 - beta2) (h_hat - h) + O((1 - beta2)^2), as computed in float64."""
  ess, hess_init, weight_decay = 1000.0, 1.0, 1e-4
  tx = optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)(
    learning_rate=0.1, ess=ess, hess_init=hess_init, weight_decay=weight_decay
  )
  params = {"w": jnp.linspace(-1.0, 1.0, 16, dtype=jnp.bfloat16)}
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  grads = jax.grad(lambda p: jnp.sum(jnp.square(p["w"].astype(jnp.float32)) * 0.3))(sampled)
  _, state = tx.update(grads, state, params, noise=noise)
  hess = np.asarray(ivon_optax.find_ivon_state(state).hess["w"], np.float64)

  noise_grads = np.asarray(noise["w"], np.float64) * np.asarray(grads["w"], np.float64)
  hess_hat = ess * noise_grads * (hess_init + weight_decay)
  one_minus_beta2 = 1.0 - np.float64(np.float32(BETA2))
  expected = (
    hess_init
    + one_minus_beta2 * (hess_hat - hess_init)
    + 0.5 * one_minus_beta2**2 * (hess_init - hess_hat) ** 2 / (hess_init + weight_decay)
  )
  increments = hess - hess_init
  assert np.all(np.abs(increments) > 1e-6), increments
  # float32 h near 1 resolves 1.2e-7: allow two of its ulps on top of 1e-3 relative.
  np.testing.assert_allclose(increments, expected - hess_init, rtol=1e-3, atol=2.4e-7)
  # A bfloat16 h could not have held them.
  as_bf16 = jnp.asarray(hess_init, jnp.bfloat16) + jnp.asarray(increments, jnp.bfloat16)
  assert np.all(np.asarray(as_bf16, np.float32) == hess_init)


class MLP(nn.Module):
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, inputs):
    dense = lambda width: nn.Dense(width, dtype=self.dtype, param_dtype=self.dtype)
    hidden = nn.relu(dense(64)(inputs.astype(self.dtype)))
    return dense(10)(hidden).astype(jnp.float32)  # the loss in float32


def train_digits(dtype, num_steps=150, batch_size=64, seed=0):
  """IVON on digits, params and activations in ``dtype``.

  Returns (train loss, test accuracy, params, the state before the last step, the last state).
  """
  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  inputs = (digits.data[order] / 16.0).astype(np.float32)
  labels = digits.target[order].astype(np.int32)
  train_x, train_y, test_x, test_y = inputs[:1500], labels[:1500], inputs[1500:], labels[1500:]
  model = MLP(dtype)
  params = model.init(jax.random.key(seed), train_x[:1])["params"]
  tx = optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)(
    learning_rate=0.5, ess=1500.0, hess_init=0.5, weight_decay=1e-3
  )
  state = tx.init(params)

  def loss_fn(params, inputs, labels):
    logits = model.apply({"params": params}, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, state, step, inputs, labels):
    key = jax.random.fold_in(jax.random.key(seed), step)
    sampled, noise = ivon_optax.sample_params(key, state, params)
    grads = jax.grad(loss_fn)(sampled, inputs, labels)
    updates, state = tx.update(grads, state, params, noise=noise)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(seed)
  for index in range(num_steps):
    chosen = rng.choice(len(train_x), batch_size, replace=False)
    previous = state
    params, state = step(params, state, index, train_x[chosen], train_y[chosen])

  @jax.jit
  def evaluate(params):
    test_logits = model.apply({"params": params}, test_x)
    return loss_fn(params, train_x, train_y), jnp.mean(jnp.argmax(test_logits, -1) == test_y)

  train_loss, accuracy = map(float, evaluate(params))
  return train_loss, accuracy, params, previous, state


def test_bf16_training_reaches_the_float32_loss():
  f32_loss, f32_accuracy, _, _, _ = train_digits(jnp.float32)
  bf16_loss, bf16_accuracy, params, previous, state = train_digits(jnp.bfloat16)
  print(
    f"digits, 150 IVON steps: train loss f32 {f32_loss:.4f} bf16 {bf16_loss:.4f}; "
    f"test accuracy f32 {f32_accuracy:.3f} bf16 {bf16_accuracy:.3f}"
  )
  assert f32_loss < 0.3  # it learned
  assert abs(bf16_loss - f32_loss) < 0.15 * f32_loss + 0.02
  assert abs(bf16_accuracy - f32_accuracy) < 0.03
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  hess, hess_before = (ivon_optax.find_ivon_state(s).hess for s in (state, previous))
  for after, before in zip(jax.tree.leaves(hess), jax.tree.leaves(hess_before), strict=True):
    assert after.dtype == jnp.float32
    increments = np.asarray(after - before)
    # The last step moved every h, mostly by less than half a bfloat16 ulp of
    # h: a bfloat16 h would have rounded those increments away.
    assert np.mean(increments != 0) > 0.99
    as_bf16 = jnp.asarray(before, jnp.bfloat16) + jnp.asarray(increments, jnp.bfloat16)
    assert np.mean(np.asarray(as_bf16 == jnp.asarray(before, jnp.bfloat16))) > 0.5
