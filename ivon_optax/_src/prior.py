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

The prior lives in the IVON state, so that a jitted step takes its arrays as
arguments rather than constants. A fingerprint of its arrays, computed once
when the transform is built, lets ``update`` refuse a state that carries
another prior.
"""

import hashlib
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import require


class GaussianPrior(NamedTuple):
  r"""The prior $\mathcal{N}(\mu_0, 1/(\lambda \delta))$, for ``ivon(..., prior=)``.

  The precision is per example, in ``weight_decay``'s units: with effective
  sample size $\lambda$ the prior's precision is $\lambda \delta$,
  and ``GaussianPrior(mean=None, precision=wd)`` is ``weight_decay=wd``.

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
    precision: $\delta \ge 0$, finite in the state's dtype: a scalar, or a
      pytree like the params of scalars (one per leaf) or arrays of the
      param's shape (one per element).
  """

  mean: Any
  precision: Any


def check_prior_type(prior: Any) -> None:
  """Raises a ``TypeError`` unless ``prior`` is a [`GaussianPrior`][ivon_optax.GaussianPrior]."""
  if not isinstance(prior, GaussianPrior):
    raise TypeError(
      f"`prior` must be an ivon_optax.GaussianPrior(mean, precision), got {type(prior).__name__}."
    )


def _is_real_array_like(value: Any) -> bool:
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    dtype = np.asarray(value).dtype if isinstance(value, (int, float, np.number)) else None
  return dtype is not None and (
    np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16
  )


def _checked_leaf(what: str, value: Any, dtype: Any, nonnegative: bool) -> Any:
  """``value`` in ``dtype``, checked finite (and >= 0) after the cast: raise, or NaN if traced."""
  if not _is_real_array_like(value):
    raise TypeError(
      f"`{what}` must hold real numbers (floats or arrays of them); got "
      f"{type(value).__name__} {value!r}."
    )
  value = jnp.asarray(value, dtype)
  valid = jnp.isfinite(value) & (value >= 0) if nonnegative else jnp.isfinite(value)
  rule = "finite and >= 0" if nonnegative else "finite"
  require(
    valid,
    value,
    f"Invalid `{what}`: every entry must be {rule} in {jnp.dtype(dtype).name} (found {{}}). "
    "The precision is per example, in weight_decay's units; the mean is a point in weight space.",
  )
  return nan_unless(valid, value)


def leaf_precisions(prior: GaussianPrior | None, weight_decay: Any, keep: Any, params) -> Any:
  r"""$\delta$ per param leaf as given: a scalar or an array, 0 where ``keep`` is ``False``.

  Args:
    prior: the [`GaussianPrior`][ivon_optax.GaussianPrior], or ``None`` for ``weight_decay``.
    weight_decay: $\delta$ when there is no prior (a scalar).
    keep: one Python bool per param leaf, ``False`` where ``weight_decay_mask``
      turns the prior off.
    params: the params (``MaskedNode`` at positions IVON does not manage).

  Raises:
    ValueError: if the precision is neither a scalar nor a tree like ``params``
      of scalars or arrays of each param's shape.
  """
  precision = weight_decay if prior is None else prior.precision
  treedef = jax.tree.structure(params, is_leaf=_trees.is_masked)
  if jax.tree_util.all_leaves([precision]) and jnp.ndim(precision) == 0:
    leaves = [precision] * treedef.num_leaves
  else:
    fix = "Pass a scalar, or a tree like the params of scalars or arrays of each param's shape."
    try:
      leaves = treedef.flatten_up_to(precision)
    except (ValueError, TypeError) as error:
      raise ValueError(
        f"`prior.precision` must be a scalar or have the tree structure of `params`; "
        f"got {jax.tree.structure(precision)}, expected {treedef}. {fix}"
      ) from error
    paths = jax.tree_util.tree_flatten_with_path(params, is_leaf=_trees.is_masked)[0]
    for (path, param), leaf in zip(paths, leaves, strict=True):
      if not _trees.is_masked(param) and jnp.ndim(leaf) and jnp.shape(leaf) != jnp.shape(param):
        raise ValueError(
          f"`prior.precision` at {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)} "
          f"but the param has shape {jnp.shape(param)}. {fix}"
        )
  keep_leaves = treedef.flatten_up_to(keep)
  return treedef.unflatten(
    [delta if kept else 0.0 for delta, kept in zip(leaves, keep_leaves, strict=True)]
  )


def prior_precision(prior: GaussianPrior | None, weight_decay: Any, keep: Any, params, dtype_of):
  r"""$\delta$ per param leaf as the state holds it, in the state dtype.

  A scalar per leaf (0 where ``keep`` is ``False``) or, for a per-element
  prior precision, an array of the param's shape. Arguments as for
  [`leaf_precisions`][].

  Raises:
    TypeError, ValueError: if the precision is not real, unlike ``params``,
      negative or not finite in the state dtype.
  """
  return _trees.map_unmasked(
    lambda p, delta: _checked_leaf("prior.precision", delta, dtype_of(p), nonnegative=True),
    params,
    leaf_precisions(prior, weight_decay, keep, params),
  )


def prior_mean(prior: GaussianPrior | None, params, dtype_of):
  r"""$\mu_0$ like the params in the state dtype, or ``()`` for a prior at zero."""
  if prior is None or prior.mean is None:
    return ()
  fix = "Pass a prior mean with the params' structure and shapes (e.g. the pretrained params)."
  _trees.check_like_params("prior.mean", prior.mean, params, fix)
  return _trees.map_unmasked(
    lambda p, mu: _checked_leaf("prior.mean", mu, dtype_of(p), nonnegative=False),
    params,
    prior.mean,
  )


def fingerprint(prior: GaussianPrior | None) -> int | None:
  """A 31-bit fingerprint of the prior's arrays (mean, per-element precision); 0 for none.

  Scalar precisions are left out: the state holds them as values that
  ``update`` compares directly. ``None`` when an array cannot be read here
  (traced, or not addressable from this process): then nothing is compared.
  """
  if prior is None:
    return 0
  arrays = jax.tree.leaves(prior.mean) + [
    leaf for leaf in jax.tree.leaves(prior.precision) if jnp.ndim(leaf) > 0
  ]
  if not arrays:
    return 0
  digest = hashlib.blake2b(digest_size=4)
  for leaf in arrays:
    if isinstance(leaf, jax.core.Tracer) or (
      isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
    ):
      return None
    array = np.asarray(leaf)
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF or 1
