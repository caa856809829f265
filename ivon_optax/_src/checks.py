"""Argument rules shared by the package: estimators, dtypes, keys, counts and validity."""

import numbers
from typing import Any
from typing import Literal
from typing import get_args

import chex
import jax
import jax.numpy as jnp
import numpy as np

HessApprox = Literal["price", "gradsq"]
HESS_APPROXIMATIONS: tuple[str, ...] = get_args(HessApprox)


def check_hess_approx(hess_approx: Any) -> None:
  """Raises a ``ValueError`` unless ``hess_approx`` names one of IVON's Hessian estimators."""
  if hess_approx not in HESS_APPROXIMATIONS:
    raise ValueError(
      f"Invalid `hess_approx`={hess_approx!r}: use one of {HESS_APPROXIMATIONS}, "
      "as given to ivon_optax.ivon."
    )


def state_dtype(param: Any, dtype: Any | None = None) -> jnp.dtype:
  r"""The dtype IVON keeps its buffers and sample averages in for ``param``.

  ``dtype`` if given; otherwise the param's dtype promoted to at least float32,
  so that bfloat16 params keep a float32 $h$ that can absorb
  $(1-\beta_2)$-sized increments, and float64 params keep float64.
  """
  if dtype is not None:
    return jnp.dtype(dtype)
  return jnp.promote_types(jnp.result_type(param), jnp.float32)


def check_key(key: Any) -> None:
  """Raises a ``TypeError`` unless ``key`` is one JAX PRNG key.

  Typed keys (``jax.random.key``) and legacy ``uint32`` keys
  (``jax.random.PRNGKey``) are both accepted.
  """
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape == ():
      return
  elif (
    isinstance(key, (jax.Array, jax.core.Tracer))
    and key.dtype == jnp.uint32
    and key.ndim == 1
    and key.shape[0] in (2, 4)
  ):
    return
  raise TypeError(
    f"`key` must be one JAX PRNG key, from jax.random.key(seed) or "
    f"jax.random.PRNGKey(seed); got {type(key).__name__} with shape "
    f"{jnp.shape(key)} and dtype {getattr(key, 'dtype', None)}. For several "
    "samples split the key and jax.vmap over the keys."
  )


def check_count(name: str, value: Any, *, minimum: int = 1, fix: str = "") -> int:
  """``value`` as a Python int, if it is an integer (Python or NumPy) of at least ``minimum``.

  The one rule for every count argument of the package (``num_samples``,
  ``num_bins``, ``batch_size``, ``chunk_size``): bools and floats raise a
  ``TypeError``, integers below ``minimum`` a ``ValueError``.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"`{name}` must be an integer (a Python or NumPy int), got {value!r} of type "
      f"{type(value).__name__}. {fix}".rstrip()
    )
  if value < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}. {fix}".rstrip())
  return int(value)


def require(valid: chex.Array, values: chex.Array, message: str) -> chex.Array:
  """Raises ``ValueError(message)`` if ``valid`` is concrete and false anywhere; returns ``valid``.

  Under a transformation (``valid`` a tracer) nothing can be checked: the
  caller folds ``valid`` into its result as NaN (`nan_unless`).
  ``message`` may hold one ``{}``, filled with a few of the offending
  ``values`` (an array shaped like ``valid``).
  """
  if isinstance(valid, jax.core.Tracer) or bool(jnp.all(valid)):
    return valid
  offending = np.asarray(values)[~np.broadcast_to(np.asarray(valid), np.shape(values))]
  raise ValueError(message.format(np.unique(offending)[:4].tolist()))


def nan_unless(valid: chex.Array, value: chex.Array) -> chex.Array:
  """``value`` where ``valid``, NaN elsewhere (``valid`` broadcasts against ``value``)."""
  return jnp.where(valid, value, jnp.nan)
