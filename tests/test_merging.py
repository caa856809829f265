"""Tests of ivon_optax.merging: the merging rule and its special cases."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import ivon_optax


def random_tree(rng, low=-1.0, high=1.0):
  return {
    "w": jnp.asarray(rng.uniform(low, high, (3, 2)), jnp.float32),
    "b": jnp.asarray(rng.uniform(low, high, (2,)), jnp.float32),
  }


def random_models(seed, num_tasks):
  rng = np.random.default_rng(seed)
  base = random_tree(rng)
  models = [random_tree(rng) for _ in range(num_tasks)]
  precisions = [random_tree(rng, 0.1, 10.0) for _ in range(num_tasks)]
  return rng, base, models, precisions


def ivon_state_with_precision(params, precision, ess=50.0):
  """An IVON state whose precision ess * (h + wd) equals ``precision``."""
  weight_decay = 1e-4
  state = ivon_optax.ivon(0.1, ess=ess, weight_decay=weight_decay).init(params)
  hess = jax.tree.map(lambda h: h / ess - weight_decay, precision)
  return (state[0]._replace(hess=hess),) + tuple(state[1:])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), base_precision=st.floats(0.0, 100.0))
def test_one_task_with_unit_scale_returns_the_task_model(seed, base_precision):
  _, base, models, precisions = random_models(seed, 1)
  merged = ivon_optax.merging.merge_with_precisions(
    base, models, precisions, task_scales=1.0, base_precision=base_precision
  )
  chex.assert_trees_all_close(merged, models[0], rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), num_tasks=st.integers(1, 4), alpha=st.floats(0.1, 1.5))
def test_a_dominant_base_precision_gives_task_arithmetic(seed, num_tasks, alpha):
  _, base, models, precisions = random_models(seed, num_tasks)
  merged = ivon_optax.merging.merge_with_precisions(
    base, models, precisions, task_scales=alpha, base_precision=1e9
  )
  expected = ivon_optax.merging.task_arithmetic(base, models, task_scales=alpha)
  chex.assert_trees_all_close(merged, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), num_tasks=st.integers(1, 4))
def test_no_base_precision_gives_the_precision_weighted_average(seed, num_tasks):
  _, base, models, precisions = random_models(seed, num_tasks)
  merged = ivon_optax.merging.merge_with_precisions(base, models, precisions, task_scales=1.0)
  total = jax.tree.map(lambda *hs: sum(hs), *precisions)
  expected = jax.tree.map(
    lambda total, *pairs: (
      sum(h * theta for h, theta in zip(pairs[::2], pairs[1::2], strict=True)) / total
    ),
    total,
    *[tree for pair in zip(precisions, models, strict=True) for tree in pair],
  )
  chex.assert_trees_all_close(merged, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), num_tasks=st.integers(1, 4), precision=st.floats(0.01, 1e3))
def test_equal_precisions_give_the_plain_average(seed, num_tasks, precision):
  _, base, models, _ = random_models(seed, num_tasks)
  states = [
    ivon_state_with_precision(model, jax.tree.map(lambda p: jnp.full_like(p, precision), model))
    for model in models
  ]
  merged = ivon_optax.merging.merge_models(base, list(zip(models, states, strict=True)))
  average = jax.tree.map(lambda *thetas: sum(thetas) / len(thetas), *models)
  chex.assert_trees_all_close(merged, average, rtol=1e-4, atol=1e-5)


def test_per_task_scales_and_the_official_form():
  rng, base, models, precisions = random_models(0, 2)
  base_precision = random_tree(rng, 0.1, 5.0)
  scales = [0.3, 0.8]
  merged = ivon_optax.merging.merge_with_precisions(
    base, models, precisions, task_scales=scales, base_precision=base_precision, delta_0=0.0
  )
  bar = jax.tree.map(lambda h0, h1, h2: h0 + 0.3 * h1 + 0.8 * h2, base_precision, *precisions)
  expected = jax.tree.map(
    lambda t0, t1, t2, h0, h1, h2, bar: (
      t0 + 0.3 * (h0 + h1) / bar * (t1 - t0) + 0.8 * (h0 + h2) / bar * (t2 - t0)
    ),
    base,
    *models,
    base_precision,
    *precisions,
    bar,
  )
  chex.assert_trees_all_close(merged, expected, rtol=1e-5, atol=1e-5)
  as_array = ivon_optax.merging.merge_with_precisions(
    base,
    models,
    precisions,
    task_scales=jnp.array(scales),
    base_precision=base_precision,
    delta_0=0.0,
  )
  chex.assert_trees_all_close(as_array, expected, rtol=1e-5, atol=1e-5)


def test_ivon_precision_is_the_inverse_variance():
  params = random_tree(np.random.default_rng(0))
  tx = ivon_optax.ivon(0.1, ess=30.0, hess_init=0.2, weight_decay=1e-3)
  state = tx.init(params)
  std = ivon_optax.posterior_std(state, params)
  chex.assert_trees_all_close(
    ivon_optax.posterior_precision(state, params), jax.tree.map(lambda s: 1 / s**2, std), rtol=1e-5
  )


def test_leaves_ivon_does_not_manage_fall_back_to_task_arithmetic():
  _, base, models, _ = random_models(0, 2)
  tx = optax.partition(
    {"ivon": ivon_optax.ivon(0.1, ess=10.0), "frozen": optax.set_to_zero()},
    {"w": "ivon", "b": "frozen"},
  )
  finetuned = [(model, tx.init(model)) for model in models]
  assert float(jnp.max(ivon_optax.posterior_precision(finetuned[0][1], models[0])["b"])) == 0.0
  merged = ivon_optax.merging.merge_models(base, finetuned, task_scales=0.5)
  chex.assert_trees_all_close(
    merged["b"], ivon_optax.merging.task_arithmetic(base, models, task_scales=0.5)["b"], atol=1e-5
  )


def test_merge_rejects_bad_input():
  _, base, models, precisions = random_models(0, 2)
  with pytest.raises(ValueError, match="task_scales"):
    ivon_optax.merging.merge_with_precisions(base, models, precisions, task_scales=[1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="one precision per"):
    ivon_optax.merging.merge_with_precisions(base, models, precisions[:1])
  with pytest.raises(ValueError, match=r"finetuned_params\[1\]"):
    ivon_optax.merging.merge_with_precisions(base, [models[0], {"w": models[1]["w"]}], precisions)
  state = ivon_optax.ivon(0.1, ess=10.0).init(base)
  with pytest.raises(ValueError, match="not both"):
    ivon_optax.merging.merge_models(
      base, [(models[0], state)], base_state=state, base_precision=1.0
    )
  with pytest.raises(ValueError, match="pairs"):
    ivon_optax.merging.merge_models(base, [models[0]])
  with pytest.raises(ValueError, match="IVON state"):
    ivon_optax.merging.merge_models(base, [(models[0], optax.adam(0.1).init(base))])
