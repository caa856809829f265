r"""A fast standard-normal sampler: a counter-based hash and the Box-Muller transform.

IVON draws one Gaussian number per parameter per step. ``jax.random.normal``
with the default threefry key runs 20 rounds of a block cipher per pair of
numbers and then ``lax.erf_inv``; on a CPU that costs several times the whole
AdamW update. [`counter_normal`][ivon_optax.random.counter_normal] instead

1. derives four 32-bit seeds from the key (one tiny ``jax.random.bits`` call),
2. hashes the flat index $j$ of each pair of draws with two keyed rounds
   of a 32-bit integer mixer, $b_j = f(f(j \oplus s_0) + s_1)$, once with
   $(s_0, s_1)$ and once with $(s_2, s_3)$,
3. maps the top 24 bits of each to uniforms $u_j, v_j \in (0, 1)$
   ($(k + \tfrac12)/2^{24}$, exact in float32), and
4. returns the Box-Muller pair $\sqrt{-2\log u_j}\,(\cos 2\pi v_j,
   \sin 2\pi v_j)$: the cosines fill the first half of the draws, the sines the
   second. Both share one log and one square root, the costly part, and the
   sine is a cosine a quarter turn later, so one short polynomial serves both.

The result is a pure, deterministic function of the key and the shape, so it
works under ``jit``, ``vmap`` over keys and ``shard_map``, and two calls with
the same key agree. On a mesh each device hashes only the indices of its own
shard: with an even first axis, the two draws of a pair are rows $r$ and
$n_0/2 + r$ of one column. It covers $|z| \le \sqrt{2 \log 2^{25}} = 5.89$
(``jax.random.normal``: 5.4 in float32); float64 draws use 52-bit uniforms and
``jax.scipy.special.ndtri``.

References:
  G. Box and M. Muller, [A note on the generation of random normal
  deviates](https://doi.org/10.1214/aoms/1177706645), Ann. Math. Statist. 29, 1958. C. Wellons,
  [Prospecting for hash functions](https://nullprogram.com/blog/2018/07/31/) (the ``lowbias32``
  mixer), 2018.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ivon_optax._src.checks import check_key

_MAX_ELEMENTS = 2**32


def mix32(bits: chex.Array) -> chex.Array:
  r"""Wellons' ``lowbias32``, a bijection of ``uint32`` with near-ideal avalanche.

  $$
  x \mathrel{\oplus}= x \gg 16;\ x \mathrel{*}= \texttt{0x21f0aaad};\
  x \mathrel{\oplus}= x \gg 15;\ x \mathrel{*}= \texttt{0x735a2d97};\
  x \mathrel{\oplus}= x \gg 15
  $$

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax._src.counter_normal import mix32
    >>> mix32(jnp.arange(3, dtype=jnp.uint32)).dtype
    dtype('uint32')
  """
  bits = bits ^ (bits >> 16)
  bits = bits * jnp.uint32(0x21F0AAAD)
  bits = bits ^ (bits >> 15)
  bits = bits * jnp.uint32(0x735A2D97)
  return bits ^ (bits >> 15)


def counter_bits(seeds: chex.Array, shape: Sequence[int]) -> chex.Array:
  r"""Random ``uint32`` of ``shape``: $f(f(i \oplus s_0) + s_1)$ of each flat index $i$.

  Every round is keyed, so that two seed pairs give unrelated streams rather
  than shifted copies of one stream.

  Args:
    seeds: ``uint32[2]``, the two seeds $s_0, s_1$.
    shape: the output shape; at most $2^{32}$ elements.

  Returns:
    ``uint32`` array of ``shape``.
  """
  counters = flat_index(shape)
  return mix32(mix32(counters ^ seeds[0]) + seeds[1])


def flat_index(shape: Sequence[int]) -> chex.Array:
  r"""The C-order flat index $i = \sum_d i_d \prod_{e > d} n_e$ of each element, as ``uint32``.

  Built from one ``broadcasted_iota`` per axis, so that on a mesh each device
  computes the indices of its own shard (XLA cannot split a flat iota that is
  reshaped into a sharded axis, and would compute all of it on every device).

  Examples:
    >>> from ivon_optax._src.counter_normal import flat_index
    >>> flat_index((2, 3)).tolist()
    [[0, 1, 2], [3, 4, 5]]
  """
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  return index


# Cephes' logf: log(1 + f) = f - f^2/2 + f^3 P(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1).
_LOG_POLY = tuple(
  np.float32(c)
  for c in (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
  )
)
# log(2) split so that exponent * _LN2_HIGH is exact.
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)


def log_of_normal_float(y: chex.Array) -> chex.Array:
  r"""Natural log of positive, normal (not denormal, finite) float32 ``y``, as in Cephes' ``logf``.

  With $y = 2^e m$, $m \in [\sqrt{1/2}, \sqrt2)$ and $f = m - 1$:
  $\log y = e \log 2 + f - f^2/2 + f^3 P(f)$. Skipping the checks for zero,
  negative, denormal and non-finite inputs that ``jnp.log`` needs makes it about
  10% cheaper here; [`counter_normal`][ivon_optax.random.counter_normal] only passes uniforms in
  $[2^{-25}, 1)$.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax._src.counter_normal import log_of_normal_float
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


# cos(x) = sum_k (-1)^k x^(2k) / (2k)!, to x^12: below 1e-8 for |x| <= pi/2.
_COS_POLY = tuple(np.float32((-1) ** k / math.factorial(2 * k)) for k in range(6, -1, -1))


def cos_turns(turns: chex.Array) -> chex.Array:
  r"""Float32 $\cos(2\pi t)$ of ``turns`` $t$, from a polynomial on a quarter turn.

  With $a = |t - \mathrm{round}(t)| \in [0, \tfrac12]$:
  $\cos 2\pi t = \cos 2\pi a$, and $\cos 2\pi a = -\cos 2\pi(\tfrac12 - a)$
  folds $a$ onto $[0, \tfrac14]$, where the Taylor series to
  $x^{12}$ is exact to float32 rounding. ``jnp.cos`` reduces arbitrary
  arguments and costs several times more on CPU.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax._src.counter_normal import cos_turns
    >>> [round(float(c), 6) + 0.0 for c in cos_turns(jnp.array([0.0, 0.25, 0.5, 0.75]))]
    [1.0, 0.0, -1.0, 0.0]
  """
  distance = jnp.abs(turns - jnp.round(turns))
  far = distance > np.float32(0.25)
  angle = jnp.where(far, np.float32(0.5) - distance, distance) * np.float32(2 * math.pi)
  angle_squared = angle * angle
  poly = _COS_POLY[0]
  for coef in _COS_POLY[1:]:
    poly = poly * angle_squared + coef
  return jnp.where(far, -poly, poly)


def open_unit_uniform(bits: chex.Array) -> chex.Array:
  r"""Float32 uniforms $(k + \tfrac12)/2^{24} \in (0, 1)$, $k$ the top 24 bits.

  Every value is exact in float32, and neither 0 nor 1 occurs.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ivon_optax._src.counter_normal import open_unit_uniform
    >>> float(open_unit_uniform(jnp.uint32(0))) == 2.0**-25
    True
  """
  # k < 2**24 fits int32, whose conversion to float is one vector instruction.
  top = (bits >> 8).astype(jnp.int32).astype(jnp.float32)
  return top * np.float32(2.0**-24) + np.float32(2.0**-25)


def _seeds(key: chex.PRNGKey, shape: Sequence[int]) -> chex.Array:
  check_key(key)
  return jax.random.bits(key, tuple(shape), jnp.uint32)


def counter_normal(
  key: chex.PRNGKey,
  shape: Sequence[int] = (),
  dtype: Any = jnp.float32,
  *,
  out_sharding: Any = None,
) -> chex.Array:
  r"""Standard normal draws, a deterministic function of ``key``.

  Several times faster than ``jax.random.normal`` on CPU.

  With $n$ draws in C order and $P = \lceil n/2 \rceil$ pairs, pair
  $j$ gives

  $$
  z_j = \sqrt{-2\log u_j}\,\cos 2\pi v_j, \qquad
  z_{P+j} = \sqrt{-2\log u_j}\,\sin 2\pi v_j
  $$

  with $u_j, v_j$ from `open_unit_uniform` of two
  `counter_bits` streams (float64: $z_i = \Phi^{-1}(u_i)$ with
  52-bit uniforms and ``jax.scipy.special.ndtri``). Drop-in for
  ``jax.random.normal`` and the ``sampler`` of [`ivon_optax.sample_params`][].

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from ivon_optax._src.counter_normal import counter_normal
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
    shape: the output shape; at most $2^{32}$ elements.
    dtype: a floating dtype. float16/bfloat16 are computed in float32 and
      rounded.
    out_sharding: as in ``jax.random.normal``: the draws' sharding on a mesh
      with explicit axes (``optax.tree.random_like`` passes each leaf's), so
      that each device computes only its shard. Ignored without explicit axes,
      where XLA already computes each shard where it lives.

  Returns:
    An array of ``shape`` and ``dtype`` with i.i.d. standard normal entries.

  Raises:
    ValueError: if ``dtype`` is not floating or ``shape`` has $2^{32}$ or
      more elements.
  """
  shape, dtype = _checked(shape, dtype)
  return _sharded(lambda k: normal_from_seeds(_seeds(k, (4,)), shape, dtype), key, out_sharding)


def _checked(shape: Sequence[int], dtype: Any) -> tuple[tuple[int, ...], Any]:
  shape = tuple(int(d) for d in shape)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`dtype` must be a floating dtype for normal draws; got {dtype}.")
  if math.prod(shape) >= _MAX_ELEMENTS:
    raise ValueError(
      f"`shape`={shape} has {math.prod(shape)} elements; counter_normal counts "
      f"elements in uint32, so at most 2**32 - 1. Draw such a leaf in pieces, "
      f"or pass sampler=jax.random.normal."
    )
  return shape, jax.dtypes.canonicalize_dtype(dtype)


def _sharded(draw, key: chex.PRNGKey, out_sharding: Any) -> chex.Array:
  """``draw(key)``, computed shard by shard on a mesh with explicit axes."""
  out_sharding = _explicit_sharding(out_sharding)
  if out_sharding is None:
    return draw(key)
  return jax.sharding.auto_axes(
    draw, out_sharding=out_sharding, axes=out_sharding.mesh.explicit_axes
  )(key)


def _explicit_sharding(out_sharding: Any) -> jax.sharding.NamedSharding | None:
  """``out_sharding`` as a ``NamedSharding`` if its mesh has explicit axes, else ``None``."""
  if isinstance(out_sharding, jax.sharding.PartitionSpec):
    out_sharding = jax.sharding.NamedSharding(jax.sharding.get_abstract_mesh(), out_sharding)
  if out_sharding is None or not out_sharding.mesh.explicit_axes:
    return None
  return out_sharding


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def normal_from_seeds(seeds: chex.Array, shape: tuple[int, ...], dtype: Any) -> chex.Array:
  """[`counter_normal`][ivon_optax.random.counter_normal]'s draws from its four ``uint32`` seeds.

  Compiled once per shape and dtype, so that an eager draw is one program.
  """
  if dtype == jnp.float64:
    # 52 bits, so that k + 1/2 is exact in float64.
    high = (counter_bits(seeds[:2], shape) >> 6).astype(jnp.float64)
    low = (counter_bits(seeds[2:], shape) >> 6).astype(jnp.float64)
    uniform = (high * 2.0**26 + low + 0.5) * 2.0**-52
    return jax.scipy.special.ndtri(uniform)
  size = math.prod(shape)
  # Pair j gives draws j and P + j. With an even first axis these are row r and row
  # n_0/2 + r of the same column, so the pairs have the shape of the first half and every
  # axis keeps its own sharding on a mesh; otherwise they are flat.
  rows_pair = bool(shape) and shape[0] % 2 == 0
  pair_shape = (shape[0] // 2, *shape[1:]) if rows_pair else ((size + 1) // 2,)
  # XLA keeps the radius in a buffer of its own rather than recomputing its log and square
  # root for both draws of a pair (it does not fuse costly ops into a broadcast).
  radius = jnp.sqrt(
    np.float32(-2.0) * log_of_normal_float(open_unit_uniform(counter_bits(seeds[:2], pair_shape)))
  )
  turns = open_unit_uniform(counter_bits(seeds[2:], pair_shape))
  # Row 0: cos(2 pi v); row 1: cos(2 pi (v - 1/4)) = sin(2 pi v).
  quarter = jnp.array([0.0, 0.25], jnp.float32).reshape((2,) + (1,) * len(pair_shape))
  normals = radius * cos_turns(turns - quarter)
  if not rows_pair:
    normals = normals.reshape(-1)[:size]
  return normals.reshape(shape).astype(dtype)


def counter_normal_tree(key: chex.PRNGKey, tree: Any) -> Any:
  """Standard normals like each array leaf of ``tree`` (shape, dtype, sharding), from one key.

  The seeds of every leaf come from one ``jax.random.bits(key, (leaves, 4))``
  call, so that a step derives its keys with one small kernel instead of a
  few per leaf; each leaf is then drawn as [`counter_normal`][ivon_optax.random.counter_normal]
  draws it. Leaves that are not arrays (``optax.MaskedNode``) are kept.
  """
  leaves, treedef = jax.tree.flatten(tree)
  seeds = _seeds(key, (max(len(leaves), 1), 4))

  def draw(index, leaf):
    shape, dtype = _checked(leaf.shape, leaf.dtype)
    return _sharded(
      lambda s: normal_from_seeds(s[index], shape, dtype), seeds, jax.typeof(leaf).sharding
    )

  return treedef.unflatten([draw(index, leaf) for index, leaf in enumerate(leaves)])
