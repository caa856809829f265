r"""Drawing weights from IVON's posterior $\mathcal{N}(m, \sigma^2)$.

The functions here take the optimizer state, find the [`IVONState`][ivon_optax.IVONState] in it
(inside ``chain``, ``inject_hyperparams``, ``MultiSteps``, ``masked``,
``partition``, ...) and read $\sigma = 1/\sqrt{\lambda (h + \delta)}$
from it. Leaves IVON does not manage (masked out, with full or prefix masks,
or integer and boolean leaves) get zero noise.
"""

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import check_key
from ivon_optax._src.counter_normal import counter_normal
from ivon_optax._src.transform import IVONState
from ivon_optax._src.transform import precision_per_example

Sampler = Callable[[chex.PRNGKey, Any, Any], chex.Array]


def find_ivon_state(state: optax.OptState) -> IVONState:
  """The single [`IVONState`][ivon_optax.IVONState] inside any optax state.

  Raises:
    ValueError: if ``state`` holds no IVON state, or more than one.
  """
  found = [
    node
    for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, IVONState))
    if isinstance(node, IVONState)
  ]
  if len(found) != 1:
    what = "no IVON state" if not found else f"{len(found)} IVON states"
    raise ValueError(
      f"`state` holds {what}; pass the state of an optimizer that contains "
      "exactly one ivon_optax.ivon / scale_by_ivon (tx.init(params))."
    )
  return found[0]


def _aligned_state(state: optax.OptState, params: optax.Params) -> IVONState:
  """The `IVONState` in ``state``, its per-parameter trees lined up with ``params``.

  Prefix masks of ``optax.masked``/``optax.partition`` leave one ``MaskedNode``
  for a whole subtree; it is expanded here.
  """
  ivon_state = find_ivon_state(state)
  hess = _trees.expand_masked(ivon_state.hess, params)
  fix = "Pass the params this optimizer state was created for."
  _trees.check_like_params("params", params, hess, fix, like="the IVON state's buffers")
  return ivon_state._replace(
    hess=hess,
    momentum=_trees.expand_masked(ivon_state.momentum, params),
    weight_decay=_trees.expand_masked(ivon_state.weight_decay, params),
  )


def _precision(ivon_state: IVONState, hess, weight_decay):
  # Floored like the update's h + delta, so that sigma stays finite.
  precision = ivon_state.ess.astype(hess.dtype) * precision_per_example(hess, weight_decay)
  return jnp.maximum(precision, jnp.finfo(hess.dtype).tiny)


def posterior_precision(state: optax.OptState, params: optax.Params) -> optax.Params:
  r"""IVON's posterior precision $\lambda (h + \delta) = 1/\sigma^2$, like ``params``.

  Leaves that IVON does not manage (masked out, or integer and boolean
  leaves) get precision 0 (no information).

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(2)}
    >>> state = ivon_optax.ivon(0.1, ess=10.0, hess_init=0.5, weight_decay=0.0).init(params)
    >>> ivon_optax.posterior_precision(state, params)["w"]
    Array([5., 5.], dtype=float32)

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][].
    params: the params that state was created for.

  Returns:
    A pytree like ``params``, in IVON's state dtype (float32 at least).
  """
  ivon_state = _aligned_state(state, params)
  return jax.tree.map(
    lambda h, d, p: (
      jnp.zeros(jnp.shape(p), jnp.float32) if _trees.is_masked(h) else _precision(ivon_state, h, d)
    ),
    ivon_state.hess,
    ivon_state.weight_decay,
    params,
    is_leaf=_trees.is_masked,
  )


def posterior_std(state: optax.OptState, params: optax.Params) -> optax.Params:
  r"""The posterior standard deviation $\sigma = 1/\sqrt{\lambda (h + \delta)}$.

  Leaves that IVON does not manage get 0. Each leaf has its param's shape and
  IVON's state dtype (float32 at least).

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(2)}
    >>> state = ivon_optax.ivon(0.1, ess=4.0, hess_init=1.0, weight_decay=0.0).init(params)
    >>> ivon_optax.posterior_std(state, params)["w"]
    Array([0.5, 0.5], dtype=float32)
  """
  # Unmanaged leaves have precision 0 and get 0; a NaN precision stays NaN.
  return jax.tree.map(
    lambda precision: jnp.where(precision == 0, 0.0, jax.lax.rsqrt(precision)),
    posterior_precision(state, params),
  )


def posterior(state: optax.OptState, params: optax.Params) -> tuple[optax.Params, optax.Params]:
  r"""IVON's posterior $\mathcal{N}(m, \sigma^2)$ as ``(mean, std)`` pytrees.

  ``mean`` is ``params``; ``std`` is [`posterior_std`][ivon_optax.posterior_std].
  """
  return params, posterior_std(state, params)


def sample_params(
  key: chex.PRNGKey,
  state: optax.OptState,
  params: optax.Params,
  *,
  sampler: Sampler = counter_normal,
) -> tuple[optax.Params, optax.Params]:
  r"""Draws one weight sample $\theta = m + \sigma \odot \epsilon$.

  $\epsilon \sim \mathcal{N}(0, I)$.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(3)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0).init(params)
    >>> sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
    >>> bool(jnp.allclose(sampled["w"], params["w"] + noise["w"]))
    True

  Args:
    key: a JAX PRNG key (typed or legacy ``uint32``). Derive a fresh one per
      step, e.g. ``jax.random.fold_in(base_key, step)``.
    state: an optax state containing exactly one [`IVONState`][ivon_optax.IVONState].
    params: the mean parameters.
    sampler: draws standard normals, ``sampler(key, shape, dtype)``; by default
      [`ivon_optax._src.counter_normal.counter_normal`][ivon_optax.random.counter_normal], a
      counter-based hash that is several times faster than ``jax.random.normal`` on CPU. Pass
      ``sampler=jax.random.normal`` for JAX's own generator.

  Returns:
    ``(sampled_params, noise)``, both like ``params`` and in its dtypes, with
    ``sampled_params = params + noise``. Pass ``noise`` to ``tx.update``.
  """
  check_key(key)
  std = posterior_std(state, params)
  ivon_state = _aligned_state(state, params)
  normals = optax.tree.random_like(key, ivon_state.hess, sampler=sampler)

  def draw(h, eps, sigma, param):
    if _trees.is_masked(h):
      return jnp.zeros_like(param)
    return (sigma * eps).astype(jnp.result_type(param))

  noise = jax.tree.map(draw, ivon_state.hess, normals, std, params, is_leaf=_trees.is_masked)
  sampled = jax.tree.map(lambda p, n: p + n, params, noise)
  return sampled, noise
