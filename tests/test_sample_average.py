"""Several Monte-Carlo samples per step: parallel and sequential averages."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import loss_fn
from helpers import make_batch
from helpers import make_params

import ivon_optax

ESS = 1000.0


def per_sample_grads(state, params, keys, batch):
  def grad_at_sample(key):
    sampled, noise = ivon_optax.sample_params(key, state, params)
    return jax.grad(loss_fn)(sampled, batch), noise

  return jax.vmap(grad_at_sample)(keys)


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
def test_parallel_and_sequential_averages_agree(hess_approx):
  params = make_params()
  tx = ivon_optax.ivon(0.1, ESS, hess_approx=hess_approx)
  state = tx.init(params)
  keys = jax.random.split(jax.random.key(0), 4)
  grads, noise = per_sample_grads(state, params, keys, make_batch(0))

  parallel = jax.jit(ivon_optax.average_samples, static_argnums=2)(grads, noise, hess_approx)
  sequential = ivon_optax.init_sample_average(params, hess_approx)
  for index in range(4):
    sequential = ivon_optax.add_sample(
      sequential, *jax.tree.map(lambda x, i=index: x[i], (grads, noise))
    )
  chex.assert_trees_all_close(parallel, sequential, rtol=1e-5, atol=1e-7)
  assert int(parallel.count) == int(sequential.count) == 4

  parallel_updates, _ = tx.update(parallel.grads, state, params, samples=parallel)
  sequential_updates, _ = tx.update(sequential.grads, state, params, samples=sequential)
  chex.assert_trees_all_close(parallel_updates, sequential_updates, rtol=1e-5, atol=1e-8)


def test_one_sample_average_equals_passing_noise():
  params = make_params()
  tx = ivon_optax.ivon(0.1, ESS)
  state = tx.init(params)
  sampled, noise = ivon_optax.sample_params(jax.random.key(1), state, params)
  grads = jax.grad(loss_fn)(sampled, make_batch(0))
  average = ivon_optax.add_sample(ivon_optax.init_sample_average(params), grads, noise)
  from_noise, _ = tx.update(grads, state, params, noise=noise)
  from_average, _ = tx.update(average.grads, state, params, samples=average)
  chex.assert_trees_all_close(from_noise, from_average, rtol=1e-6)


def test_only_the_needed_statistic_is_allocated():
  params = make_params()
  price = ivon_optax.init_sample_average(params, "price")
  gradsq = ivon_optax.init_sample_average(params, "gradsq")
  assert price.grads_squared == () and gradsq.noise_grads == ()
  assert optax.tree.size(price) == 2 * optax.tree.size(params) + 1


def test_ivon_state_holds_two_param_sized_buffers():
  params = make_params()
  state = ivon_optax.find_ivon_state(ivon_optax.ivon(0.1, ESS).init(params))
  num_leaves = len(jax.tree.leaves(params))
  # count, ess, hess_init, hess_init_weight, prior_id and one prior-precision scalar
  # per leaf besides momentum and hess.
  assert optax.tree.size(state) == 2 * optax.tree.size(params) + 5 + num_leaves


def test_statistic_must_match_hess_approx():
  params = make_params()
  tx = ivon_optax.ivon(0.1, ESS, hess_approx="gradsq")
  state = tx.init(params)
  empty = ivon_optax.init_sample_average(params, "price")
  average = ivon_optax.add_sample(empty, params, params)
  with pytest.raises(ValueError, match="hess_approx='gradsq'"):
    tx.update(average.grads, state, params, samples=average)
  with pytest.raises(ValueError, match="not both"):
    tx.update(average.grads, state, params, noise=average.grads, samples=average)


def test_average_samples_needs_a_sample_axis_and_matching_noise():
  params = make_params()
  with pytest.raises(ValueError, match="leading sample axis"):
    ivon_optax.average_samples({"w": jnp.float32(1.0)}, {"w": jnp.float32(1.0)})
  stacked = jax.tree.map(lambda p: jnp.stack([p, p]), params)
  with pytest.raises(ValueError, match="`noise`"):
    ivon_optax.average_samples(stacked, {"dense": stacked["dense"]})
  with pytest.raises(ValueError, match="`hess_approx`"):
    ivon_optax.init_sample_average(params, "fisher")
  with pytest.raises(ValueError, match="`grads`"):
    ivon_optax.add_sample(ivon_optax.init_sample_average(params), stacked, params)
