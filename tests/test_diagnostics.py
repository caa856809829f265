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
