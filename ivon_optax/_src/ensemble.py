r"""Ensembles of IVON posteriors (MultiIVON): the members' weight samples, pooled.

A $K$-member ensemble is trained in one jitted step by ``jax.vmap``-ing
the training step over the members' params, optimizer states and keys
(different initializations and noise). Its predictive distribution is the
equal-weight mixture of the members' posteriors,

$$
q(\theta) = \frac1K \sum_{k=1}^K \mathcal{N}(m_k, \sigma_k^2),
$$

whose Monte-Carlo estimate with $S$ samples per member is the average
over all $K S$ samples: pass the output of
[`sample_ensemble_outputs`][ivon_optax.ensemble.sample_ensemble_outputs] to
[`ivon_optax.predict.predictive_log_probs`][] or [`ivon_optax.predict.predictive_moments`][] as if
it came from one posterior.
"""

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src.checks import check_count
from ivon_optax._src.checks import check_key
from ivon_optax._src.posterior import find_ivon_state
from ivon_optax._src.predict import sample_outputs


def member_count(params: optax.Params) -> int:
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
  if len(sizes) != 1 or None in sizes or 0 in sizes:
    raise ValueError(
      "`params` must be the members' params stacked on a leading axis of one size K >= 1 "
      f"(e.g. jax.vmap(init)(keys)); found leading sizes {sorted(map(str, sizes))}."
    )
  return sizes.pop()


def check_stacked_states(states: optax.OptState, count: int, name: str = "states") -> None:
  """Raises a ``ValueError`` unless ``states`` stacks ``count`` IVON states on axis 0."""
  shape = jnp.shape(find_ivon_state(states).count)
  if shape != (count,):
    raise ValueError(
      f"`{name}` must be the members' optimizer states stacked on a leading axis of size "
      f"{count}, as the params are (jax.vmap(tx.init)(params)); its IVON state has "
      f"leading shape {shape}."
    )


def sample_ensemble_outputs(
  key: chex.PRNGKey,
  apply_fn: Callable[..., Any],
  states: optax.OptState,
  params: optax.Params,
  *inputs: Any,
  num_samples: int,
  batch_size: int | None = None,
) -> Any:
  r"""The outputs at $S$ weight samples of each of $K$ members, pooled: $K S$.

  With $k_1, \dots, k_K$ = ``jax.random.split(key, K)``, rows
  $(k-1) S$ to $k S - 1$ of every output leaf are
  ``ivon_optax.predict.sample_outputs(k_k, apply_fn, state_k, params_k,
  *inputs, num_samples=S)`` of member $k$. Members are evaluated in
  parallel (``jax.vmap``), each member's samples ``batch_size`` at a time.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax.ensemble
    >>> tx = ivon_optax.ivon(0.1, ess=100.0)
    >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 3, 2))}  # 4 members
    >>> states = jax.vmap(tx.init)(params)
    >>> logits = ivon_optax.ensemble.sample_ensemble_outputs(
    ...     jax.random.key(1), lambda p, x: x @ p["w"], states, params, jnp.ones((5, 3)),
    ...     num_samples=8)
    >>> logits.shape  # 4 members x 8 samples, 5 inputs, 2 classes
    (32, 5, 2)
    >>> ivon_optax.predict.predictive_log_probs(logits).shape
    (5, 2)

  Args:
    key: a JAX PRNG key; split into one key per member.
    apply_fn: ``apply_fn(params, *inputs)`` for **one** member's params.
    states: the members' optimizer states, stacked on a leading axis of size
      $K$ (``jax.vmap(tx.init)(params)``), each holding one IVON state.
    params: the members' mean params, stacked on a leading axis of size $K$.
    *inputs: the remaining arguments of ``apply_fn``, shared by all members.
    num_samples: $S \ge 1$, weight samples per member.
    batch_size: samples per member evaluated at once, as in ``sample_outputs``.

  Returns:
    ``apply_fn``'s output with a leading axis of size $K S$ on every leaf.
  """
  check_key(key)
  num_samples = check_count("num_samples", num_samples, fix="Use e.g. num_samples=16 per member.")
  num_members = member_count(params)
  check_stacked_states(states, num_members)

  def member(member_key, state, member_params):
    return sample_outputs(
      member_key,
      apply_fn,
      state,
      member_params,
      *inputs,
      num_samples=num_samples,
      batch_size=batch_size,
    )

  outputs = jax.vmap(member)(jax.random.split(key, num_members), states, params)
  return jax.tree.map(
    lambda leaf: leaf.reshape(num_members * num_samples, *leaf.shape[2:]), outputs
  )
