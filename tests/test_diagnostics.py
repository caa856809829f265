"""ivon_optax.diagnostics: values on a hand-built state, jit, and a stuck vs a learning run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import init_mlp
from helpers import load_digits_splits
from helpers import train_ivon

import ivon_optax


def test_values_on_a_hand_built_state():
  params = {"a": jnp.zeros(4), "frozen": jnp.zeros(3), "count": jnp.zeros(2, jnp.int32)}
  tx = optax.masked(
    ivon_optax.ivon(0.1, ess=4.0, hess_init=1.0, weight_decay=0.0),
    {"a": True, "frozen": False, "count": True},
  )
  state = tx.init(params)
  ivon_state = ivon_optax.find_ivon_state(state)
  hess = jnp.array([1.0, 1.005, 3.0, 0.0])  # two within 1% of h0 = 1
  state = state._replace(inner_state=ivon_state._replace(hess=dict(ivon_state.hess, a=hess)))
  logs = jax.jit(ivon_optax.diagnostics)(state, params)
  assert float(logs["hess_at_init"]) == 0.5
  # h + delta is floored at float32's smallest normal number (delta = 0 here).
  precision = np.maximum(np.asarray(hess, np.float64), np.finfo(np.float32).tiny)
  np.testing.assert_allclose(logs["step_factor"], np.mean(1.0 / precision), rtol=1e-5)
  for q in (5, 50, 95):
    np.testing.assert_allclose(logs[f"hess_q{q:02d}"], np.quantile(hess, q / 100), rtol=1e-5)
    std = 1 / np.sqrt(4.0 * precision)
    np.testing.assert_allclose(logs[f"std_q{q:02d}"], np.quantile(std, q / 100), rtol=1e-4)
  assert int(logs["step"]) == 0


def test_a_stuck_run_and_a_learning_run():
  (train,) = load_digits_splits([300], seed=0)
  params = init_mlp(jax.random.key(0), [64, 16, 10])
  logs = {}
  for beta2 in (0.99999, 0.99):
    tx = ivon_optax.ivon(0.3, ess=300.0, hess_init=0.1, beta2=beta2)
    _, state = train_ivon(jax.random.key(1), tx, params, train, num_steps=100, batch_size=32)
    logs[beta2] = ivon_optax.diagnostics(state, params, learning_rate=0.3)
  stuck, learning = logs[0.99999], logs[0.99]
  assert float(stuck["hess_at_init"]) > 0.9
  assert float(learning["hess_at_init"]) < 0.5
  chex.assert_trees_all_close(stuck["effective_lr"], 0.3 * stuck["step_factor"])
  assert int(learning["step"]) == 100


def _run_logistic(tx, num_steps, seed=0):
  """IVON on a digits logistic regression (300 examples, full batch), scanned."""
  (train,) = load_digits_splits([300], seed=seed)
  x, y = jnp.asarray(train.inputs), jnp.asarray(train.labels)
  params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()
  grad_fn = ivon_optax.value_and_grad_at_sample(loss)

  def step(carry, key):
    params, state = carry
    _, grads, noise = grad_fn(key, state, params)
    updates, state = tx.update(grads, state, params, noise=noise)
    return (optax.apply_updates(params, updates), state), None

  keys = jax.random.split(jax.random.key(seed), num_steps)
  (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, keys))((params, tx.init(params)))
  return ivon_optax.diagnostics(state, params)


def test_the_reference_defaults_are_flagged_stuck_after_1k_and_50k_steps():
  """beta2 = 0.99999: after 50k steps 61% of hess_init is left, and h is still mostly it."""
  for num_steps in (1_000, 50_000):
    logs = _run_logistic(ivon_optax.ivon(0.1, ess=300.0), num_steps)
    np.testing.assert_allclose(logs["hess_init_left"], 0.99999**num_steps, rtol=1e-3)
    assert not bool(logs["learned"]), num_steps
    assert float(logs["hess_data_share"]) < 0.1
    assert int(logs["step"]) == num_steps


def test_the_recipe_learns_h_and_reports_the_data_share():
  hyperparams = ivon_optax.recipe(0.125, num_train=300, num_steps=1_000, temper=4.0)
  logs = _run_logistic(ivon_optax.ivon(0.5, **hyperparams), 1_000)
  assert bool(logs["learned"])
  np.testing.assert_allclose(
    logs["hess_init_left"], hyperparams["hess_init"] * np.exp(-3.0), rtol=0.01
  )
  assert 0.1 <= float(logs["hess_data_share"]) <= 1.0
  assert 0.0 <= float(logs["prior_only"]) <= float(logs["prior_dominant"]) <= 1.0
  assert float(logs["step_factor_max"]) <= 16.0 + 1e-3  # the recipe's bound (rho / r)**2
