"""``sample_params`` and ``posterior``: statistics, wrappers, and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import ivon_optax

ESS = 500.0


def test_noise_is_gaussian_with_ivon_sigma():
  """noise / sigma is N(0, 1) per element, sigma = 1/sqrt(ess (h + wd)), wd masked per leaf."""
  params = {"decayed": jnp.zeros((200, 100)), "undecayed": jnp.zeros((20_000,))}
  mask = {"decayed": True, "undecayed": False}
  tx = ivon_optax.ivon(0.1, ESS, weight_decay=0.3, weight_decay_mask=mask)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  hess = jax.tree.map(lambda p: 10.0 ** rng.uniform(-2, 2, p.shape), params)
  state = (state[0]._replace(hess=jax.tree.map(jnp.float32, hess)), state[1])
  sampled, noise = ivon_optax.sample_params(jax.random.key(3), state, params)
  chex.assert_trees_all_equal(sampled, noise)  # params are zero
  decay = {"decayed": 0.3, "undecayed": 0.0}
  for name in params:
    sigma = 1.0 / np.sqrt(ESS * (hess[name] + decay[name]))
    standardized = (np.asarray(noise[name], np.float64) / sigma).ravel()
    assert abs(standardized.mean()) < 4 / np.sqrt(standardized.size)
    assert abs(standardized.std() - 1) < 4 / np.sqrt(2 * standardized.size)
    assert stats.kstest(standardized, "norm").pvalue > 1e-3
  # Spread really follows sigma: the large-h half of the elements is tighter.
  tight = np.asarray(noise["undecayed"])[hess["undecayed"] > 1].std()
  loose = np.asarray(noise["undecayed"])[hess["undecayed"] < 0.1].std()
  assert loose > 5 * tight


def test_posterior_std_formula():
  params = {"w": jnp.ones((3,)), "b": jnp.ones((2,))}
  tx = ivon_optax.ivon(
    0.1, ESS, hess_init=0.2, weight_decay=0.05, weight_decay_mask={"w": True, "b": False}
  )
  mean, std = ivon_optax.posterior(tx.init(params), params)
  chex.assert_trees_all_equal(mean, params)
  np.testing.assert_allclose(std["w"], 1 / np.sqrt(ESS * 0.25), rtol=1e-6)
  np.testing.assert_allclose(std["b"], 1 / np.sqrt(ESS * 0.2), rtol=1e-6)


def _params():
  return {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}


WRAPPERS = {
  "chain_first": lambda tx: optax.chain(tx, optax.scale(1.0)),
  "chain_last": lambda tx: optax.chain(optax.clip_by_global_norm(1.0), optax.scale(1.0), tx),
  "inject_hyperparams": lambda tx: optax.inject_hyperparams(ivon_optax.ivon)(0.1, ESS),
  "multi_steps": lambda tx: optax.MultiSteps(tx, every_k_schedule=2),
  "apply_if_finite": lambda tx: optax.apply_if_finite(tx, 3),
  "named_chain": lambda tx: optax.named_chain(("clip", optax.clip(1.0)), ("ivon", tx)),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_finds_ivon_state_in_wrappers(wrapper):
  params = _params()
  tx = WRAPPERS[wrapper](ivon_optax.ivon(0.1, ESS))
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  chex.assert_trees_all_close(sampled, jax.tree.map(jnp.add, params, noise))
  assert all(float(jnp.abs(n).min()) > 0 for n in jax.tree.leaves(noise))
  updates, _ = tx.update(params, state, params, noise=noise)
  chex.assert_trees_all_equal_shapes(updates, params)


@pytest.mark.parametrize("container", ["masked", "partition"])
def test_unmanaged_leaves_get_zero_noise(container):
  params = _params()
  if container == "masked":
    tx = optax.masked(ivon_optax.ivon(0.1, ESS), {"kernel": True, "bias": False})
  else:
    tx = optax.partition(
      {"ivon": ivon_optax.ivon(0.1, ESS), "frozen": optax.set_to_zero()},
      {"kernel": "ivon", "bias": "frozen"},
    )
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
  chex.assert_trees_all_equal(noise["bias"], jnp.zeros(2))
  chex.assert_trees_all_equal(sampled["bias"], params["bias"])
  assert float(jnp.abs(noise["kernel"]).min()) > 0
  _, std = ivon_optax.posterior(state, params)
  chex.assert_trees_all_equal(std["bias"], jnp.zeros(2))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params, noise=noise)
  assert int(ivon_optax.find_ivon_state(state).count) == 1
  assert float(jnp.abs(updates["kernel"]).max()) > 0


def test_state_with_no_or_two_ivon_states_is_rejected():
  params = _params()
  with pytest.raises(ValueError, match="no IVON state"):
    ivon_optax.sample_params(jax.random.key(0), optax.adam(0.1).init(params), params)
  two = optax.chain(ivon_optax.ivon(0.1, ESS), ivon_optax.ivon(0.1, ESS)).init(params)
  with pytest.raises(ValueError, match="2 IVON states"):
    ivon_optax.sample_params(jax.random.key(0), two, params)


def test_params_unlike_the_state_are_rejected():
  state = ivon_optax.ivon(0.1, ESS).init(_params())
  with pytest.raises(ValueError, match="`params`"):
    ivon_optax.sample_params(jax.random.key(0), state, {"kernel": jnp.ones((3, 2))})
  with pytest.raises(ValueError, match="`params`"):
    ivon_optax.sample_params(
      jax.random.key(0), state, {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    )


def test_typed_and_legacy_keys_are_accepted_and_deterministic():
  params = _params()
  state = ivon_optax.ivon(0.1, ESS).init(params)
  for make_key in (jax.random.key, jax.random.PRNGKey):
    _, first = ivon_optax.sample_params(make_key(5), state, params)
    _, again = ivon_optax.sample_params(make_key(5), state, params)
    _, other = ivon_optax.sample_params(make_key(6), state, params)
    chex.assert_trees_all_equal(first, again)
    assert not np.allclose(first["kernel"], other["kernel"])
  jitted = jax.jit(ivon_optax.sample_params)(jax.random.key(5), state, params)
  chex.assert_trees_all_close(
    jitted[1], ivon_optax.sample_params(jax.random.key(5), state, params)[1]
  )


@pytest.mark.parametrize(
  "bad_key",
  [
    0,
    np.float32(1.0),
    jnp.zeros(3),
    jnp.zeros((2,), jnp.int32),
    jax.random.split(jax.random.key(0), 4),
  ],
  ids=["int", "float", "array", "int32", "batch"],
)
def test_non_keys_are_rejected(bad_key):
  params = _params()
  state = ivon_optax.ivon(0.1, ESS).init(params)
  with pytest.raises(TypeError, match="`key` must be one JAX PRNG key"):
    ivon_optax.sample_params(bad_key, state, params)


def test_vmap_over_keys_gives_independent_samples():
  params = _params()
  state = ivon_optax.ivon(0.1, ESS).init(params)
  keys = jax.random.split(jax.random.key(0), 8)
  _, noise = jax.vmap(ivon_optax.sample_params, in_axes=(0, None, None))(keys, state, params)
  assert noise["kernel"].shape == (8, 3, 2)
  correlation = np.corrcoef(np.asarray(noise["kernel"]).reshape(8, -1))
  assert np.abs(correlation[np.triu_indices(8, 1)]).max() < 0.999
  _, single = ivon_optax.sample_params(keys[3], state, params)
  chex.assert_trees_all_close(jax.tree.map(lambda n: n[3], noise), single)
