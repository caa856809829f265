r"""A fast standard-normal sampler: a counter-based hash fed to the normal quantile function.

IVON draws one Gaussian number per parameter per step. ``jax.random.normal``
with the default threefry key runs 20 rounds of a block cipher per pair of
numbers and then ``lax.erf_inv``; on a CPU that costs several times the whole
AdamW update. :func:`counter_normal` instead

1. derives two 32-bit seeds from the key (one tiny ``jax.random.bits`` call),
2. hashes each element's flat index :math:`i` with two keyed rounds of a
   32-bit integer mixer, :math:`b_i = f(f(i \oplus s_0) + s_1)`,
3. maps the top 24 bits to :math:`x_i = (2k_i + 1)/2^{24} - 1 \in (-1, 1)`,
   exactly representable in float32, and
4. returns :math:`z_i = \sqrt2\, \mathrm{erf}^{-1}(x_i)` with Giles' single
   precision approximation, evaluated on
   :math:`w = -\log((1-x)(1+x))` (more accurate near :math:`|x| \to 1` than
   ``log1p(-x*x)``, and cheaper).

The result is a pure, deterministic function of the key, so it works under
``jit``, ``vmap`` over keys and ``shard_map``, and two calls with the same key
agree. Like ``jax.random.normal`` it covers :math:`|z| \le 5.4`
(float32 uniforms with 24 bits); float64 draws use 52-bit uniforms and
``jax.scipy.special.ndtri``.

References:
  M. Giles, `Approximating the erfinv function
  <https://people.maths.ox.ac.uk/gilesm/files/gems_erfinv.pdf>`_, GPU Computing
  Gems Jade Edition, 2011.
  C. Wellons, `Prospecting for hash functions
  <https://nullprogram.com/blog/2018/07/31/>`_ (the ``lowbias32`` mixer), 2018.
"""

import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_MAX_ELEMENTS = 2**32

# Giles' float32 erfinv polynomials, times sqrt(2) so that they give the normal quantile
# directly: p_central(w - 2.5) for w < 5, p_tail(sqrt(w) - 3) otherwise (highest degree first).
_CENTRAL = tuple(np.float32(c * math.sqrt(2.0)) for c in (
    2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
    -0.00125372503, -0.00417768164, 0.246640727, 1.50140941))
_TAIL = tuple(np.float32(c * math.sqrt(2.0)) for c in (
    -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
    -0.0076224613, 0.00943887047, 1.00167406, 2.83297682))


def mix32(bits: chex.Array) -> chex.Array:
  r"""Wellons' ``lowbias32``, a bijection of ``uint32`` with near-ideal avalanche.

  .. math::
    x \mathrel{\oplus}= x \gg 16;\ x \mathrel{*}= \texttt{0x21f0aaad};\
    x \mathrel{\oplus}= x \gg 15;\ x \mathrel{*}= \texttt{0x735a2d97};\
    x \mathrel{\oplus}= x \gg 15

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax.noise import mix32
    >>> mix32(jnp.arange(3, dtype=jnp.uint32)).dtype
    dtype('uint32')
  """
  bits = bits ^ (bits >> 16)
  bits = bits * jnp.uint32(0x21F0AAAD)
  bits = bits ^ (bits >> 15)
  bits = bits * jnp.uint32(0x735A2D97)
  return bits ^ (bits >> 15)


def counter_bits(seeds: chex.Array, shape: Sequence[int]) -> chex.Array:
  r"""Random ``uint32`` of ``shape``: :math:`f(f(i \oplus s_0) + s_1)` of each flat index :math:`i`.

  Every round is keyed, so that two seed pairs give unrelated streams rather
  than shifted copies of one stream.

  Args:
    seeds: ``uint32[2]``, the two seeds :math:`s_0, s_1`.
    shape: the output shape; at most :math:`2^{32}` elements.

  Returns:
    ``uint32`` array of ``shape``.
  """
  counters = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  return mix32(mix32(counters ^ seeds[0]) + seeds[1])


# Cephes' logf: log(1 + f) = f - f^2/2 + f^3 P(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1).
_LOG_POLY = tuple(np.float32(c) for c in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
# log(2) split so that exponent * _LN2_HIGH is exact.
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)


def log_of_normal_float(y: chex.Array) -> chex.Array:
  r"""Natural log of positive, normal (not denormal, finite) float32 ``y``, as in Cephes' ``logf``.

  With :math:`y = 2^e m`, :math:`m \in [\sqrt{1/2}, \sqrt2)` and :math:`f = m - 1`:
  :math:`\log y = e \log 2 + f - f^2/2 + f^3 P(f)`. Skipping the checks for zero,
  negative, denormal and non-finite inputs that ``jnp.log`` needs makes it about
  10% cheaper here; :func:`normal_quantile_symmetric` only passes
  :math:`y \in [2^{-23}, 1]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax.noise import log_of_normal_float
    >>> round(float(log_of_normal_float(jnp.float32(0.5))), 6)
    -0.693147
  """
  bits = lax.bitcast_convert_type(y, jnp.int32)
  exponent = (bits >> 23) - 127
  mantissa = lax.bitcast_convert_type((bits & 0x7FFFFF) | 0x3F800000, jnp.float32)
  high = mantissa > np.float32(math.sqrt(2.0))
  mantissa = jnp.where(high, mantissa * np.float32(0.5), mantissa)
  exponent = jnp.where(high, exponent + 1, exponent).astype(jnp.float32)
  f = mantissa - np.float32(1.0)
  f_squared = f * f
  poly = _LOG_POLY[0]
  for coef in _LOG_POLY[1:]:
    poly = poly * f + coef
  log_mantissa = f * f_squared * poly + exponent * _LN2_LOW - np.float32(0.5) * f_squared + f
  return log_mantissa + exponent * _LN2_HIGH


def normal_quantile_symmetric(x: chex.Array) -> chex.Array:
  r"""The standard normal quantile at :math:`(1+x)/2`, i.e. :math:`\sqrt2\,\mathrm{erf}^{-1}(x)`, float32.

  Giles' approximation with :math:`w = -\log((1-x)(1+x))`, the log from
  :func:`log_of_normal_float`; relative error below :math:`5 \cdot 10^{-7}`
  (4 ulp) against ``scipy.special.ndtri`` for ``x`` on the 24-bit grid that
  :func:`counter_normal` uses, where ``lax.erf_inv`` reaches
  :math:`6 \cdot 10^{-6}` (it takes ``log1p(-x*x)``, and ``x*x`` rounds).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax.noise import normal_quantile_symmetric
    >>> z = normal_quantile_symmetric(jnp.array([0.0, 0.6826895]))
    >>> [round(float(v), 4) for v in z]
    [0.0, 1.0]
  """
  w = -log_of_normal_float((1.0 - x) * (1.0 + x))
  central = w < 5.0
  # One Horner chain with per-element coefficients: a select is cheaper than a second chain.
  t = jnp.where(central, w - 2.5, jnp.sqrt(w) - 3.0)
  poly = jnp.where(central, _CENTRAL[0], _TAIL[0])
  for central_coef, tail_coef in zip(_CENTRAL[1:], _TAIL[1:]):
    poly = jnp.where(central, central_coef, tail_coef) + poly * t
  return poly * x


def _seeds(key: chex.PRNGKey, count: int) -> chex.Array:
  if not (isinstance(key, (jax.Array, jax.core.Tracer))
          and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32)):
    raise TypeError(
        f"`key` must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)); "
        f"got {type(key).__name__} with dtype {getattr(key, 'dtype', None)}.")
  return jax.random.bits(key, (count,), jnp.uint32)


def counter_normal(
    key: chex.PRNGKey, shape: Sequence[int] = (), dtype: Any = jnp.float32
) -> chex.Array:
  r"""Standard normal draws, a deterministic function of ``key``, several times faster than ``jax.random.normal`` on CPU.

  Element :math:`i` (in C order) is :math:`z_i = \Phi^{-1}(u_i)` with the
  uniform :math:`u_i = (k_i + \tfrac12) / 2^{24}` and :math:`k_i` the top 24 bits
  of :func:`counter_bits` (float64: 52 bits from two hashes, and
  ``jax.scipy.special.ndtri``). Drop-in for ``jax.random.normal`` and the
  ``sampler`` of :func:`ivon_optax.sample_params`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from ivon_optax.noise import counter_normal
    >>> z = counter_normal(jax.random.key(0), (1000,))
    >>> z.shape, z.dtype
    ((1000,), dtype('float32'))
    >>> bool(jnp.all(z == counter_normal(jax.random.key(0), (1000,))))
    True
    >>> abs(float(z.mean())) < 0.15 and abs(float(z.std()) - 1) < 0.1
    True

  Args:
    key: a JAX PRNG key, typed (``jax.random.key``) or legacy ``uint32``
      (``jax.random.PRNGKey``), of any implementation. Use a fresh key for each
      draw (``jax.random.split`` or ``jax.random.fold_in``); the same key gives
      the same numbers.
    shape: the output shape; at most :math:`2^{32}` elements.
    dtype: a floating dtype. float16/bfloat16 are computed in float32 and
      rounded.

  Returns:
    An array of ``shape`` and ``dtype`` with i.i.d. standard normal entries.

  Raises:
    ValueError: if ``dtype`` is not floating or ``shape`` has :math:`2^{32}` or
      more elements.
  """
  shape = tuple(int(d) for d in shape)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`dtype` must be a floating dtype for normal draws; got {dtype}.")
  dtype = jax.dtypes.canonicalize_dtype(dtype)
  if math.prod(shape) >= _MAX_ELEMENTS:
    raise ValueError(
        f"`shape`={shape} has {math.prod(shape)} elements; counter_normal counts "
        f"elements in uint32, so at most 2**32 - 1. Draw such a leaf in pieces, "
        f"or pass sampler=jax.random.normal.")
  if dtype == jnp.float64:
    seeds = _seeds(key, 4)
    # 52 bits, so that k + 1/2 is exact in float64.
    high = (counter_bits(seeds[:2], shape) >> 6).astype(jnp.float64)
    low = (counter_bits(seeds[2:], shape) >> 6).astype(jnp.float64)
    uniform = (high * 2.0**26 + low + 0.5) * 2.0**-52
    return jax.scipy.special.ndtri(uniform)
  seeds = _seeds(key, 2)
  # k < 2**24 fits int32, whose conversion to float is a single vector instruction.
  top = (counter_bits(seeds, shape) >> 8).astype(jnp.int32).astype(jnp.float32)
  symmetric = top * np.float32(2.0**-23) + np.float32(2.0**-24 - 1.0)
  return normal_quantile_symmetric(symmetric).astype(dtype)
