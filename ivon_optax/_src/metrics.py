r"""Accuracy and uncertainty metrics of a classifier, as jittable functions.

Conventions shared by every function here:

* predictions are **normalized log probabilities** ``log_probs`` of shape
  ``(..., num_classes)`` (``jax.nn.log_softmax(logits)`` at the mean, or
  [`ivon_optax.predict.predictive_log_probs`][] for the Bayesian average);
* ``labels`` are integer class indices in ``[0, num_classes)`` of shape
  ``log_probs.shape[:-1]``;
* scalar metrics are means over all examples; logs are natural (nats).

For out-of-distribution detection, [`auroc`][ivon_optax.metrics.auroc] and
[`ood_auroc`][ivon_optax.metrics.ood_auroc] rank examples by a score, higher meaning "more likely
out-of-distribution", e.g. [`predictive_entropy`][ivon_optax.metrics.predictive_entropy].

**Invalid values.** A label outside ``[0, num_classes)``, a row of
``log_probs`` that is not normalized (its ``logsumexp`` is not 0, e.g. logits
passed by mistake, or NaN) and a NaN score are refused: on concrete arrays
with a ``ValueError``, and under ``jax.jit``/``vmap``, where values cannot be
inspected, by a NaN result, never a plausible number. Empty inputs raise.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ivon_optax._src.checks import check_count
from ivon_optax._src.checks import concrete_number
from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import require


def check_labels(labels: chex.Array, num_classes: int, name: str = "labels") -> chex.Array:
  r"""Elementwise validity of class indices, $0 \le y < K$; raises on concrete ones."""
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(
      f"`{name}` must hold integer class indices, got dtype {jnp.result_type(labels)}; "
      "convert one-hot labels with labels.argmax(-1)."
    )
  labels = jnp.asarray(labels)
  return require(
    (labels >= 0) & (labels < num_classes),
    labels,
    f"`{name}` must be class indices in [0, {num_classes}), one per row of the "
    "predictions; found {}. Map the labels to 0..num_classes-1 (negative labels do "
    "not count from the end).",
  )


def check_label_shape(labels: chex.Array, num_examples: int) -> None:
  """Raises a ``ValueError`` unless ``labels`` has shape ``(num_examples,)``.

  Labels shaped ``(n, 1)`` would broadcast against ``(n, classes)`` arrays
  into ``(n, n, classes)`` ones: a wrong result, not an error.
  """
  if jnp.shape(labels) != (num_examples,):
    raise ValueError(
      f"`labels` must have shape ({num_examples},), one integer class index per example; "
      f"got shape {jnp.shape(labels)}. Flatten labels of shape (n, 1) with "
      "labels.reshape(-1); convert one-hot labels with labels.argmax(-1)."
    )


def check_eps(eps: chex.Numeric, upper: float) -> chex.Array:
  """Whether the clip or floor ``eps`` is a real scalar in ``[0, upper)``; raises when concrete."""
  concrete_number("eps", eps)
  eps = jnp.asarray(eps)
  return require(
    (eps >= 0) & (eps < upper),
    eps,
    f"`eps` must be in [0, {upper:g}); got {{}}. Keep the default (1e-10).",
  )


def check_class_axis(log_probs: chex.Array, name: str = "log_probs") -> None:
  """Raises a ``ValueError`` unless ``log_probs`` has a last (class) axis of size >= 1."""
  if jnp.ndim(log_probs) < 1 or jnp.shape(log_probs)[-1] < 1:
    raise ValueError(
      f"`{name}` must have a non-empty class axis (last); got shape {jnp.shape(log_probs)}."
    )


def _normalized_rows(log_probs: chex.Array) -> chex.Array:
  r"""Which rows are normalized: $|\mathrm{logsumexp}_k \log p_k| \le \sqrt{\epsilon}$.

  The tolerance is the square root of the dtype's machine epsilon (3e-4 in
  float32): round-off of ``log_softmax`` stays far below it, while logits or
  unnormalized scores miss it by orders of magnitude. NaN rows fail.
  """
  dtype = jnp.result_type(log_probs)
  dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)
  tolerance = float(np.sqrt(jnp.finfo(dtype).eps))
  log_total = jax.nn.logsumexp(jnp.asarray(log_probs, jnp.promote_types(dtype, jnp.float32)), -1)
  return require(
    jnp.abs(log_total) <= tolerance,
    log_total,
    "`log_probs` must be normalized log probabilities: the logsumexp of each row must "
    f"be 0 (within {tolerance:.1g}); found rows with logsumexp {{}}. Pass "
    "jax.nn.log_softmax(logits), or ivon_optax.predict.predictive_log_probs(...) for "
    "stacked samples.",
  )


def check_labels_for(shape: tuple, labels: chex.Array) -> chex.Array:
  """Checks ``labels`` against predictions of ``shape``; returns their validity like ``labels``.

  Needs only the predictions' shape (e.g. from ``jax.eval_shape``), so that
  labels are checked before the predictions are computed.
  """
  if len(shape) < 1 or shape[-1] < 1:
    raise ValueError(f"`log_probs` must have a non-empty class axis (last); got shape {shape}.")
  if tuple(shape[:-1]) != jnp.shape(labels):
    raise ValueError(
      f"`labels` has shape {jnp.shape(labels)} but `log_probs` has shape "
      f"{tuple(shape)}: pass one integer label per row of log probabilities."
    )
  if jnp.size(labels) == 0:
    raise ValueError("`labels` and `log_probs` are empty: a metric needs at least one example.")
  return check_labels(labels, shape[-1])


def check_predictions(
  log_probs: chex.Array, labels: chex.Array, *, normalized: bool = True
) -> chex.Array:
  """Checks shapes; returns whether every label and row of ``log_probs`` is valid (a scalar)."""
  valid = check_labels_for(jnp.shape(log_probs), labels)
  if normalized:
    rows = _normalized_rows(log_probs)
  else:
    rows = require(
      ~jnp.any(jnp.isnan(log_probs), axis=-1),
      jnp.any(jnp.isnan(log_probs), axis=-1),
      "`log_probs` must not contain NaN.",
    )
  return jnp.all(valid & rows)


def predicts_label(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  """Whether each example's most probable class is its label."""
  return jnp.argmax(log_probs, axis=-1) == labels


def label_log_probs(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  r"""$\log p_i(y_i)$, the log probability of each example's label."""
  return jnp.take_along_axis(log_probs, jnp.asarray(labels)[..., None], axis=-1)[..., 0]


def accuracy(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  """The fraction of examples whose most probable class is the label.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    >>> float(ivon_optax.metrics.accuracy(log_probs, jnp.array([0, 1, 1])))
    0.666...

  Args:
    log_probs: log probabilities (or logits), ``(..., num_classes)``; no NaN.
    labels: integer labels in ``[0, num_classes)``, ``log_probs.shape[:-1]``.

  Returns:
    A float32 scalar in [0, 1]; NaN under ``jit`` for an invalid label or a NaN.
  """
  valid = check_predictions(log_probs, labels, normalized=False)
  return nan_unless(valid, jnp.mean(predicts_label(log_probs, labels), dtype=jnp.float32))


def negative_log_likelihood(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  r"""The mean negative log probability of the labels, $-\tfrac1N \sum_i \log p_i(y_i)$.

  Equals scikit-learn's ``log_loss`` on ``exp(log_probs)``, without its
  clipping of probabilities.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
    >>> nll = ivon_optax.metrics.negative_log_likelihood(log_probs, jnp.array([0, 1]))
    >>> float(nll)  # (ln 2 + ln 4/3) / 2
    0.490...

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels in ``[0, num_classes)``, ``log_probs.shape[:-1]``.

  Returns:
    A scalar in nats, >= 0; NaN under ``jit`` for invalid input.
  """
  valid = check_predictions(log_probs, labels)
  return nan_unless(valid, -jnp.mean(label_log_probs(log_probs, labels)))


def brier_score(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  r"""The multi-class Brier score $\tfrac1N \sum_i \sum_k (p_{ik} - [y_i = k])^2$.

  This is Brier's (1950) original sum over all classes, in [0, 2]. For two
  classes it is twice scikit-learn's binary ``brier_score_loss``, which
  scores the positive class only; it equals ``brier_score_loss(...,
  scale_by_half=False)`` for any number of classes.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.75, 0.25]]))
    >>> float(ivon_optax.metrics.brier_score(log_probs, jnp.array([0])))  # 0.25**2 + 0.25**2
    0.125

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels in ``[0, num_classes)``, ``log_probs.shape[:-1]``.

  Returns:
    A scalar in [0, 2]; NaN under ``jit`` for invalid input.
  """
  valid = check_predictions(log_probs, labels)
  probs = jnp.exp(log_probs)
  one_hot = jax.nn.one_hot(labels, jnp.shape(log_probs)[-1], dtype=probs.dtype)
  return nan_unless(valid, jnp.mean(jnp.sum(jnp.square(probs - one_hot), axis=-1)))


class CalibrationBins(NamedTuple):
  """Per-bin statistics of confidence against accuracy: a reliability diagram."""

  count: chex.Array  # shape=(num_bins,), int32: examples whose confidence falls in the bin.
  accuracy: chex.Array  # shape=(num_bins,), float32: their accuracy (0 for an empty bin).
  confidence: chex.Array  # shape=(num_bins,), float32: their mean confidence (0 if empty).


def calibration_bins(
  log_probs: chex.Array, labels: chex.Array, num_bins: int = 15
) -> CalibrationBins:
  r"""Confidence and accuracy in equal-width confidence bins.

  The confidence of example $i$ is $c_i = \max_k p_{ik}$; bin
  $b = 1..B$ holds the examples with $c_i \in ((b-1)/B,\ b/B]$
  (Guo et al., 2017). Plot ``accuracy`` against the bin centres for a
  reliability diagram.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]))
    >>> bins = ivon_optax.metrics.calibration_bins(log_probs, jnp.array([0, 0, 0]), num_bins=2)
    >>> bins.count
    Array([0, 3], dtype=int32)
    >>> bins.accuracy, bins.confidence
    (Array([0.       , 0.6666667], dtype=float32), Array([0.       , 0.7333333], dtype=float32))

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels in ``[0, num_classes)``, ``log_probs.shape[:-1]``.
    num_bins: $B$, the number of equal-width bins on [0, 1] (an integer).

  Returns:
    A [`CalibrationBins`][ivon_optax.metrics.CalibrationBins]. Under ``jit``, invalid input makes
    its ``accuracy`` and ``confidence`` NaN.
  """
  num_bins = check_count("num_bins", num_bins, fix="Use e.g. num_bins=15.")
  valid = check_predictions(log_probs, labels)
  log_probs = jnp.reshape(log_probs, (-1, jnp.shape(log_probs)[-1]))
  labels = jnp.reshape(labels, (-1,))
  confidence = jnp.exp(jnp.max(log_probs, axis=-1)).astype(jnp.float32)
  correct = predicts_label(log_probs, labels).astype(jnp.float32)
  # Right-closed bins: a confidence of exactly b/B belongs to bin b.
  bin_index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  count = jax.ops.segment_sum(jnp.ones_like(bin_index), bin_index, num_segments=num_bins)
  safe_count = jnp.maximum(count, 1).astype(jnp.float32)

  def bin_mean(values):
    return nan_unless(
      valid, jax.ops.segment_sum(values, bin_index, num_segments=num_bins) / safe_count
    )

  return CalibrationBins(count=count, accuracy=bin_mean(correct), confidence=bin_mean(confidence))


def expected_calibration_error(
  log_probs: chex.Array, labels: chex.Array, num_bins: int = 15
) -> chex.Array:
  r"""Expected calibration error, $\sum_b \tfrac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|$.

  The standard absolute-gap ECE (Naeini et al., 2015; Guo et al., 2017) over
  the equal-width bins of [`calibration_bins`][ivon_optax.metrics.calibration_bins]: confidence is
  the top-class probability, 15 bins by default.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]))
    >>> ece = ivon_optax.metrics.expected_calibration_error(log_probs, jnp.array([0, 0, 0]), 2)
    >>> float(ece)
    0.0666...

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels in ``[0, num_classes)``, ``log_probs.shape[:-1]``.
    num_bins: the number of equal-width bins on [0, 1] (an integer).

  Returns:
    A float32 scalar in [0, 1]; NaN under ``jit`` for invalid input.
  """
  bins = calibration_bins(log_probs, labels, num_bins)
  weights = bins.count.astype(jnp.float32) / jnp.sum(bins.count)
  return jnp.sum(weights * jnp.abs(bins.accuracy - bins.confidence))


def predictive_entropy(log_probs: chex.Array) -> chex.Array:
  r"""The entropy $H_i = -\sum_k p_{ik} \log p_{ik}$ of each predictive distribution.

  In nats, in $[0, \log K]$; classes with $p_{ik} = 0$ contribute 0.
  Pass the Bayesian average ([`ivon_optax.predict.predictive_log_probs`][]) for the
  total uncertainty used to flag out-of-distribution inputs.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> ivon_optax.metrics.predictive_entropy(jnp.log(jnp.array([[0.5, 0.5], [1.0, 0.0]])))
    Array([0.6931472, 0.       ], dtype=float32)

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.

  Returns:
    The entropies, shape ``log_probs.shape[:-1]``; NaN under ``jit`` for a
    row that is not normalized.
  """
  check_class_axis(log_probs)
  valid = _normalized_rows(log_probs)
  terms = -jnp.exp(log_probs) * log_probs
  return nan_unless(valid, jnp.sum(jnp.where(jnp.isneginf(log_probs), 0.0, terms), axis=-1))


def auroc(scores: chex.Array, labels: chex.Array) -> chex.Array:
  r"""Area under the ROC curve of ``scores`` for telling positives (``labels`` true) from negatives.

  Computed exactly from ranks (the Mann-Whitney statistic): with
  $n_+$ positives and $n_-$ negatives,

  $$
  \mathrm{AUROC} = \frac{\sum_{i:\,y_i=1} r_i - n_+ (n_+ + 1)/2}{n_+ n_-}
    = P(s_+ > s_-) + \tfrac12 P(s_+ = s_-),
  $$

  where $r_i$ is the rank of $s_i$ among all scores and tied
  scores share their average rank. Equals scikit-learn's ``roc_auc_score``;
  1 means every positive scores higher than every negative, 0.5 is chance.
  Like scikit-learn, it refuses NaN scores, labels other than 0/1 and a
  class with no examples (NaN under ``jit``); infinite scores rank as the
  extremes.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> scores = jnp.array([0.1, 0.4, 0.35, 0.8])
    >>> float(ivon_optax.metrics.auroc(scores, jnp.array([False, False, True, True])))
    0.75

  Args:
    scores: one score per example, higher meaning "more likely positive";
      any shape.
    labels: booleans (or 0/1) of the same shape, true for positives; both
      classes present.

  Returns:
    A float32 scalar in [0, 1].
  """
  if jnp.shape(scores) != jnp.shape(labels):
    raise ValueError(
      f"`labels` has shape {jnp.shape(labels)} but `scores` has shape "
      f"{jnp.shape(scores)}: pass one label per score."
    )
  scores, labels = jnp.ravel(jnp.asarray(scores)), jnp.ravel(jnp.asarray(labels))
  valid = jnp.all(require(~jnp.isnan(scores), scores, "`scores` must not be NaN; found {}."))
  valid &= jnp.all(
    require(
      (labels == 0) | (labels == 1),
      labels,
      "`labels` must be booleans or 0/1 (true for positives); found {}.",
    )
  )
  positive = labels.astype(bool)
  num_positive = jnp.sum(positive, dtype=jnp.float32)
  num_negative = jnp.float32(jnp.size(scores)) - num_positive
  valid &= require(
    (num_positive > 0) & (num_negative > 0),
    num_positive,
    "AUROC needs at least one positive and one negative example; found {} positives "
    f"among {jnp.size(scores)} examples.",
  )
  sorted_scores = jnp.sort(scores)
  below = jnp.searchsorted(sorted_scores, scores, side="left")
  at_or_below = jnp.searchsorted(sorted_scores, scores, side="right")
  # 1-based average rank of each score among ties: below + (ties + 1) / 2.
  ranks = (below + at_or_below + 1).astype(jnp.float32) / 2.0
  rank_sum = jnp.sum(jnp.where(positive, ranks, 0.0))
  area = (rank_sum - num_positive * (num_positive + 1.0) / 2.0) / (num_positive * num_negative)
  return nan_unless(valid, area)


def ood_auroc(in_scores: chex.Array, out_scores: chex.Array) -> chex.Array:
  """AUROC of a score for flagging out-of-distribution inputs.

  The out-of-distribution examples are the positives of [`auroc`][ivon_optax.metrics.auroc]: 1
  means every out-of-distribution input scores higher than every
  in-distribution one.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> float(ivon_optax.metrics.ood_auroc(jnp.array([0.1, 0.2]), jnp.array([0.15, 0.9])))
    0.75

  Args:
    in_scores: scores of in-distribution inputs (e.g. predictive entropies),
      any shape, at least one, no NaN.
    out_scores: scores of out-of-distribution inputs, any shape, at least
      one, no NaN.

  Returns:
    A float32 scalar in [0, 1]; NaN under ``jit`` for a NaN score.
  """
  for name, value in (("in_scores", in_scores), ("out_scores", out_scores)):
    if jnp.size(value) == 0:
      raise ValueError(f"`{name}` is empty: the AUROC needs at least one score of each kind.")
  in_scores, out_scores = jnp.ravel(in_scores), jnp.ravel(out_scores)
  scores = jnp.concatenate([in_scores, out_scores])
  labels = jnp.concatenate([jnp.zeros(in_scores.shape, bool), jnp.ones(out_scores.shape, bool)])
  return auroc(scores, labels)
