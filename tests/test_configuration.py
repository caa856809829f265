"""One home per hyperparameter: the state carries the posterior, the transform the step.

``ess``, ``hess_init``, ``weight_decay``, ``weight_decay_mask`` and ``prior`` set the
state in ``init`` and are read from it only; ``update`` refuses a state made with
other values (a ``ValueError`` naming the value eagerly, a NaN step under ``jit``).
``learning_rate``, ``beta1``, ``beta2`` and ``clip_radius`` act on every step: a
state made under other values gives exactly what the new ones give.
"""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import make_batch
from helpers import train_step

import ivon_optax

LR, ESS = 0.05, 1000.0


def _trained_state(tx, params, steps=3):
  state = tx.init(params)
  step = jax.jit(functools.partial(train_step, tx))
  for index in range(steps):
    params, state = step(params, state, jax.random.key(index), make_batch(index))
  return params, state


def _prior(params, scale):
  return ivon_optax.GaussianPrior(
    mean=jax.tree.map(lambda p: scale * jnp.ones_like(p), params),
    precision=jax.tree.map(lambda p: scale * 1e-2 * jnp.ones_like(p), params),
  )


# (what differs, transform that made the state, transform it is given to, match)
MISMATCHES = [
  ("ess", dict(ess=ESS), dict(ess=2 * ESS), r"ess=1000\.0.*ess=2000\.0"),
  ("hess_init", dict(hess_init=0.5), dict(hess_init=0.1), "hess_init=0.5"),
  ("weight_decay", dict(weight_decay=1e-3), dict(weight_decay=1e-2), "weight decay"),
  (
    "weight_decay_mask",
    dict(weight_decay=1e-3),
    dict(weight_decay=1e-3, weight_decay_mask={"dense": True, "out": False}),
    r"\['out'\]\['bias'\]",
  ),
  ("prior given, none in the state", dict(), dict(prior="one"), "without a prior mean"),
  ("prior in the state, none given", dict(prior="one"), dict(), "with a prior mean"),
  ("another prior", dict(prior="one"), dict(prior="two"), "prior"),
  ("prior precision only", dict(weight_decay=1e-3), dict(prior="scalar"), "weight decay"),
]


def _build(params, kwargs):
  kwargs = dict(kwargs)
  choice = kwargs.pop("prior", None)
  if choice is not None:
    kwargs["prior"] = {
      "one": _prior(params, 1.0),
      "two": _prior(params, 2.0),
      "scalar": ivon_optax.GaussianPrior(mean=None, precision=5e-2),
    }[choice]
  kwargs.setdefault("ess", ESS)
  return ivon_optax.ivon(LR, **kwargs)


@pytest.mark.parametrize(
  "made_with, given, match", [row[1:] for row in MISMATCHES], ids=[row[0] for row in MISMATCHES]
)
def test_a_state_made_with_other_posterior_arguments_is_refused(params, made_with, given, match):
  trained, state = _trained_state(_build(params, made_with), params)
  tx = _build(params, given)
  sampled, noise = ivon_optax.sample_params(jax.random.key(9), state, trained)
  grads = jax.grad(lambda p: jnp.sum(p["out"]["kernel"] ** 2))(sampled)
  with pytest.raises(ValueError, match=match):
    tx.update(grads, state, trained, noise=noise)
  # Under jit the mismatch cannot raise where the structures agree: the step is NaN.
  try:
    updates, _ = jax.jit(functools.partial(tx.update, noise=noise))(grads, state, trained)
  except ValueError as error:  # a structural mismatch still raises at trace time
    assert "IVON state" in str(error)
  else:
    assert all(np.all(np.isnan(leaf)) for leaf in jax.tree.leaves(updates))


def test_a_restored_state_with_the_same_arguments_trains_on(params):
  """A checkpointed state, given to a freshly built identical transform, steps as before."""
  prior = _prior(params, 1.0)
  trained, state = _trained_state(ivon_optax.ivon(LR, ESS, prior=prior), params)
  rebuilt = ivon_optax.ivon(LR, ESS, prior=_prior(params, 1.0))  # equal arrays, new objects
  sampled, noise = ivon_optax.sample_params(jax.random.key(9), state, trained)
  grads = jax.grad(lambda p: jnp.sum(p["out"]["kernel"] ** 2))(sampled)
  expected, _ = ivon_optax.ivon(LR, ESS, prior=prior).update(grads, state, trained, noise=noise)
  updates, _ = rebuilt.update(grads, state, trained, noise=noise)
  chex.assert_trees_all_equal(updates, expected)


@pytest.mark.parametrize(
  "changed",
  [dict(learning_rate=0.2), dict(beta1=0.5), dict(beta2=0.99), dict(clip_radius=1e-3)],
  ids=lambda changed: next(iter(changed)),
)
def test_step_hyperparameters_act_on_any_state_at_once(params, changed):
  """A state made under other step hyperparameters gives exactly what the new ones give."""
  defaults = dict(learning_rate=LR, ess=ESS, hess_init=0.5)
  trained, state = _trained_state(ivon_optax.ivon(**defaults), params)
  new_tx = ivon_optax.ivon(**{**defaults, **changed})
  own_state = new_tx.init(trained)
  equivalent = (
    ivon_optax.find_ivon_state(own_state)._replace(
      count=state[0].count,
      momentum=state[0].momentum,
      hess=state[0].hess,
      hess_init_weight=state[0].hess_init_weight,
    ),
    own_state[1],
  )
  key, batch = jax.random.key(7), make_batch(7)
  from_restored = train_step(new_tx, trained, state, key, batch)
  from_equivalent = train_step(new_tx, trained, equivalent, key, batch)
  chex.assert_trees_all_equal(from_restored, from_equivalent)


def test_handing_a_posterior_on_needs_a_fresh_init(params):
  """posterior_as_prior + a new transform: the old state is refused; tx.init takes the prior."""
  trained, state = _trained_state(ivon_optax.ivon(LR, ESS, weight_decay=1e-3), params)
  prior = ivon_optax.posterior_as_prior(state, trained, ess=500.0)
  next_tx = ivon_optax.ivon(LR, 500.0, prior=prior)
  sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, trained)
  grads = jax.grad(lambda p: jnp.sum(p["out"]["kernel"] ** 2))(sampled)
  with pytest.raises(ValueError, match="tx.init"):
    next_tx.update(grads, state, trained, noise=noise)
  next_state = ivon_optax.find_ivon_state(next_tx.init(trained))
  chex.assert_trees_all_close(
    jax.tree.map(lambda delta: 500.0 * delta, next_state.prior_precision),
    ivon_optax.posterior_precision(state, trained),
    rtol=1e-5,
  )
  chex.assert_trees_all_equal(next_state.prior_mean, trained)


def test_inject_hyperparams_refuses_a_changed_posterior_argument(params):
  tx = optax.inject_hyperparams(ivon_optax.ivon)(LR, ESS, weight_decay=1e-3)
  trained, state = _trained_state(tx, params)
  state.hyperparams["weight_decay"] = jnp.asarray(1e-2, jnp.float32)
  step = functools.partial(train_step, tx)
  with pytest.raises(ValueError, match="weight decay"):
    step(trained, state, jax.random.key(5), make_batch(5))
  stepped, _ = jax.jit(step)(trained, state, jax.random.key(5), make_batch(5))
  assert all(np.all(np.isnan(leaf)) for leaf in jax.tree.leaves(stepped))


def test_scaled_posterior_is_for_prediction(params):
  trained, state = _trained_state(ivon_optax.ivon(LR, ESS), params)
  scaled = ivon_optax.calibration.scale_posterior(state, 0.5)
  with pytest.raises(ValueError, match="ess=4000.0.*ess=1000.0"):
    train_step(ivon_optax.ivon(LR, ESS), trained, scaled, jax.random.key(0), make_batch(0))
  # Built with the scaled ess, the transform trains on from it.
  stepped, _ = train_step(
    ivon_optax.ivon(LR, 4 * ESS), trained, scaled, jax.random.key(0), make_batch(0)
  )
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(stepped))


def test_fields_are_named_for_what_they_hold(params):
  prior = ivon_optax.GaussianPrior(mean=None, precision=0.25)
  state = ivon_optax.find_ivon_state(ivon_optax.ivon(LR, ESS, prior=prior).init(params))
  assert float(state.prior_precision["dense"]["kernel"]) == 0.25
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    old_name = state.weight_decay
  assert any(issubclass(w.category, DeprecationWarning) for w in caught)
  chex.assert_trees_all_equal(old_name, state.prior_precision)
  assert "weight_decay" not in ivon_optax.IVONState._fields
