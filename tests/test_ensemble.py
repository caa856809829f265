"""Tests for ivon_optax.ensemble and vmapped ensemble training (MultiIVON)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loss_fn
from helpers import make_batch
from helpers import make_params
from helpers import train_step

import ivon_optax
import ivon_optax.ensemble

NUM_MEMBERS = 3


def _members():
  """Three members: different initializations (scaled and shifted copies of one)."""
  base = make_params()
  return [
    jax.tree.map(lambda p, k=k: 0.7 * (1.0 + 0.3 * k) * p + 0.05 * k, base)
    for k in range(NUM_MEMBERS)
  ]


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def test_vmapped_ensemble_training_equals_separate_runs():
  tx = ivon_optax.ivon(0.05, ess=200.0, hess_init=0.5)
  members = _members()
  keys = jax.random.split(jax.random.key(3), NUM_MEMBERS)  # different noise per member
  num_steps = 8

  @jax.jit
  def one_member(params, key):
    def step(carry, step):
      params, state = carry
      batch = make_batch(step)
      return train_step(tx, params, state, jax.random.fold_in(key, step), batch), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(num_steps))
    return params, state

  separate = [one_member(p, k) for p, k in zip(members, keys, strict=True)]
  together = jax.jit(jax.vmap(one_member))(_stack(members), keys)
  for k, (params, state) in enumerate(separate):
    member = jax.tree.map(lambda leaf, k=k: leaf[k], together)
    # Tolerance far above round-off (the steps move the params by ~1e-1) and far
    # below the differences between members checked next.
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), member[0], params
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      ivon_optax.find_ivon_state(member[1]).hess,
      ivon_optax.find_ivon_state(state).hess,
    )
  # The members trained apart: different params, and every member moved.
  first, second = (jax.tree.leaves(run[0]) for run in separate[:2])
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(first, second, strict=True)) > 1e-2
  assert float(loss_fn(separate[0][0], make_batch(0))) < float(loss_fn(members[0], make_batch(0)))


def _apply(params, inputs):
  return jnp.tanh(inputs @ params["dense"]["kernel"]) @ params["out"]["kernel"]


def _trained_members():
  tx = ivon_optax.ivon(0.05, ess=50.0, hess_init=0.5)
  params = _stack(_members())
  return params, jax.vmap(tx.init)(params)


def test_pooled_outputs_are_each_members_samples():
  params, states = _trained_members()
  inputs = make_batch(0)[0]
  key = jax.random.key(11)
  pooled = ivon_optax.ensemble.sample_ensemble_outputs(
    key, _apply, states, params, inputs, num_samples=4, batch_size=3
  )
  assert pooled.shape == (NUM_MEMBERS * 4, 16, 1)
  for k, member_key in enumerate(jax.random.split(key, NUM_MEMBERS)):
    member = ivon_optax.predict.sample_outputs(
      member_key,
      _apply,
      jax.tree.map(lambda leaf, k=k: leaf[k], states),
      jax.tree.map(lambda leaf, k=k: leaf[k], params),
      inputs,
      num_samples=4,
    )
    np.testing.assert_allclose(pooled[4 * k : 4 * (k + 1)], member, rtol=1e-5, atol=1e-6)
  # The members differ: the pool is not one member repeated.
  assert float(jnp.abs(pooled[:4].mean(0) - pooled[4:8].mean(0)).max()) > 1e-2


def test_pooled_log_probs_are_the_mixture_of_the_members():
  params, states = _trained_members()
  inputs = make_batch(1)[0]
  apply = lambda p, x: jnp.concatenate([_apply(p, x), -_apply(p, x)], -1)  # 2 classes
  pooled = ivon_optax.ensemble.sample_ensemble_outputs(
    jax.random.key(0), apply, states, params, inputs, num_samples=5
  )
  mixture = ivon_optax.predict.predictive_log_probs(pooled)
  per_member = jax.vmap(ivon_optax.predict.predictive_log_probs)(pooled.reshape(3, 5, 16, 2))
  np.testing.assert_allclose(jnp.exp(mixture), jnp.exp(per_member).mean(0), rtol=1e-5, atol=1e-6)


def test_sample_ensemble_outputs_refuses_unstacked_params():
  params, states = _trained_members()
  ragged = {**params, "out": jax.tree.map(lambda leaf: leaf[:2], params["out"])}
  with pytest.raises(ValueError, match="stacked on a leading axis"):
    ivon_optax.ensemble.sample_ensemble_outputs(
      jax.random.key(0), _apply, states, ragged, jnp.ones((2, 4)), num_samples=2
    )
  with pytest.raises(ValueError, match="num_samples"):
    ivon_optax.ensemble.sample_ensemble_outputs(
      jax.random.key(0), _apply, states, params, jnp.ones((2, 4)), num_samples=0
    )
