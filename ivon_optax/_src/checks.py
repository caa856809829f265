"""Argument rules shared by the package, and the one guard idiom.

A value that can be checked where it is given is checked there and a mistake
raises an error that names the argument and the fix ([`require`][]); a value
that is traced (under ``jit``, ``vmap`` or ``inject_hyperparams``) cannot be,
and an invalid one turns the result into NaN instead ([`nan_unless`][]).
[`guard`][] applies both to a hyperparameter by the rules of [`RULES`][].
"""

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


# --- Hyperparameters --------------------------------------------------------------

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite32(value):
  # NaN compares false; written with operators so that it works on Python
  # numbers, NumPy values and jax arrays alike.
  return abs(value) <= FLOAT32_MAX


# name: (rule, what the rule says). A rule maps a number or an array to a bool.
RULES = {
  "learning_rate": (lambda v: (v >= 0) & _finite32(v), "must be finite and >= 0"),
  "ess": (
    lambda v: (v > 0) & _finite32(v),
    "must be > 0 and finite in float32 (use the training-set size)",
  ),
  "hess_init": (lambda v: (v > 0) & _finite32(v), "must be > 0 and finite (typical: 0.01 to 1)"),
  "beta1": (lambda v: (v >= 0) & (v <= 1), "must be in [0, 1] (typical: 0.9)"),
  "beta2": (lambda v: (v >= 0) & (v <= 1), "must be in [0, 1]"),
  "weight_decay": (lambda v: (v >= 0) & _finite32(v), "must be finite and >= 0"),
  "clip_radius": (lambda v: v > 0, "must be > 0 (float('inf') for no clipping)"),
}


def real_array(name: str, value: Any) -> Any:
  """``value`` as an array of real numbers (a traced or jax array stays as it is).

  Raises:
    TypeError: if ``value`` does not hold real numbers (strings, complex
      numbers, objects), naming the argument.
  """
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    array = value
  else:
    try:
      array = np.asarray(value)
    except (TypeError, ValueError) as error:
      raise TypeError(f"`{name}` must be a real number; got {type(value).__name__}.") from error
  if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == bool) or jnp.issubdtype(
    array.dtype, jnp.complexfloating
  ):
    raise TypeError(
      f"`{name}` must be a real number; got {type(value).__name__} {value!r} "
      f"(dtype {array.dtype}). Pass e.g. {name}=10.0."
    )
  return array


def concrete_number(name: str, value: Any) -> float | None:
  """``value`` as a float if it is a concrete real scalar; ``None`` if it is traced.

  Raises:
    TypeError: if ``value`` is not a real number or a scalar array of one
      (a traced value's shape and dtype are checked too).
  """
  array = real_array(name, value)
  if jnp.ndim(array) != 0:
    raise TypeError(f"`{name}` must be a scalar; got an array of shape {jnp.shape(array)}.")
  return None if isinstance(array, jax.core.Tracer) else float(array)


def guard(name: str, value: Any) -> Any:
  """``value`` checked by the rule ``RULES[name]``: the one guard of IVON's hyperparameters.

  A concrete value (a Python or NumPy number, a concrete array) that breaks
  the rule raises a ``ValueError``; a valid one is returned unchanged, so that
  Python numbers stay Python numbers in the formulas. A traced value becomes
  ``where(valid, value, nan)``, a scalar operation, so that an invalid
  injected or traced hyperparameter gives NaN, never a plausible step.

  Raises:
    TypeError: if ``value`` is not a real scalar.
    ValueError: if ``value`` is concrete and breaks the rule.
  """
  rule, says = RULES[name]
  number = concrete_number(name, value)
  if number is None:
    return nan_unless(rule(value), value)
  if not rule(number):
    raise ValueError(f"Invalid `{name}`={number!r}: it {says}.")
  return value
