r"""A diagonal Gaussian prior $\mathcal{N}(\mu_0, 1/(\lambda \delta))$ per weight.

IVON's default prior is $\mathcal{N}(0, 1/(\lambda \delta))$ with one
$\delta$ (``weight_decay``) per leaf. A [`GaussianPrior`][ivon_optax.GaussianPrior] moves its
centre to $\mu_0$ and lets $\delta$ vary per element. The loss gains
$\tfrac{\delta}{2} \|\theta - \mu_0\|^2$ per example, so only the mean's
step changes:

$$
u = (h_0 + \delta) \odot \mathrm{clip}\!\left(
  \frac{\bar g / (1 - \beta_1^t) + \delta \odot (m - \mu_0)}{h + \delta}, -c, c\right)
$$

[`posterior_as_prior`][ivon_optax.posterior_as_prior] turns one run's posterior into the next run's
prior (continual learning, fine-tuning that remembers where it started).
"""

from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ivon_optax._src import trees as _trees


class GaussianPrior(NamedTuple):
  r"""The prior $\mathcal{N}(\mu_0, 1/(\lambda \delta))$, for ``ivon(..., prior=)``.

  The precision is per example, in ``weight_decay``'s units: with effective
  sample size $\lambda$ the prior's precision is $\lambda \delta$,
  and ``GaussianPrior(mean=zeros, precision=wd)`` is ``weight_decay=wd``.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(3)}
    >>> prior = ivon_optax.GaussianPrior(mean={"w": jnp.ones(3)}, precision=0.01)
    >>> tx = ivon_optax.ivon(0.1, ess=100.0, prior=prior)
    >>> state = tx.init(params)
    >>> state[0].prior_mean["w"]
    Array([1., 1., 1.], dtype=float32)

  Attributes:
    mean: $\mu_0$, a pytree like the params; ``None`` for a prior centred
      at zero (then the state holds no copy of it).
    precision: $\delta \ge 0$, finite: a scalar, or a pytree like the
      params of scalars (one per leaf) or arrays of the param's shape (one
      per element).
  """

  mean: Any
  precision: Any


def _is_concrete(value) -> bool:
  return not isinstance(value, jax.core.Tracer)


def _check_precision_leaf(path: str, value) -> None:
  """Raises a ``ValueError`` unless ``value`` is finite and >= 0 (when it is known)."""
  if not _is_concrete(value):
    return
  array = np.asarray(value)
  if not np.all(np.isfinite(array)) or np.any(array < 0):
    raise ValueError(
      f"Invalid `prior.precision`{path}: every entry must be finite and >= 0 "
      f"(got min {float(np.min(array))!r}, max {float(np.max(array))!r}). It is "
      "the prior precision per example, in weight_decay's units."
    )


def _nan_unless_valid(value):
  """``value``, with NaN where it is negative or not finite: the error that survives ``jit``."""
  return jnp.where(jnp.isfinite(value) & (value >= 0), value, jnp.nan)


def _precision_tree(precision, params):
  """The precision as one scalar or array per param leaf, checked against the params."""
  if jax.tree_util.all_leaves([precision]) and jnp.ndim(precision) == 0:
    _check_precision_leaf("", precision)
    return jax.tree.map(lambda _: precision, params)
  fix = "Pass a scalar, or a tree like the params of scalars or arrays of each param's shape."
  treedef = jax.tree.structure(params, is_leaf=_trees.is_masked)
  try:
    leaves = treedef.flatten_up_to(precision)
  except (ValueError, TypeError) as error:
    raise ValueError(
      f"`prior.precision` must be a scalar or have the tree structure of `params`; "
      f"got {jax.tree.structure(precision)}, expected {treedef}. {fix}"
    ) from error
  paths = jax.tree_util.tree_flatten_with_path(params, is_leaf=_trees.is_masked)[0]
  for (path, param), leaf in zip(paths, leaves, strict=True):
    if _trees.is_masked(param):
      continue
    if jnp.ndim(leaf) != 0 and jnp.shape(leaf) != jnp.shape(param):
      raise ValueError(
        f"`prior.precision` at {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)} "
        f"but the param has shape {jnp.shape(param)}. {fix}"
      )
    _check_precision_leaf(f" at {jax.tree_util.keystr(path)}", leaf)
  return treedef.unflatten(leaves)


def check_prior_type(prior) -> None:
  """Raises a ``TypeError`` unless ``prior`` is a [`GaussianPrior`][ivon_optax.GaussianPrior]."""
  if not isinstance(prior, GaussianPrior):
    raise TypeError(
      f"`prior` must be an ivon_optax.GaussianPrior(mean, precision), got {type(prior).__name__}."
    )


def prior_buffers(prior: GaussianPrior, keep, params, dtype_of):
  r"""The state's ``(weight_decay, prior_mean)`` for ``prior``.

  Args:
    prior: the [`GaussianPrior`][ivon_optax.GaussianPrior].
    keep: one scalar per param leaf, 1 where the prior applies and 0 where
      ``weight_decay_mask`` turns it off ($\delta = 0$: no pull).
    params: the params (``MaskedNode`` at positions IVON does not manage).
    dtype_of: the state dtype of a param.

  Returns:
    $\delta$ per leaf (scalar or array) and $\mu_0$ like the
    params in the state dtype, or ``()`` when ``prior.mean`` is ``None``.

  Raises:
    TypeError: if ``prior`` is not a [`GaussianPrior`][ivon_optax.GaussianPrior].
    ValueError: if its trees are unlike ``params`` or the precision is
      negative or not finite.
  """
  check_prior_type(prior)
  precision = _precision_tree(prior.precision, params)
  weight_decay = _trees.map_unmasked(
    lambda p, k, d: _nan_unless_valid(k * jnp.asarray(d, dtype_of(p))), params, keep, precision
  )
  if prior.mean is None:
    return weight_decay, ()
  fix = "Pass a prior mean with the params' structure and shapes (e.g. the pretrained params)."
  _trees.check_like_params("prior.mean", prior.mean, params, fix)
  mean = _trees.map_unmasked(lambda p, mu: jnp.asarray(mu, dtype_of(p)), params, prior.mean)
  return weight_decay, mean


def posterior_as_prior(
  state: optax.OptState, params: optax.Params, ess: chex.Numeric
) -> GaussianPrior:
  r"""IVON's posterior as the prior of a next run with effective sample size ``ess``.

  The posterior $\mathcal{N}(m, 1/(\lambda_1 (h + \delta)))$ is carried
  over exactly: the next run's prior is $\mathcal{N}(\mu_0,
  1/(\lambda_2 \delta_2))$ with

  $$
  \mu_0 = m, \qquad \delta_2 = \lambda_1 (h + \delta) / \lambda_2 .
  $$

  Leaves that IVON does not manage get precision 0.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.ones(2)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0, hess_init=0.5, weight_decay=0.0).init(params)
    >>> prior = ivon_optax.posterior_as_prior(state, params, ess=50.0)
    >>> prior.precision["w"]  # 100 * 0.5 / 50
    Array([1., 1.], dtype=float32)
    >>> tx = ivon_optax.ivon(0.1, ess=50.0, prior=prior)  # the next task's optimizer

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][].
    params: the posterior mean $m$, the params that state was trained with.
    ess: $\lambda_2$ (> 0), the next run's effective sample size.

  Returns:
    A [`GaussianPrior`][ivon_optax.GaussianPrior] with ``mean=params`` and per-element precision.
  """
  # Imported here: sampling imports the transform, which imports this module.
  from ivon_optax._src.sampling import posterior_precision

  if _is_concrete(ess) and not float(ess) > 0:
    raise ValueError(
      f"Invalid `ess`={float(ess)!r}: it must be > 0, the next run's effective sample size."
    )
  precision = posterior_precision(state, params)
  return GaussianPrior(mean=params, precision=jax.tree.map(lambda p: p / ess, precision))
