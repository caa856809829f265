r"""Prediction with IVON's posterior: many weight samples, one averaged prediction.

IVON learns $q(\theta) = \mathcal{N}(m, \sigma^2)$. Predicting at the mean
$m$ is the model as is. The Bayesian prediction averages the model over
weight samples $\theta_s \sim q$:

* [`sample_outputs`][ivon_optax.predict.sample_outputs] runs any ``apply_fn(params, *inputs)`` at
  $S$ samples and stacks the outputs on a leading axis;
* [`predictive_log_probs`][ivon_optax.predict.predictive_log_probs] turns stacked classifier logits
  into the log of the model-averaged predictive distribution;
* [`predictive_moments`][ivon_optax.predict.predictive_moments] turns stacked regression outputs
  into the predictive mean and variance, split into aleatoric and epistemic parts.

The paper (Shen et al., ICML 2024) reports "Bayes" results with 64 samples.

**Variance convention.** Every variance over weight samples in ivon_optax
([`predictive_moments`][ivon_optax.predict.predictive_moments],
[`ivon_optax.sensitivity.sampled_prediction_variance`][]) divides by $S$, not $S - 1$: it is the
variance of the $S$-sample mixture that the prediction averages, so that total =
aleatoric + epistemic holds exactly, and the plug-in estimate of
$\mathrm{Var}_{\theta \sim q}$, low by the factor $(S-1)/S$ (1.6% at
$S = 64$), far inside its Monte-Carlo error $\sqrt{2/S}$ (18%).
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src.checks import check_count
from ivon_optax._src.checks import check_key
from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import require
from ivon_optax._src.posterior import draw


def sample_outputs(
  key: chex.PRNGKey,
  apply_fn: Callable[..., Any],
  state: optax.OptState,
  params: optax.Params,
  *inputs: Any,
  num_samples: int,
  batch_size: int | None = None,
) -> Any:
  r"""The model's outputs at $S$ weight samples, stacked on a leading axis.

  With the keys $k_1, \dots, k_S$ = ``jax.random.split(key, S)``, output
  $s$ is ``apply_fn(theta_s, *inputs)`` at
  $\theta_s = m + \sigma \odot \epsilon_s$, the sample that
  ``ivon_optax.sample_params(k_s, state, params)`` draws.

  Samples are evaluated in parallel with ``jax.vmap``, which holds all
  $S$ weight copies and activations at once. With ``batch_size``, they
  are evaluated ``batch_size`` at a time (``jax.lax.map``, each chunk
  vmapped), so memory is bounded by ``batch_size`` samples whatever $S$.
  Wrap the call in ``jax.jit``.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.ones((3, 2))}
    >>> state = ivon_optax.ivon(0.1, ess=100.0).init(params)
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> x = jnp.ones((5, 3))
    >>> predict = jax.jit(lambda key, x: ivon_optax.predict.sample_outputs(
    ...     key, apply_fn, state, params, x, num_samples=8, batch_size=4))
    >>> predict(jax.random.key(0), x).shape
    (8, 5, 2)

  Args:
    key: a JAX PRNG key; split into one key per sample.
    apply_fn: ``apply_fn(params, *inputs)``, any jittable function of the
      params (a pytree output is fine). For Flax models see
      [`ivon_optax.flax`][].
    state: an optax state containing exactly one [`IVONState`][ivon_optax.IVONState].
    params: the mean parameters the state was created for.
    *inputs: the remaining arguments of ``apply_fn``, shared by all samples.
    num_samples: $S \ge 1$, the number of weight samples (an integer).
    batch_size: how many samples to evaluate at once; ``None`` evaluates all
      $S$ at once. Need not divide $S$.

  Returns:
    ``apply_fn``'s output with a leading axis of size $S$ on every leaf.
  """
  check_key(key)
  num_samples = check_count("num_samples", num_samples, fix="Use e.g. num_samples=64.")
  if batch_size is not None:
    batch_size = check_count(
      "batch_size", batch_size, fix="Pass the number of samples per chunk, or None for all."
    )
  keys = jax.random.split(key, num_samples)

  def outputs_at(sample_key):
    sampled, _ = draw(sample_key, state, params)
    return apply_fn(sampled, *inputs)

  if batch_size is None or batch_size >= num_samples:
    return jax.vmap(outputs_at)(keys)
  return jax.lax.map(outputs_at, keys, batch_size=batch_size)


def _check_sample_axis(name: str, value: chex.Array, axis: int) -> int:
  """Returns $S$, the size of the sample axis; raises if there is none or it is empty."""
  if jnp.ndim(value) < 1 or not -jnp.ndim(value) <= axis < jnp.ndim(value):
    raise ValueError(
      f"`{name}` with shape {jnp.shape(value)} has no sample axis {axis}: pass "
      "outputs stacked over weight samples, as sample_outputs returns them."
    )
  num_samples = jnp.shape(value)[axis]
  if num_samples == 0:
    raise ValueError(
      f"`{name}` with shape {jnp.shape(value)} holds 0 samples on axis {axis}: "
      "an average over samples needs at least one."
    )
  return num_samples


def variance_from_sums(
  deviation_sum: chex.Array, squared_sum: chex.Array, num_samples: int
) -> chex.Array:
  r"""The variance of $S$ values from their deviations $d_s$ from any reference.

  $$
  \widehat{\mathrm{Var}} = \frac1S \sum_s d_s^2 - \Big(\frac1S \sum_s d_s\Big)^2
  $$

  The package's one variance over weight samples (divided by $S$, see
  the module docstring). With the reference near the mean the correction
  term is small and the formula is accurate (the corrected two-pass
  algorithm); a streaming caller passes the running sums.
  """
  return (squared_sum - jnp.square(deviation_sum) / num_samples) / num_samples


def predictive_log_probs(logits: chex.Array, axis: int = 0) -> chex.Array:
  r"""Log probabilities of the Bayesian model average of a classifier.

  $$
  \log \bar p(y \mid x) = \log \tfrac1S \textstyle\sum_s \mathrm{softmax}(f_{\theta_s}(x))_y
    = \mathrm{logsumexp}_s \big(\log\mathrm{softmax}(f_{\theta_s}(x))\big)_y - \log S
  $$

  computed in log space, so that confident samples do not underflow.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> logits = jnp.array([[[2.0, 0.0]], [[0.0, 2.0]]])  # 2 samples, 1 input, 2 classes
    >>> jnp.exp(ivon_optax.predict.predictive_log_probs(logits)).round(3)
    Array([[0.5, 0.5]], dtype=float32)

  Args:
    logits: unnormalized log probabilities with the class axis last and the
      sample axis at ``axis``, e.g. ``(S, batch, classes)``.
    axis: the sample axis.

  Returns:
    Normalized log probabilities, ``logits``'s shape without the sample axis.
    NaN logits raise a ``ValueError``; under ``jit`` they give NaN.
  """
  if jnp.ndim(logits) < 2:
    raise ValueError(
      f"`logits` with shape {jnp.shape(logits)} needs a sample axis and a "
      "class axis (last), e.g. (num_samples, batch, num_classes)."
    )
  num_samples = _check_sample_axis("logits", logits, axis)
  if jnp.shape(logits)[-1] == 0:
    raise ValueError(f"`logits` with shape {jnp.shape(logits)} has an empty class axis (last).")
  valid = _no_nan_over_samples("logits", logits, axis)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  averaged = jax.nn.logsumexp(log_probs, axis=axis) - jnp.log(num_samples).astype(log_probs.dtype)
  return nan_unless(valid, averaged)


def _no_nan_over_samples(name: str, values: chex.Array, axis: int) -> chex.Array:
  """Whether no sample of each output is NaN (the sample axis reduced); raises if concrete."""
  values = jnp.asarray(values)
  return require(
    ~jnp.any(jnp.isnan(values), axis=axis),
    jnp.any(jnp.isnan(values), axis=axis),
    f"`{name}` holds NaN (the model's outputs at some weight samples): an average over "
    "samples would be NaN. Check the model, or the state the samples were drawn from.",
  )


class PredictiveMoments(NamedTuple):
  """Mean and variance of a regression model's Bayesian predictive distribution."""

  mean: chex.Array  # predictive mean, the mean over samples of the predicted means.
  variance: chex.Array  # total predictive variance = aleatoric + epistemic.
  aleatoric: chex.Array  # mean over samples of the predicted noise variance (0 if none).
  epistemic: chex.Array  # variance over samples of the predicted means.


def predictive_moments(
  means: chex.Array, stds: chex.Array | None = None, axis: int = 0
) -> PredictiveMoments:
  r"""Predictive mean and variance of a regression model averaged over weight samples.

  For samples $s = 1..S$ predicting $y \sim \mathcal{N}(\mu_s, \nu_s^2)$,
  the predictive distribution is the equal-weight mixture, with

  $$
  \bar\mu = \tfrac1S \textstyle\sum_s \mu_s, \qquad
  \mathrm{Var}[y] = \underbrace{\tfrac1S \textstyle\sum_s \nu_s^2}_{\text{aleatoric}}
    + \underbrace{\tfrac1S \textstyle\sum_s (\mu_s - \bar\mu)^2}_{\text{epistemic}}.
  $$

  The epistemic part divides by $S$ (not $S - 1$), as every
  variance over samples in ivon_optax does: it is the mixture's variance, so
  that the two parts add up to the mixture's total exactly, and it equals
  [`ivon_optax.sensitivity.sampled_prediction_variance`][] of the same
  samples.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> means = jnp.array([[1.0], [3.0]])  # 2 samples, 1 input
    >>> stds = jnp.array([[1.0], [1.0]])
    >>> moments = ivon_optax.predict.predictive_moments(means, stds)
    >>> moments.mean, moments.aleatoric
    (Array([2.], dtype=float32), Array([1.], dtype=float32))
    >>> moments.epistemic, moments.variance
    (Array([1.], dtype=float32), Array([2.], dtype=float32))

  Args:
    means: predicted means $\mu_s$, stacked on ``axis``.
    stds: predicted noise standard deviations $\nu_s$ (>= 0), like
      ``means``, for a model that outputs its noise scale; ``None`` for a model
      that predicts the mean only (the aleatoric part is then 0).
    axis: the sample axis.

  Returns:
    A [`PredictiveMoments`][ivon_optax.predict.PredictiveMoments]; each field has ``means``'s shape
    without the sample axis. A NaN in ``means``, or a negative or NaN ``stds`` entry, raises a
    ``ValueError``; under ``jit`` it makes the fields it reaches NaN.
  """
  num_samples = _check_sample_axis("means", means, axis)
  means_valid = _no_nan_over_samples("means", means, axis)
  mean = jnp.mean(means, axis=axis)
  deviation = means - jnp.expand_dims(mean, axis)
  epistemic = variance_from_sums(
    jnp.sum(deviation, axis=axis), jnp.sum(jnp.square(deviation), axis=axis), num_samples
  )
  if stds is None:
    aleatoric = jnp.zeros_like(epistemic)
  else:
    if jnp.shape(stds) != jnp.shape(means):
      raise ValueError(
        f"`stds` has shape {jnp.shape(stds)} but `means` has shape "
        f"{jnp.shape(means)}: pass one noise scale per predicted mean."
      )
    stds = jnp.asarray(stds)
    valid = require(stds >= 0, stds, "`stds` must be noise standard deviations >= 0; found {}.")
    aleatoric = nan_unless(
      jnp.all(valid, axis=axis), jnp.mean(jnp.square(stds), axis=axis).astype(epistemic.dtype)
    )
  return jax.tree.map(
    lambda value: nan_unless(means_valid, value),
    PredictiveMoments(
      mean=mean, variance=aleatoric + epistemic, aleatoric=aleatoric, epistemic=epistemic
    ),
  )
