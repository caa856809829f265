r"""Post-hoc calibration on a validation split: a logit temperature, and IVON's posterior scale.

**Temperature scaling** (Guo et al., 2017) divides a classifier's logits
$z$ by one scalar $T > 0$ fitted on held-out data by minimising
the negative log-likelihood,

$$
\hat T = \arg\min_{T > 0} \; \frac1n \sum_i
  \Big[\mathrm{logsumexp}_k \big(z_{ik} / T\big) - z_{i y_i} / T\Big].
$$

$T > 1$ softens overconfident predictions, $T < 1$ sharpens
underconfident ones. Rows of log probabilities work as logits (the softmax
ignores a per-row constant), so the same fit applies to a Bayesian model
average, [`ivon_optax.predict.predictive_log_probs`][].

**The posterior scale** $\tau$ is the variational analogue: weights are
drawn from $\mathcal{N}(m, \tau^2\sigma^2)$ instead of
$\mathcal{N}(m, \sigma^2)$. Since
$\sigma = 1/\sqrt{\lambda (h + \delta)}$, scaling $\sigma$ by
$\tau$ is replacing the effective sample size $\lambda$ by
$\lambda / \tau^2$ ([`scale_posterior`][ivon_optax.calibration.scale_posterior]). $\tau < 1$ narrows
the posterior (a "cold" posterior), $\tau > 1$ widens it.
"""

import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ivon_optax._src.checks import check_count
from ivon_optax._src.checks import concrete_number
from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import real_array
from ivon_optax._src.checks import require
from ivon_optax._src.metrics import check_class_axis
from ivon_optax._src.metrics import check_labels
from ivon_optax._src.metrics import check_labels_for
from ivon_optax._src.metrics import check_predictions
from ivon_optax._src.metrics import label_log_probs


def _check_positive(name: str, value: chex.Array, fix: str) -> chex.Array:
  """Elementwise ``value > 0`` (NaN fails); raises ``ValueError`` on concrete values."""
  value = jnp.asarray(real_array(name, value))
  return require(value > 0, value, f"`{name}` must be > 0; found {{}}. {fix}")


def _per_row(temperature: chex.Array, shape: tuple) -> chex.Array:
  """``temperature`` shaped to broadcast against logits of ``shape``: one value per row.

  A scalar, an array of the rows' shape ``shape[:-1]`` (or broadcasting to
  it), or that shape with a trailing 1. Anything else would broadcast
  against the class axis, e.g. a per-example vector against ``(n, n)``
  logits: a ``ValueError``.
  """
  temperature = real_array("temperature", temperature)
  rows = shape[:-1]
  if jnp.ndim(temperature) == len(shape) and jnp.shape(temperature)[-1:] == (1,):
    temperature = temperature[..., 0]
  try:
    fits = jnp.broadcast_shapes(jnp.shape(temperature), rows) == rows
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(
      f"`temperature` must be a scalar or one per row of the logits (shape {rows}, or "
      f"{(*rows, 1)}); got shape {jnp.shape(temperature)} for logits of shape {shape}. "
      "Per-class temperatures are not supported."
    )
  return jnp.asarray(temperature)[..., None]


def _valid_logits(logits: chex.Array) -> chex.Array:
  """Rows of ``logits`` (keepdims) without NaN and with an entry above ``-inf``; raises if not."""
  valid = ~jnp.any(jnp.isnan(logits), axis=-1, keepdims=True) & jnp.any(
    logits > -jnp.inf, axis=-1, keepdims=True
  )
  return require(
    valid,
    _row_numbers(jnp.shape(valid)),
    "`logits` must not hold NaN, and each row needs an entry above -inf; found bad rows {}.",
  )


def _row_numbers(shape: tuple) -> np.ndarray:
  """The flat index of each row, for messages."""
  return np.arange(math.prod(shape)).reshape(shape)


def _scaled(logits: chex.Array, temperature: chex.Array) -> chex.Array:
  r"""$z / T$, or, in a row that holds $+\infty$, its limit: 0 there, $-\infty$ elsewhere.

  A row with a logit of $+\infty$ puts all its probability on the
  $+\infty$ entries at every temperature; $\infty / T$ would make the
  softmax NaN instead.
  """
  top = jnp.isposinf(logits)
  certain = jnp.any(top, axis=-1, keepdims=True)
  return jnp.where(certain, jnp.where(top, 0.0, -jnp.inf), logits / temperature)


def temperature_scale(logits: chex.Array, temperature: chex.Array) -> chex.Array:
  r"""Log probabilities at temperature $T$: $\log\mathrm{softmax}(z / T)$.

  A row that holds a logit of $+\infty$ keeps all its probability there at
  any $T$ (the limit of the formula); logits of $-\infty$ have probability 0.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax.calibration
    >>> logits = jnp.array([[2.0, 0.0]])
    >>> probs = jnp.exp(ivon_optax.calibration.temperature_scale(logits, 2.0))
    >>> [round(float(p), 3) for p in probs[0]]  # softmax([1, 0])
    [0.731, 0.269]

  Args:
    logits: logits or log probabilities, class axis last.
    temperature: $T > 0$: a scalar, or one per row of ``logits``
      (shape ``logits.shape[:-1]``, or that with a trailing 1). Other shapes
      raise a ``ValueError``: a vector of per-example temperatures must never
      be applied per class.

  Returns:
    Normalized log probabilities like ``logits``. Under ``jit``, a temperature
    that is not positive, or a row with a NaN, gives NaN (on concrete values,
    a ``ValueError``).
  """
  logits = jnp.asarray(real_array("logits", logits))
  check_class_axis(logits, "logits")
  temperature = _per_row(temperature, jnp.shape(logits))
  valid = _check_positive("temperature", temperature, "Fit one with fit_temperature.")
  valid = valid & _valid_logits(logits)
  return nan_unless(valid, jax.nn.log_softmax(_scaled(logits, temperature), axis=-1))


def _nll_slope(inverse_temperature: chex.Array, logits: chex.Array, labels: chex.Array):
  r"""$\frac{d}{d\beta}$ of the mean NLL at $\beta = 1/T$: $E_{p_\beta}[z] - z_y$.

  Entries with probability 0 (logits of $-\infty$) contribute 0, not
  $0 \cdot \infty$; rows whose label's logit is $+\infty$ (certain at every
  $T$) contribute 0.
  """
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  certain = jnp.isposinf(label_logit)
  logits = jnp.where(certain[..., None], 0.0, logits)
  probs = jax.nn.softmax(inverse_temperature * logits, axis=-1)
  expected = jnp.sum(jnp.where(probs > 0, probs * logits, 0.0), axis=-1)
  return jnp.mean(jnp.where(certain, 0.0, expected - label_logit))


def _check_bounds(bounds: Any) -> tuple:
  if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
    raise TypeError(f"`bounds` must be a pair (T_min, T_max) of positive numbers; got {bounds!r}.")
  for index, bound in enumerate(bounds):
    concrete_number(f"bounds[{index}]", bound)
  return tuple(bounds)


def fit_temperature(
  logits: chex.Array,
  labels: chex.Array,
  *,
  bounds: tuple[float, float] = (0.01, 100.0),
  num_iterations: int = 60,
) -> chex.Array:
  r"""The temperature $\hat T$ that minimises the mean NLL of ``labels``.

  The NLL is convex in the inverse temperature $\beta = 1/T$, with slope

  $$
  \frac{d}{d\beta}\,\mathrm{NLL}(\beta)
    = \frac1n \sum_i \big(\mathbb{E}_{\mathrm{softmax}(\beta z_i)}[z_{ik}] - z_{i y_i}\big),
  $$

  which increases with $\beta$. The fit bisects on $\log\beta$
  for the sign change of this slope, a fixed number of times: no learning
  rate, no starting point, and jittable. Each iteration halves the bracket
  ``bounds`` in log space, so 60 iterations reach round-off.

  Infinite logits: a row whose label's logit is $+\infty$ is right with
  certainty at every temperature and adds nothing to the slope (if every row
  is such a row, $\hat T = 1$); a row with $+\infty$ at another class, or
  $-\infty$ at its label, has an infinite NLL at every temperature and is
  refused (``ValueError``; NaN under ``jit``), as are NaN logits.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax.calibration
    >>> logits = 3.0 * jax.random.normal(jax.random.key(0), (4000, 5))
    >>> labels = jax.random.categorical(jax.random.key(1), logits / 2.0)  # true T = 2
    >>> t = ivon_optax.calibration.fit_temperature(logits, labels)
    >>> bool(1.8 < t < 2.2)
    True

  Args:
    logits: logits or log probabilities ``(n, classes)`` of a validation
      split (any leading shape; the NLL is the mean over all rows).
    labels: integer labels ``logits.shape[:-1]``.
    bounds: ``(T_min, T_max)``, two real scalars, the bracket searched.
      Where the NLL still decreases at a bound (e.g. separable data, where it
      keeps falling as $T \to 0$), that bound is returned.
    num_iterations: bisection steps (an integer >= 1).

  Returns:
    $\hat T$, a float32 (or float64) scalar. Under ``jit``, NaN for an
    invalid label, a NaN or impossible logit, or bounds that are not
    ``0 < T_min < T_max < inf``; on concrete values these raise a ``ValueError``.
  """
  num_iterations = check_count("num_iterations", num_iterations, fix="Use e.g. 60.")
  bounds = _check_bounds(bounds)
  logits = jnp.asarray(real_array("logits", logits))
  if jnp.ndim(logits) < 1 or jnp.shape(logits)[:-1] != jnp.shape(labels) or jnp.size(labels) == 0:
    raise ValueError(
      f"`logits` with shape {jnp.shape(logits)} and `labels` with shape {jnp.shape(labels)}: "
      "pass one integer label per row of logits (class axis last), at least one row."
    )
  check_class_axis(logits, "logits")
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  logits = logits.astype(dtype)
  labels = jnp.asarray(labels)
  low, high = jnp.asarray(bounds[0], dtype), jnp.asarray(bounds[1], dtype)
  valid_bounds = require(
    (low > 0) & (high > low) & jnp.isfinite(high),
    jnp.stack([low, high]),
    "`bounds` must be (T_min, T_max) with 0 < T_min < T_max < inf; found {}.",
  )
  valid = jnp.all(check_labels(labels, jnp.shape(logits)[-1])) & jnp.all(valid_bounds)
  label_logit = jnp.take_along_axis(logits, jnp.clip(labels, 0)[..., None], axis=-1)[..., 0]
  certain = jnp.isposinf(label_logit)
  finite_nll = ~jnp.isnan(logits).any(-1) & (
    certain | ((label_logit > -jnp.inf) & ~jnp.isposinf(logits).any(-1))
  )
  valid &= jnp.all(
    require(
      finite_nll,
      _row_numbers(jnp.shape(finite_nll)),
      "`logits` must give each row a finite NLL: no NaN, no -inf at the label and no +inf at "
      "another class (the NLL would be infinite at every temperature); found bad rows {}.",
    )
  )

  # Bisect on log beta, beta = 1/T in [1/T_max, 1/T_min].
  def bisect(_, bracket):
    log_low, log_high = bracket
    middle = 0.5 * (log_low + log_high)
    increasing = _nll_slope(jnp.exp(middle), logits, labels) > 0
    return jnp.where(increasing, log_low, middle), jnp.where(increasing, middle, log_high)

  bracket = (-jnp.log(high), -jnp.log(low))
  log_low, log_high = jax.lax.fori_loop(0, num_iterations, bisect, bracket)
  fitted = jnp.where(jnp.all(certain), 1.0, jnp.exp(-0.5 * (log_low + log_high)))
  return nan_unless(valid, fitted.astype(dtype))


class PosteriorScaleFit(NamedTuple):
  """The posterior scale with the lowest validation NLL, and the NLL at every candidate."""

  scale: chex.Array  # shape=(): the chosen tau.
  scales: chex.Array  # shape=(candidates,): the candidates tried.
  nlls: chex.Array  # shape=(candidates,): the validation NLL at each.


def default_scales() -> chex.Array:
  r"""The default candidates for $\tau$: 17 values from 1/8 to 2, evenly spaced in log."""
  return jnp.geomspace(0.125, 2.0, 17)


def fit_posterior_scale(
  predict_fn: Callable[[chex.Array], chex.Array],
  labels: chex.Array,
  *,
  scales: chex.Array | None = None,
) -> PosteriorScaleFit:
  r"""The posterior scale $\hat\tau$ with the lowest NLL among candidate ``scales``.

  $$
  \hat\tau = \arg\min_{\tau \in \text{scales}} \; -\frac1n \sum_i
    \log \frac1S \sum_s p\big(y_i \mid x_i, m + \tau\sigma\odot\epsilon_s\big)
  $$

  ``predict_fn(tau)`` returns the Bayesian model average's log probabilities
  on the validation inputs at scale $\tau$, typically
  [`ivon_optax.predict.predictive_log_probs`][] of
  [`ivon_optax.predict.sample_outputs`][] of
  [`scale_posterior`][ivon_optax.calibration.scale_posterior] ``(state, tau)``. Give it a **fixed
  key**: the same $\epsilon_s$ at every $\tau$ (common random numbers) make the NLL a smooth
  function of $\tau$, so that candidates are compared without Monte-Carlo noise
  between them. The candidates are evaluated one at a time
  (``jax.lax.map``), with the memory of one.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax.calibration
    >>> params = {"w": jnp.eye(3)}
    >>> state = ivon_optax.ivon(0.1, ess=1.0, hess_init=1.0).init(params)
    >>> x, y = 3.0 * jnp.eye(3), jnp.arange(3)  # the mean classifies all correctly
    >>> def predict_fn(tau):
    ...   scaled = ivon_optax.calibration.scale_posterior(state, tau)
    ...   logits = ivon_optax.predict.sample_outputs(
    ...       jax.random.key(0), lambda p, x: x @ p["w"], scaled, params, x, num_samples=32)
    ...   return ivon_optax.predict.predictive_log_probs(logits)
    >>> fit = ivon_optax.calibration.fit_posterior_scale(predict_fn, y)
    >>> round(float(fit.scale), 3)  # sigma = 1 is far too wide: the smallest candidate wins
    0.125

  Args:
    predict_fn: ``predict_fn(tau) -> log_probs``, jittable, normalized log
      probabilities ``(n, classes)`` for a scalar $\tau$.
    labels: the validation labels, ``log_probs.shape[:-1]``.
    scales: the candidate $\tau$ values, a 1-D array; by default
      [`default_scales`][ivon_optax.calibration.default_scales] (1/8 to 2). Include 1 to allow "no
      change".

  Returns:
    A [`PosteriorScaleFit`][ivon_optax.calibration.PosteriorScaleFit]. Labels out of range,
    predictions that are not normalized log probabilities and scales that are not positive raise
    a ``ValueError``; under ``jit`` they make ``scale`` and ``nlls`` NaN.
  """
  scales = default_scales() if scales is None else jnp.asarray(real_array("scales", scales))
  if jnp.ndim(scales) != 1 or jnp.size(scales) == 0:
    raise ValueError(
      f"`scales` must be a non-empty 1-D array of candidate posterior scales; got shape "
      f"{jnp.shape(scales)}."
    )
  valid = jnp.all(_check_positive("scales", scales, "Candidates must be positive."))
  # Shapes and labels are checked before the map (the shape costs a trace);
  # whether the predictions are normalized is known after it.
  valid &= jnp.all(check_labels_for(jax.eval_shape(predict_fn, scales[0]).shape, labels))

  def nll_at(tau):
    log_probs = predict_fn(tau)
    predictions_valid = check_predictions(log_probs, labels)
    return -jnp.mean(label_log_probs(log_probs, labels)), predictions_valid

  nlls, predictions_valid = jax.lax.map(nll_at, scales)
  valid &= jnp.all(
    require(
      predictions_valid,
      scales,
      "`predict_fn(tau)` must return normalized log probabilities (each row's logsumexp 0, "
      "no NaN); it did not at tau = {}. Return "
      "ivon_optax.predict.predictive_log_probs(logits), not logits.",
    )
  )
  nlls = nan_unless(valid, nlls)
  best = scales[jnp.argmin(nlls)]
  return PosteriorScaleFit(scale=nan_unless(valid, best), scales=scales, nlls=nlls)
