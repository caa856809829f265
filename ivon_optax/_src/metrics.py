r"""Accuracy and uncertainty metrics of a classifier, as jittable functions.

Conventions shared by every function here:

* predictions are **normalized log probabilities** ``log_probs`` of shape
  ``(..., num_classes)`` (``jax.nn.log_softmax(logits)`` at the mean, or
  :func:`ivon_optax.predict.predictive_log_probs` for the Bayesian average);
* ``labels`` are integer class indices of shape ``log_probs.shape[:-1]``;
* scalar metrics are means over all examples; logs are natural (nats).

For out-of-distribution detection, :func:`auroc` and :func:`ood_auroc` rank
examples by a score, higher meaning "more likely out-of-distribution", e.g.
:func:`predictive_entropy`.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


def _check_predictions(log_probs: chex.Array, labels: chex.Array) -> None:
  if jnp.ndim(log_probs) < 1:
    raise ValueError(
      f"`log_probs` must have a class axis (last); got shape {jnp.shape(log_probs)}."
    )
  if jnp.shape(log_probs)[:-1] != jnp.shape(labels):
    raise ValueError(
      f"`labels` has shape {jnp.shape(labels)} but `log_probs` has shape "
      f"{jnp.shape(log_probs)}: pass one integer label per row of log probabilities."
    )
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(
      f"`labels` must hold integer class indices, got dtype {jnp.result_type(labels)}; "
      "convert one-hot labels with labels.argmax(-1)."
    )


def accuracy(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  """The fraction of examples whose most probable class is the label.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    >>> float(ivon_optax.metrics.accuracy(log_probs, jnp.array([0, 1, 1])))
    0.666...

  Args:
    log_probs: log probabilities (or logits), ``(..., num_classes)``.
    labels: integer labels, ``log_probs.shape[:-1]``.

  Returns:
    A float32 scalar in [0, 1].
  """
  _check_predictions(log_probs, labels)
  return jnp.mean(jnp.argmax(log_probs, axis=-1) == labels, dtype=jnp.float32)


def _label_log_probs(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  return jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def negative_log_likelihood(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  r"""The mean negative log probability of the labels, :math:`-\tfrac1N \sum_i \log p_i(y_i)`.

  Equals scikit-learn's ``log_loss`` on ``exp(log_probs)``, without its
  clipping of probabilities.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
    >>> float(ivon_optax.metrics.negative_log_likelihood(log_probs, jnp.array([0, 1])))  # (ln 2 + ln 4/3) / 2
    0.490...

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels, ``log_probs.shape[:-1]``.

  Returns:
    A scalar in nats, >= 0.
  """
  _check_predictions(log_probs, labels)
  return -jnp.mean(_label_log_probs(log_probs, labels))


def brier_score(log_probs: chex.Array, labels: chex.Array) -> chex.Array:
  r"""The multi-class Brier score :math:`\tfrac1N \sum_i \sum_k (p_{ik} - [y_i = k])^2`.

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
    labels: integer labels, ``log_probs.shape[:-1]``.

  Returns:
    A scalar in [0, 2].
  """
  _check_predictions(log_probs, labels)
  probs = jnp.exp(log_probs)
  one_hot = jax.nn.one_hot(labels, jnp.shape(log_probs)[-1], dtype=probs.dtype)
  return jnp.mean(jnp.sum(jnp.square(probs - one_hot), axis=-1))


class CalibrationBins(NamedTuple):
  """Per-bin statistics of confidence against accuracy: a reliability diagram."""

  count: chex.Array  # shape=(num_bins,), int32: examples whose confidence falls in the bin.
  accuracy: chex.Array  # shape=(num_bins,), float32: their accuracy (0 for an empty bin).
  confidence: chex.Array  # shape=(num_bins,), float32: their mean confidence (0 if empty).


def _check_num_bins(num_bins) -> None:
  if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
    raise ValueError(f"`num_bins` must be a positive Python int (e.g. 15), got {num_bins!r}.")


def calibration_bins(
  log_probs: chex.Array, labels: chex.Array, num_bins: int = 15
) -> CalibrationBins:
  r"""Confidence and accuracy in equal-width confidence bins.

  The confidence of example :math:`i` is :math:`c_i = \max_k p_{ik}`; bin
  :math:`b = 1..B` holds the examples with :math:`c_i \in ((b-1)/B,\ b/B]`
  (Guo et al., 2017). Plot ``accuracy`` against the bin centres for a
  reliability diagram.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]))
    >>> bins = ivon_optax.metrics.calibration_bins(log_probs, jnp.array([0, 0, 0]), num_bins=2)
    >>> bins.count, bins.accuracy, bins.confidence
    (Array([0, 3], dtype=int32), Array([0.       , 0.6666667], dtype=float32), Array([0.       , 0.7333333], dtype=float32))

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels, ``log_probs.shape[:-1]``.
    num_bins: :math:`B`, the number of equal-width bins on [0, 1] (a Python int).

  Returns:
    A :class:`CalibrationBins`.
  """
  _check_predictions(log_probs, labels)
  _check_num_bins(num_bins)
  log_probs = jnp.reshape(log_probs, (-1, jnp.shape(log_probs)[-1]))
  labels = jnp.reshape(labels, (-1,))
  confidence = jnp.exp(jnp.max(log_probs, axis=-1)).astype(jnp.float32)
  correct = (jnp.argmax(log_probs, axis=-1) == labels).astype(jnp.float32)
  # Right-closed bins: a confidence of exactly b/B belongs to bin b.
  bin_index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  count = jax.ops.segment_sum(jnp.ones_like(bin_index), bin_index, num_segments=num_bins)
  safe_count = jnp.maximum(count, 1).astype(jnp.float32)
  return CalibrationBins(
    count=count,
    accuracy=jax.ops.segment_sum(correct, bin_index, num_segments=num_bins) / safe_count,
    confidence=jax.ops.segment_sum(confidence, bin_index, num_segments=num_bins) / safe_count,
  )


def expected_calibration_error(
  log_probs: chex.Array, labels: chex.Array, num_bins: int = 15
) -> chex.Array:
  r"""Expected calibration error with equal-width bins, :math:`\sum_b \tfrac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|`.

  The standard absolute-gap ECE (Naeini et al., 2015; Guo et al., 2017) over
  the bins of :func:`calibration_bins`: confidence is the top-class
  probability, 15 bins by default.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> log_probs = jnp.log(jnp.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]))
    >>> float(ivon_optax.metrics.expected_calibration_error(log_probs, jnp.array([0, 0, 0]), num_bins=2))
    0.0666...

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.
    labels: integer labels, ``log_probs.shape[:-1]``.
    num_bins: the number of equal-width bins on [0, 1].

  Returns:
    A float32 scalar in [0, 1].
  """
  bins = calibration_bins(log_probs, labels, num_bins)
  weights = bins.count.astype(jnp.float32) / jnp.sum(bins.count)
  return jnp.sum(weights * jnp.abs(bins.accuracy - bins.confidence))


def predictive_entropy(log_probs: chex.Array) -> chex.Array:
  r"""The entropy :math:`H_i = -\sum_k p_{ik} \log p_{ik}` of each predictive distribution.

  In nats, in :math:`[0, \log K]`; classes with :math:`p_{ik} = 0` contribute 0.
  Pass the Bayesian average (:func:`ivon_optax.predict.predictive_log_probs`) for the
  total uncertainty used to flag out-of-distribution inputs.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> ivon_optax.metrics.predictive_entropy(jnp.log(jnp.array([[0.5, 0.5], [1.0, 0.0]])))
    Array([0.6931472, 0.       ], dtype=float32)

  Args:
    log_probs: normalized log probabilities, ``(..., num_classes)``.

  Returns:
    The entropies, shape ``log_probs.shape[:-1]``.
  """
  if jnp.ndim(log_probs) < 1:
    raise ValueError(
      f"`log_probs` must have a class axis (last); got shape {jnp.shape(log_probs)}."
    )
  terms = -jnp.exp(log_probs) * log_probs
  return jnp.sum(jnp.where(jnp.isneginf(log_probs), 0.0, terms), axis=-1)


def auroc(scores: chex.Array, labels: chex.Array) -> chex.Array:
  r"""Area under the ROC curve of ``scores`` for telling positives (``labels`` true) from negatives.

  Computed exactly from ranks (the Mann-Whitney statistic): with
  :math:`n_+` positives and :math:`n_-` negatives,

  .. math::
    \mathrm{AUROC} = \frac{\sum_{i:\,y_i=1} r_i - n_+ (n_+ + 1)/2}{n_+ n_-}
      = P(s_+ > s_-) + \tfrac12 P(s_+ = s_-),

  where :math:`r_i` is the rank of :math:`s_i` among all scores and tied
  scores share their average rank. Equals scikit-learn's ``roc_auc_score``;
  1 means every positive scores higher than every negative, 0.5 is chance. It
  is NaN when either class is empty.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> scores = jnp.array([0.1, 0.4, 0.35, 0.8])
    >>> float(ivon_optax.metrics.auroc(scores, jnp.array([False, False, True, True])))
    0.75

  Args:
    scores: one score per example, higher meaning "more likely positive";
      any shape.
    labels: booleans (or 0/1) of the same shape, true for positives.

  Returns:
    A float32 scalar in [0, 1].
  """
  if jnp.shape(scores) != jnp.shape(labels):
    raise ValueError(
      f"`labels` has shape {jnp.shape(labels)} but `scores` has shape "
      f"{jnp.shape(scores)}: pass one label per score."
    )
  scores = jnp.ravel(scores)
  positive = jnp.ravel(labels).astype(bool)
  sorted_scores = jnp.sort(scores)
  below = jnp.searchsorted(sorted_scores, scores, side="left")
  at_or_below = jnp.searchsorted(sorted_scores, scores, side="right")
  # 1-based average rank of each score among ties: below + (ties + 1) / 2.
  ranks = (below + at_or_below + 1).astype(jnp.float32) / 2.0
  num_positive = jnp.sum(positive, dtype=jnp.float32)
  num_negative = jnp.float32(jnp.size(scores)) - num_positive
  rank_sum = jnp.sum(jnp.where(positive, ranks, 0.0))
  return (rank_sum - num_positive * (num_positive + 1.0) / 2.0) / (num_positive * num_negative)


def ood_auroc(in_scores: chex.Array, out_scores: chex.Array) -> chex.Array:
  """AUROC of a score for flagging out-of-distribution inputs.

  The out-of-distribution examples are the positives of :func:`auroc`: 1
  means every out-of-distribution input scores higher than every
  in-distribution one.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> float(ivon_optax.metrics.ood_auroc(jnp.array([0.1, 0.2]), jnp.array([0.15, 0.9])))
    0.75

  Args:
    in_scores: scores of in-distribution inputs (e.g. predictive entropies), any shape.
    out_scores: scores of out-of-distribution inputs, any shape.

  Returns:
    A float32 scalar in [0, 1].
  """
  in_scores, out_scores = jnp.ravel(in_scores), jnp.ravel(out_scores)
  scores = jnp.concatenate([in_scores, out_scores])
  labels = jnp.concatenate([jnp.zeros(in_scores.shape, bool), jnp.ones(out_scores.shape, bool)])
  return auroc(scores, labels)
