"""Bad input to the applications (metrics, predict, sensitivity, leave-one-out, merging).

One row per bad input. On concrete values each raises an error that names the
argument; under ``jax.jit``, where values cannot be checked, each gives NaN,
never a plausible number. Counts accept any integer, Python or NumPy, and
refuse bools and floats.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ivon_optax

metrics = ivon_optax.metrics
predict = ivon_optax.predict
sensitivity = ivon_optax.sensitivity
merging = ivon_optax.merging

# Three examples, three classes: normalized log probabilities and valid labels.
LOG_PROBS = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
LABELS = jnp.array([0, 1, 2])
LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 2.0]])
NAN_ROW = LOG_PROBS.at[1].set(jnp.nan)
SCORES = jnp.array([0.1, 0.4, 0.35, 0.8])
IS_POSITIVE = jnp.array([False, False, True, True])


def with_label(label):
  """``LABELS`` with its first entry replaced."""
  return LABELS.at[0].set(label)


def linear_apply(params, inputs):
  return inputs @ params["w"] + params["b"]


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.zeros(3)}
STATE = ivon_optax.ivon(0.1, ess=6.0, hess_init=1.0).init(PARAMS)
INPUTS = jnp.linspace(-1.0, 1.0, 24).reshape(6, 4)
TRAIN_LABELS = jnp.array([0, 1, 2, 0, 1, 2])
TARGETS = jnp.zeros((6, 3))


def train_labels_with(label):
  return TRAIN_LABELS.at[0].set(label)


BASE = {"w": jnp.zeros(2)}
MODELS = [{"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([3.0, -1.0])}]
PRECISIONS = [{"w": jnp.array([1.0, 3.0])}, {"w": jnp.array([2.0, 1.0])}]


def ivon_finetuned():
  tx = ivon_optax.ivon(0.1, ess=10.0, hess_init=1.0)
  return [(model, tx.init(model)) for model in MODELS]


# (call, exception, message fragment): each raised nothing, or another error, before.
RAISES = {
  # Labels outside [0, num_classes): -1 used to count from the end, 5 gave NaN.
  "nll, label -1": (
    lambda: metrics.negative_log_likelihood(LOG_PROBS, with_label(-1)),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "nll, label 5 of 3 classes": (
    lambda: metrics.negative_log_likelihood(LOG_PROBS, with_label(5)),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "brier, label 3 of 3 classes": (
    lambda: metrics.brier_score(LOG_PROBS, with_label(3)),
    ValueError,
    "`labels`",
  ),
  "accuracy, label -1": (
    lambda: metrics.accuracy(LOG_PROBS, with_label(-1)),
    ValueError,
    "`labels`",
  ),
  "ece, label 7": (
    lambda: metrics.expected_calibration_error(LOG_PROBS, with_label(7)),
    ValueError,
    "`labels`",
  ),
  "calibration_bins, label -1": (
    lambda: metrics.calibration_bins(LOG_PROBS, with_label(-1)),
    ValueError,
    "`labels`",
  ),
  # Log probabilities that are not normalized: logits, NaN.
  "nll of logits": (
    lambda: metrics.negative_log_likelihood(LOGITS, LABELS),
    ValueError,
    "`log_probs` must be normalized",
  ),
  "brier, NaN log-prob": (
    lambda: metrics.brier_score(NAN_ROW, LABELS),
    ValueError,
    "`log_probs` must be normalized",
  ),
  "ece of logits": (
    lambda: metrics.expected_calibration_error(LOGITS, LABELS),
    ValueError,
    "`log_probs` must be normalized",
  ),
  "entropy of logits": (
    lambda: metrics.predictive_entropy(LOGITS),
    ValueError,
    "`log_probs` must be normalized",
  ),
  "accuracy, NaN log-prob": (
    lambda: metrics.accuracy(NAN_ROW, LABELS),
    ValueError,
    "`log_probs` must not contain NaN",
  ),
  # Scores and labels of the AUROC.
  "auroc, NaN score": (
    lambda: metrics.auroc(SCORES.at[0].set(jnp.nan), IS_POSITIVE),
    ValueError,
    "`scores` must not be NaN",
  ),
  "auroc, label 2": (
    lambda: metrics.auroc(SCORES, jnp.array([0, 0, 1, 2])),
    ValueError,
    "`labels` must be booleans or 0/1",
  ),
  "auroc, no negatives": (
    lambda: metrics.auroc(SCORES, jnp.ones(4, bool)),
    ValueError,
    "one positive and one negative",
  ),
  "ood_auroc, NaN score": (
    lambda: metrics.ood_auroc(jnp.array([0.1, jnp.nan]), jnp.array([0.5])),
    ValueError,
    "`scores` must not be NaN",
  ),
  # Empty inputs whose shape is known statically.
  "ood_auroc, no out-of-distribution scores": (
    lambda: metrics.ood_auroc(jnp.array([0.1, 0.2]), jnp.zeros(0)),
    ValueError,
    "`out_scores` is empty",
  ),
  "nll, empty batch": (
    lambda: metrics.negative_log_likelihood(jnp.zeros((0, 3)), jnp.zeros(0, int)),
    ValueError,
    "empty",
  ),
  "ece, empty batch": (
    lambda: metrics.expected_calibration_error(jnp.zeros((0, 3)), jnp.zeros(0, int)),
    ValueError,
    "empty",
  ),
  "predictive_log_probs, 0 samples": (
    lambda: predict.predictive_log_probs(jnp.zeros((0, 2, 3))),
    ValueError,
    "0 samples",
  ),
  "predictive_moments, 0 samples": (
    lambda: predict.predictive_moments(jnp.zeros((0, 2))),
    ValueError,
    "0 samples",
  ),
  "predictive_moments, negative std": (
    lambda: predict.predictive_moments(jnp.zeros((2, 2)), jnp.array([[1.0, -1.0], [1.0, 1.0]])),
    ValueError,
    "`stds` must be noise standard deviations >= 0",
  ),
  # Labels of the sensitivity and leave-one-out estimates.
  "classification_sensitivity, label -1": (
    lambda: sensitivity.classification_sensitivity(
      linear_apply, STATE, PARAMS, INPUTS, train_labels_with(-1)
    ),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "classification_sensitivity, label 5": (
    lambda: sensitivity.classification_sensitivity(
      linear_apply, STATE, PARAMS, INPUTS, train_labels_with(5)
    ),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "leave_one_out, label -1": (
    lambda: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS, train_labels_with(-1)),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "leave_one_out, label 5": (
    lambda: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS, train_labels_with(5)),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "softmax_sensitivity, label 3": (
    lambda: sensitivity.softmax_sensitivity(LOGITS, with_label(3), jnp.ones((3, 3))),
    ValueError,
    "`labels`",
  ),
  "loo_from_change, label -1": (
    lambda: sensitivity.loo_from_change(LOGITS, with_label(-1), jnp.zeros((3, 3))),
    ValueError,
    "`labels`",
  ),
  "regression_sensitivity, noise_variance 0": (
    lambda: sensitivity.regression_sensitivity(
      linear_apply, STATE, PARAMS, INPUTS, TARGETS, noise_variance=0.0
    ),
    ValueError,
    "`noise_variance` must be > 0",
  ),
  "gaussian_sensitivity, noise_variance -1": (
    lambda: sensitivity.gaussian_sensitivity(
      jnp.ones(3), jnp.zeros(3), jnp.ones(3), noise_variance=-1.0
    ),
    ValueError,
    "`noise_variance` must be > 0",
  ),
  # Merging: a negative scale can zero the denominator H_0 + sum_s alpha_s H_s.
  "merge_models, negative task scale": (
    lambda: merging.merge_models(BASE, ivon_finetuned(), task_scales=[1.0, -0.5]),
    ValueError,
    "`task_scales` must be >= 0",
  ),
  "merge_with_precisions, negative shared scale": (
    lambda: merging.merge_with_precisions(BASE, MODELS, PRECISIONS, task_scales=-1.0),
    ValueError,
    "`task_scales` must be >= 0",
  ),
  "merge_with_precisions, negative precision": (
    lambda: merging.merge_with_precisions(
      BASE, MODELS, [PRECISIONS[0], {"w": jnp.array([-2.0, 1.0])}]
    ),
    ValueError,
    "`precisions` must be >= 0",
  ),
  # Counts: any integer, no bools, no floats.
  "num_bins=True": (
    lambda: metrics.calibration_bins(LOG_PROBS, LABELS, num_bins=True),
    TypeError,
    "`num_bins` must be an integer",
  ),
  "num_bins=10.0": (
    lambda: metrics.expected_calibration_error(LOG_PROBS, LABELS, num_bins=10.0),
    TypeError,
    "`num_bins` must be an integer",
  ),
  "sample_outputs, num_samples=True": (
    lambda: predict.sample_outputs(
      jax.random.key(0), linear_apply, STATE, PARAMS, INPUTS, num_samples=True
    ),
    TypeError,
    "`num_samples` must be an integer",
  ),
  "sampled_prediction_variance, num_samples=2.0": (
    lambda: sensitivity.sampled_prediction_variance(
      jax.random.key(0), linear_apply, STATE, PARAMS, INPUTS, num_samples=2.0
    ),
    TypeError,
    "`num_samples` must be an integer",
  ),
  "classification_sensitivity, chunk_size=True": (
    lambda: sensitivity.classification_sensitivity(
      linear_apply, STATE, PARAMS, INPUTS, TRAIN_LABELS, chunk_size=True
    ),
    TypeError,
    "`chunk_size` must be an integer",
  ),
  "prediction_variance, chunk_size=2.5": (
    lambda: sensitivity.prediction_variance(
      linear_apply, PARAMS, jax.tree.map(jnp.ones_like, PARAMS), INPUTS, chunk_size=2.5
    ),
    TypeError,
    "`chunk_size` must be an integer",
  ),
}


@pytest.mark.parametrize("call, error, match", RAISES.values(), ids=RAISES.keys())
def test_bad_input_raises(call, error, match):
  with pytest.raises(error, match=match):
    call()


# (jitted call, the outputs that must be all NaN): each gave a plausible number before.
NAN_UNDER_JIT = {
  "nll, label -1": (
    lambda: jax.jit(metrics.negative_log_likelihood)(LOG_PROBS, with_label(-1)),
    lambda nll: nll,
  ),
  "brier, label 3": (
    lambda: jax.jit(metrics.brier_score)(LOG_PROBS, with_label(3)),
    lambda brier: brier,
  ),
  "accuracy, label -1": (
    lambda: jax.jit(metrics.accuracy)(LOG_PROBS, with_label(-1)),
    lambda accuracy: accuracy,
  ),
  "accuracy, NaN log-prob": (
    lambda: jax.jit(metrics.accuracy)(NAN_ROW, LABELS),
    lambda accuracy: accuracy,
  ),
  "ece, label -1": (
    lambda: jax.jit(metrics.expected_calibration_error)(LOG_PROBS, with_label(-1)),
    lambda ece: ece,
  ),
  "calibration_bins, label 4": (
    lambda: jax.jit(metrics.calibration_bins)(LOG_PROBS, with_label(4)),
    lambda bins: (bins.accuracy, bins.confidence),
  ),
  "nll of logits": (
    lambda: jax.jit(metrics.negative_log_likelihood)(LOGITS, LABELS),
    lambda nll: nll,
  ),
  "entropy of a logits row": (
    lambda: jax.jit(metrics.predictive_entropy)(LOG_PROBS.at[2].set(LOGITS[2])),
    lambda entropy: entropy[2],
  ),
  "auroc, NaN score": (
    lambda: jax.jit(metrics.auroc)(SCORES.at[0].set(jnp.nan), IS_POSITIVE),
    lambda area: area,
  ),
  "auroc, label 2": (
    lambda: jax.jit(metrics.auroc)(SCORES, jnp.array([0, 0, 1, 2])),
    lambda area: area,
  ),
  "ood_auroc, NaN score": (
    lambda: jax.jit(metrics.ood_auroc)(jnp.array([0.1, jnp.nan]), jnp.array([0.5])),
    lambda area: area,
  ),
  "predictive_moments, negative std": (
    lambda: jax.jit(predict.predictive_moments)(jnp.zeros((2, 1)), jnp.array([[1.0], [-1.0]])),
    lambda moments: (moments.aleatoric, moments.variance),
  ),
  "softmax_sensitivity, label -1": (
    lambda: jax.jit(sensitivity.softmax_sensitivity)(LOGITS, with_label(-1), jnp.ones((3, 3))),
    lambda result: (result.error[0], result.change[0], result.score[0]),
  ),
  "classification_sensitivity, label 5": (
    lambda: jax.jit(
      lambda labels: sensitivity.classification_sensitivity(
        linear_apply, STATE, PARAMS, INPUTS, labels
      )
    )(train_labels_with(5)),
    lambda result: result.score[0],
  ),
  "loo_from_change, label 5": (
    lambda: jax.jit(sensitivity.loo_from_change)(LOGITS, with_label(5), jnp.zeros((3, 3))),
    lambda estimate: tuple(estimate),
  ),
  "leave_one_out, label -1": (
    lambda: jax.jit(
      lambda labels: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS, labels)
    )(train_labels_with(-1)),
    lambda estimate: tuple(estimate),
  ),
  "gaussian_sensitivity, noise_variance -1": (
    lambda: jax.jit(
      lambda s2: sensitivity.gaussian_sensitivity(
        jnp.ones(3), jnp.zeros(3), jnp.ones(3), noise_variance=s2
      )
    )(-1.0),
    lambda result: (result.error, result.change, result.score),
  ),
  "merge_with_precisions, negative scales": (
    lambda: jax.jit(
      lambda scales: merging.merge_with_precisions(BASE, MODELS, PRECISIONS, task_scales=scales)
    )(jnp.array([1.0, -0.5])),
    lambda merged: merged["w"],
  ),
}


@pytest.mark.parametrize("call, outputs", NAN_UNDER_JIT.values(), ids=NAN_UNDER_JIT.keys())
def test_bad_input_under_jit_gives_nan(call, outputs):
  for value in jax.tree.leaves(outputs(call())):
    assert np.all(np.isnan(np.asarray(value))), value


# Integer counts of NumPy type, refused before.
ACCEPTS = {
  "calibration_bins, num_bins=np.int64(10)": lambda: (
    metrics.calibration_bins(LOG_PROBS, LABELS, num_bins=np.int64(10)).count
  ),
  "ece, num_bins=np.int32(4)": lambda: metrics.expected_calibration_error(
    LOG_PROBS, LABELS, num_bins=np.int32(4)
  ),
  "sampled_prediction_variance, np.int64 counts": lambda: sensitivity.sampled_prediction_variance(
    jax.random.key(0),
    linear_apply,
    STATE,
    PARAMS,
    INPUTS,
    num_samples=np.int64(4),
    chunk_size=np.int64(2),
  ),
  "classification_sensitivity, chunk_size=np.int64(4)": lambda: (
    sensitivity.classification_sensitivity(
      linear_apply, STATE, PARAMS, INPUTS, TRAIN_LABELS, chunk_size=np.int64(4)
    ).score
  ),
}


@pytest.mark.parametrize("call", ACCEPTS.values(), ids=ACCEPTS.keys())
def test_numpy_integer_counts_are_accepted(call):
  assert np.all(np.isfinite(np.asarray(call())))
