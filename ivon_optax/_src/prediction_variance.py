r"""The variance of a model's outputs under IVON's posterior, linearized or sampled.

With per-example Jacobians $J_i = \partial f(x_i; m) / \partial\theta$ at
the mean and the diagonal posterior $\mathcal{N}(m, \sigma^2)$, the
linearized covariance of example $i$'s outputs is
$A_i = J_i \operatorname{diag}(\sigma^2) J_i^\top$;
[`prediction_variance`][ivon_optax.sensitivity.prediction_variance] returns its diagonal
$v_{ik} = \sum_p J_{ikp}^2 \sigma_p^2$ and
[`prediction_covariance`][ivon_optax.sensitivity.prediction_covariance] the whole block, from
the same Jacobians.
[`sampled_prediction_variance`][ivon_optax.sensitivity.sampled_prediction_variance] estimates the
variance from weight samples instead.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import check_count
from ivon_optax._src.checks import check_key
from ivon_optax._src.metrics import check_class_axis
from ivon_optax._src.metrics import check_label_shape
from ivon_optax._src.metrics import check_labels
from ivon_optax._src.posterior import draw
from ivon_optax._src.predict import variance_from_sums

ApplyFn = Callable[[Any, Any], chex.Array]
"""``apply_fn(params, inputs) -> outputs`` on a batch: inputs carry a leading batch axis."""


def check_batch(name: str, array: Any, num_examples: int) -> None:
  if jnp.ndim(array) < 1 or jnp.shape(array)[0] != num_examples:
    raise ValueError(
      f"`{name}` must have one entry per example along axis 0 ({num_examples} "
      f"examples); got shape {jnp.shape(array)}."
    )


def num_examples(inputs: Any) -> int:
  leaves = jax.tree.leaves(inputs)
  if not leaves or any(jnp.ndim(leaf) < 1 for leaf in leaves):
    raise ValueError("`inputs` must be an array (or pytree of arrays) with a leading batch axis.")
  sizes = {jnp.shape(leaf)[0] for leaf in leaves}
  if len(sizes) != 1:
    raise ValueError(f"All leaves of `inputs` need the same batch size; got sizes {sorted(sizes)}.")
  return sizes.pop()


def check_classifier_labels(apply_fn: "ApplyFn", params: Any, inputs: Any, labels: Any) -> int:
  """Checks a classifier's labels against its inputs and output shape; returns ``n``.

  Only the shape of the logits is computed (a trace), so that bad labels are
  refused before the Jacobians, the expensive part.
  """
  count = num_examples(inputs)
  check_label_shape(labels, count)
  logits = jax.eval_shape(apply_fn, params, inputs)
  if jnp.shape(logits)[:1] != (count,) or jnp.ndim(logits) != 2:
    raise ValueError(
      f"`apply_fn(params, inputs)` must return logits of shape ({count}, classes), one row per "
      f"example; got {getattr(logits, 'shape', type(logits).__name__)}."
    )
  check_class_axis(logits, "logits")
  check_labels(labels, jnp.shape(logits)[-1])
  return count


def _check_chunk_size(chunk_size: Any) -> int:
  return check_count("chunk_size", chunk_size, fix="Use e.g. chunk_size=32.")


def _example_output_fn(apply_fn: ApplyFn):
  """``apply_fn`` on a single example (no batch axis)."""

  def output(params, example):
    batch = jax.tree.map(lambda x: jnp.expand_dims(x, 0), example)
    return apply_fn(params, batch)[0]

  return output


def _jacobian_moment(jacobian, variance_params, output_ndim: int, full: bool) -> jax.Array:
  r"""$J \operatorname{diag}(\sigma^2) J^\top$ over all leaves for one example, or its diagonal.

  The diagonal keeps the outputs' shape; the full block flattens them to $K$.
  """

  def leaf_moment(jac, sigma_squared):
    output_shape = jnp.shape(jac)[:output_ndim]
    flat = jnp.reshape(jac, (math.prod(output_shape), -1))
    weighted = flat * jnp.ravel(sigma_squared)
    if full:
      return weighted @ flat.T
    return jnp.reshape(jnp.sum(weighted * flat, axis=1), output_shape)

  terms = jax.tree.leaves(jax.tree.map(leaf_moment, jacobian, variance_params))
  return functools.reduce(jnp.add, terms)


def _linearized(apply_fn, params, std, inputs, chunk_size, full: bool):
  """Outputs and their linearized variance (or covariance), ``chunk_size`` examples at a time."""
  chunk_size = _check_chunk_size(chunk_size)
  num_examples(inputs)
  _trees.check_like_params("std", std, params, "Pass ivon_optax.posterior_std(state, params).")
  output_fn = _example_output_fn(apply_fn)
  variance_params = jax.tree.map(jnp.square, std)

  def example(inputs_i):
    jacobian, output = jax.jacrev(lambda p: (output_fn(p, inputs_i),) * 2, has_aux=True)(params)
    moment = _jacobian_moment(jacobian, variance_params, jnp.ndim(output), full)
    return (jnp.ravel(output) if full else output), moment

  return jax.lax.map(example, inputs, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk_size"))
def prediction_variance(
  apply_fn: ApplyFn,
  params: optax.Params,
  std: optax.Params,
  inputs: Any,
  *,
  chunk_size: int = 32,
) -> tuple[chex.Array, chex.Array]:
  r"""Outputs and their linearized variance $v_{ik} = \sum_p J_{ikp}^2 \sigma_p^2$.

  Per-example Jacobians come from ``jax.jacrev`` (one backward pass per
  output), ``vmap``-ed over ``chunk_size`` examples at a time by
  ``lax.map``: memory is about ``chunk_size * outputs * params`` floats,
  whatever the number of examples. Only the diagonal of
  $J_i \operatorname{diag}(\sigma^2) J_i^\top$ is formed.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.ones((3, 2))}
    >>> std = {"w": jnp.full((3, 2), 0.5)}
    >>> outputs, variance = ivon_optax.sensitivity.prediction_variance(
    ...     apply_fn, params, std, jnp.array([[1.0, 2.0, 0.0]]))
    >>> variance  # (1 + 4) * 0.25 for each of the two outputs
    Array([[1.25, 1.25]], dtype=float32)

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs`` on a batch. Pass the
      same function object every call (it is a static argument of ``jit``).
    params: the mean $m$.
    std: the posterior standard deviation $\sigma$, like ``params``
      (e.g. [`ivon_optax.posterior_std`][]).
    inputs: an array, or pytree of arrays, with a leading batch axis.
    chunk_size: examples per vectorized Jacobian chunk.

  Returns:
    ``(outputs, variance)``, both of shape ``(n, *output_shape)``.
  """
  return _linearized(apply_fn, params, std, inputs, chunk_size, full=False)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk_size"))
def prediction_covariance(
  apply_fn: ApplyFn,
  params: optax.Params,
  std: optax.Params,
  inputs: Any,
  *,
  chunk_size: int = 32,
) -> tuple[chex.Array, chex.Array]:
  r"""Outputs and their linearized covariance $A_i = J_i \mathrm{diag}(\sigma^2) J_i^\top$.

  The full $K \times K$ block of each example, from the same
  per-example Jacobians as [`prediction_variance`][ivon_optax.sensitivity.prediction_variance]
  (whose result is its diagonal) and at the same cost; memory adds ``n * K * K`` floats for the
  result. Outputs are flattened to ``K`` values per example.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.ones((3, 2))}
    >>> std = {"w": jnp.full((3, 2), 0.5)}
    >>> outputs, covariance = ivon_optax.sensitivity.prediction_covariance(
    ...     apply_fn, params, std, jnp.array([[1.0, 2.0, 0.0]]))
    >>> covariance[0]  # each output has its own weights: no covariance between them
    Array([[1.25, 0.  ],
           [0.  , 1.25]], dtype=float32)

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs`` on a batch (static).
    params: the mean $m$.
    std: the posterior standard deviation $\sigma$, like ``params``.
    inputs: an array, or pytree of arrays, with a leading batch axis.
    chunk_size: examples per vectorized Jacobian chunk.

  Returns:
    ``(outputs, covariance)`` of shapes ``(n, K)`` and ``(n, K, K)``.
  """
  return _linearized(apply_fn, params, std, inputs, chunk_size, full=True)


def _chunked_outputs(apply_fn: ApplyFn, params, inputs, chunk_size: int) -> jax.Array:
  """``apply_fn(params, inputs)``, evaluated ``chunk_size`` examples at a time."""
  output_fn = _example_output_fn(apply_fn)
  return jax.lax.map(lambda example: output_fn(params, example), inputs, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_samples", "chunk_size"))
def sampled_prediction_variance(
  key: chex.PRNGKey,
  apply_fn: ApplyFn,
  state: optax.OptState,
  params: optax.Params,
  inputs: Any,
  *,
  num_samples: int = 64,
  chunk_size: int = 256,
) -> chex.Array:
  r"""Monte-Carlo prediction variance $\widehat{\mathrm{Var}}_{\theta \sim q}[f_i(\theta)]$.

  $$
  \hat v_i = \frac{1}{S} \sum_{s=1}^S \big(f_i(\theta_s) - \bar f_i\big)^2,
  \qquad \theta_s = m + \sigma \odot \epsilon_s
  $$

  It divides by $S$, as every variance over samples in ivon_optax does
  (one shared formula, see [`ivon_optax.predict`][]): it is the epistemic part of
  [`ivon_optax.predict.predictive_moments`][] of the same samples, the
  variance of the $S$-sample mixture. As an estimate of
  $\mathrm{Var}_q[f_i]$ it is low by the factor $(S-1)/S$
  (1.6% at $S = 64$), far inside its Monte-Carlo error below.

  A cheaper alternative to [`prediction_variance`][ivon_optax.sensitivity.prediction_variance] when
  the number of outputs or params is large: $S$ forward passes instead of one
  backward pass per output. Deviations are taken from $f_i(m)$ and
  accumulated in a ``lax.scan``, so memory holds one weight sample and the
  outputs of ``chunk_size`` examples at a time, plus the ``(n, k)`` sums.

  *Bias.* For a model linear in $\theta$ it estimates the
  Jacobian form $v_i$ up to that factor (the posterior is diagonal, so
  $\mathrm{Var}[J_i\theta] = \sum_p J_{ip}^2\sigma_p^2$ exactly). For a
  network it estimates the variance of the network itself, which departs
  from the linearized $v_i$ by terms of order $\sigma^4$ times the
  curvature of $f$, either way: saturating units shrink it (on the
  digits MLP of ``examples/sensitivity.py``, with $S = 64$, the median
  ratio to the linearized $v_i$ is 0.81, and the rankings of the
  scores agree, Spearman 0.999). *Variance.* For
  Gaussian $f_i(\theta)$ the relative standard deviation is about
  $\sqrt{2/S}$ (18% at $S = 64$), per
  example and output; rankings of whole datasets are much more stable than
  that, single values are not.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros((3, 2))}
    >>> state = ivon_optax.ivon(0.1, ess=4.0, hess_init=1.0, weight_decay=0.0).init(params)
    >>> variance = ivon_optax.sensitivity.sampled_prediction_variance(
    ...     jax.random.key(0), lambda p, x: x @ p["w"], state, params,
    ...     jnp.ones((5, 3)), num_samples=2000)
    >>> bool(jnp.allclose(variance, 3 * 0.25, rtol=0.15))  # sum_p sigma_p^2
    True

  Args:
    key: a JAX PRNG key.
    apply_fn: ``apply_fn(params, inputs) -> outputs`` on a batch (static).
    state: an optax state containing the [`ivon_optax.IVONState`][].
    params: the mean $m$.
    inputs: an array, or pytree of arrays, with a leading batch axis.
    num_samples: $S \geq 2$ weight samples (an integer).
    chunk_size: examples per forward pass (an integer).

  Returns:
    ``(n, *output_shape)`` variances, in the outputs' dtype.
  """
  check_key(key)
  num_samples = check_count(
    "num_samples", num_samples, minimum=2, fix="A variance needs two samples; use e.g. 64."
  )
  chunk_size = _check_chunk_size(chunk_size)
  num_examples(inputs)
  mean_outputs = _chunked_outputs(apply_fn, params, inputs, chunk_size)

  def add_sample(sums, sample_key):
    sampled, _ = draw(sample_key, state, params)
    deviation = _chunked_outputs(apply_fn, sampled, inputs, chunk_size) - mean_outputs
    return (sums[0] + deviation, sums[1] + jnp.square(deviation)), None

  zeros = jnp.zeros_like(mean_outputs)
  (total, total_squared), _ = jax.lax.scan(
    add_sample, (zeros, zeros), jax.random.split(key, num_samples)
  )
  return variance_from_sums(total, total_squared, num_samples)
