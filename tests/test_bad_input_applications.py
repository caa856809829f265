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


calibration = ivon_optax.calibration
ensemble = ivon_optax.ensemble
COLUMN_LABELS = TRAIN_LABELS[:, None]  # (n, 1): broadcast against (n, k) into (n, n, k)
STACKED_PARAMS = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf + 1.0]), PARAMS)
STACKED_STATES = jax.vmap(ivon_optax.ivon(0.1, ess=6.0).init)(STACKED_PARAMS)
LOG_PROBS_FN = lambda tau: LOG_PROBS  # noqa: E731  predictions that ignore tau


def fit_scale(predict_fn=LOG_PROBS_FN, labels=LABELS):
  return calibration.fit_posterior_scale(predict_fn, labels, scales=jnp.array([0.5, 1.0]))


def diagnostics_of(params):
  return ivon_optax.diagnostics(ivon_optax.ivon(0.1, ess=6.0).init(params), params)


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
  # Labels shaped (n, 1) where (n,) belongs: (n, n) results or raw errors before.
  "classification_sensitivity, labels (n, 1)": (
    lambda: sensitivity.classification_sensitivity(
      linear_apply, STATE, PARAMS, INPUTS, COLUMN_LABELS
    ),
    ValueError,
    r"`labels` must have shape \(6,\).*reshape\(-1\)",
  ),
  "softmax_sensitivity, labels (n, 1)": (
    lambda: sensitivity.softmax_sensitivity(LOGITS, LABELS[:, None], jnp.ones((3, 3))),
    ValueError,
    r"`labels` must have shape \(3,\)",
  ),
  "leave_one_out, labels (n, 1)": (
    lambda: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS, COLUMN_LABELS),
    ValueError,
    r"`labels` must have shape \(6,\)",
  ),
  "leave_one_out leverage, labels (n, 1)": (
    lambda: sensitivity.leave_one_out(
      linear_apply, STATE, PARAMS, INPUTS, COLUMN_LABELS, method="leverage"
    ),
    ValueError,
    r"`labels` must have shape \(6,\)",
  ),
  "softmax_error_and_curvature, labels (n, 1)": (
    lambda: sensitivity.softmax_error_and_curvature(LOGITS, LABELS[:, None]),
    ValueError,
    r"`labels` must have shape \(3,\)",
  ),
  "softmax_error_and_curvature, label 3": (
    lambda: sensitivity.softmax_error_and_curvature(LOGITS, with_label(3)),
    ValueError,
    "`labels` must be class indices",
  ),
  "fit_posterior_scale, labels (n, 1)": (
    lambda: fit_scale(labels=LABELS[:, None]),
    ValueError,
    "`labels` has shape",
  ),
  "fit_temperature, labels (n, 1)": (
    lambda: calibration.fit_temperature(LOGITS, LABELS[:, None]),
    ValueError,
    "one integer label per row",
  ),
  # Empty inputs and empty class axes.
  "leave_one_out, no example": (
    lambda: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS[:0], TRAIN_LABELS[:0]),
    ValueError,
    "no example",
  ),
  "loo_from_change, no example": (
    lambda: sensitivity.loo_from_change(jnp.zeros((0, 3)), jnp.zeros(0, int), jnp.zeros((0, 3))),
    ValueError,
    "no example",
  ),
  "softmax_sensitivity, no class": (
    lambda: sensitivity.softmax_sensitivity(
      jnp.zeros((2, 0)), jnp.zeros(2, int), jnp.zeros((2, 0))
    ),
    ValueError,
    "non-empty class axis",
  ),
  "predictive_log_probs, no class": (
    lambda: predict.predictive_log_probs(jnp.zeros((2, 3, 0))),
    ValueError,
    "empty class axis",
  ),
  "fit_temperature, no class": (
    lambda: calibration.fit_temperature(jnp.zeros((2, 0)), jnp.zeros(2, int)),
    ValueError,
    "non-empty class axis",
  ),
  "fit_posterior_scale, no example": (
    lambda: fit_scale(lambda tau: jnp.zeros((0, 3)), jnp.zeros(0, int)),
    ValueError,
    "empty",
  ),
  "diagnostics, zero-size params": (
    lambda: diagnostics_of({"w": jnp.zeros((0, 3))}),
    ValueError,
    "nothing to diagnose",
  ),
  "diagnostics, zero-size params under jit": (
    lambda: jax.jit(ivon_optax.diagnostics)(
      ivon_optax.ivon(0.1, ess=6.0).init({"w": jnp.zeros(0)}), {"w": jnp.zeros(0)}
    ),
    ValueError,
    "nothing to diagnose",
  ),
  "diagnostics, zero members": (
    lambda: ivon_optax.diagnostics(
      jax.tree.map(lambda leaf: leaf[:0], STACKED_STATES),
      jax.tree.map(lambda leaf: leaf[:0], STACKED_PARAMS),
    ),
    ValueError,
    "K >= 1",
  ),
  # Leave-one-out from a posterior: numbers that are NaN eagerly, or raw errors, before.
  "leave_one_out, eps -1": (
    lambda: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS, TRAIN_LABELS, eps=-1.0),
    ValueError,
    r"`eps` must be in \[0, 1\)",
  ),
  "loo_from_change, eps 1 (every probability floored: NLL 0)": (
    lambda: sensitivity.loo_from_change(LOGITS, LABELS, jnp.zeros((3, 3)), eps=1.0),
    ValueError,
    r"`eps` must be in \[0, 1\)",
  ),
  "softmax_sensitivity, eps 0.6": (
    lambda: sensitivity.softmax_sensitivity(LOGITS, LABELS, jnp.ones((3, 3)), eps=0.6),
    ValueError,
    r"`eps` must be in \[0, 0.5\)",
  ),
  "fit_posterior_scale, label 5": (
    lambda: fit_scale(labels=with_label(5)),
    ValueError,
    r"`labels` must be class indices in \[0, 3\)",
  ),
  "fit_posterior_scale, logits passed as predictions": (
    lambda: fit_scale(lambda tau: LOGITS * tau),
    ValueError,
    "`predict_fn\\(tau\\)` must return normalized log probabilities",
  ),
  # Temperature scaling: per-example vs per-class, infinite and NaN logits, bounds.
  "temperature_scale, per-class temperatures": (
    lambda: calibration.temperature_scale(jnp.zeros((4, 3)), jnp.ones(3)),
    ValueError,
    "one per row",
  ),
  "temperature_scale, string temperature": (
    lambda: calibration.temperature_scale(LOGITS, "2"),
    TypeError,
    "`temperature` must be a real number",
  ),
  "temperature_scale, NaN logit": (
    lambda: calibration.temperature_scale(LOGITS.at[1, 0].set(jnp.nan), 2.0),
    ValueError,
    "`logits` must not hold NaN",
  ),
  "fit_temperature, NaN logit": (
    lambda: calibration.fit_temperature(LOGITS.at[1, 0].set(jnp.nan), LABELS),
    ValueError,
    r"`logits` must give each row a finite NLL.*rows \[1\]",
  ),
  "fit_temperature, +inf at another class": (
    lambda: calibration.fit_temperature(LOGITS.at[0, 1].set(jnp.inf), LABELS),
    ValueError,
    "no \\+inf at another class",
  ),
  "fit_temperature, -inf at the label": (
    lambda: calibration.fit_temperature(LOGITS.at[2, 2].set(-jnp.inf), LABELS),
    ValueError,
    "no -inf at the label",
  ),
  "fit_temperature, vector bound": (
    lambda: calibration.fit_temperature(LOGITS, LABELS, bounds=(jnp.array([0.1, 0.2]), 10.0)),
    TypeError,
    r"`bounds\[0\]` must be a scalar",
  ),
  "fit_temperature, three bounds": (
    lambda: calibration.fit_temperature(LOGITS, LABELS, bounds=(0.1, 1.0, 10.0)),
    TypeError,
    "`bounds` must be a pair",
  ),
  # Ensembles: one state where a stack belongs, and a stack where one belongs.
  "sample_ensemble_outputs, one state for stacked params": (
    lambda: ensemble.sample_ensemble_outputs(
      jax.random.key(0), linear_apply, STATE, STACKED_PARAMS, INPUTS, num_samples=2
    ),
    ValueError,
    r"`states` must be the members' optimizer states stacked.*leading shape \(\)",
  ),
  "sample_ensemble_outputs, 3 states for 2 members": (
    lambda: ensemble.sample_ensemble_outputs(
      jax.random.key(0),
      linear_apply,
      jax.tree.map(lambda leaf: jnp.concatenate([leaf, leaf[:1]]), STACKED_STATES),
      STACKED_PARAMS,
      INPUTS,
      num_samples=2,
    ),
    ValueError,
    "stacked on a leading axis of size 2",
  ),
  "diagnostics, stacked state with one member's params": (
    lambda: ivon_optax.diagnostics(STACKED_STATES, PARAMS),
    ValueError,
    "`params` must be the members' params stacked",
  ),
  "classification_sensitivity, stacked state": (
    lambda: sensitivity.classification_sensitivity(
      linear_apply, STACKED_STATES, STACKED_PARAMS, INPUTS, TRAIN_LABELS
    ),
    ValueError,
    "stack of IVON states",
  ),
  "leave_one_out, stacked state": (
    lambda: sensitivity.leave_one_out(
      linear_apply, STACKED_STATES, STACKED_PARAMS, INPUTS, TRAIN_LABELS
    ),
    ValueError,
    "stack of IVON states",
  ),
  "sample_outputs, stacked state": (
    lambda: predict.sample_outputs(
      jax.random.key(0), linear_apply, STACKED_STATES, STACKED_PARAMS, INPUTS, num_samples=2
    ),
    ValueError,
    "sample_ensemble_outputs",
  ),
  "sampled_prediction_variance, stacked state": (
    lambda: sensitivity.sampled_prediction_variance(
      jax.random.key(0), linear_apply, STACKED_STATES, STACKED_PARAMS, INPUTS, num_samples=2
    ),
    ValueError,
    "stack of IVON states",
  ),
  "merge_models, stacked state": (
    lambda: merging.merge_models(STACKED_PARAMS, [(STACKED_PARAMS, STACKED_STATES)]),
    ValueError,
    "stack of IVON states",
  ),
  # A vector where a scalar belongs: broadcast silently before.
  "diagnostics, vector learning_rate": (
    lambda: ivon_optax.diagnostics(STATE, PARAMS, learning_rate=jnp.ones(2)),
    TypeError,
    "`learning_rate` must be a scalar",
  ),
  "merge_with_precisions, vector delta_0": (
    lambda: merging.merge_with_precisions(BASE, MODELS, PRECISIONS, delta_0=jnp.ones(2)),
    TypeError,
    "`delta_0` must be a scalar",
  ),
  "merge_with_precisions, vector base_precision": (
    lambda: merging.merge_with_precisions(BASE, MODELS, PRECISIONS, base_precision=jnp.ones(2)),
    TypeError,
    "`base_precision` must be a scalar",
  ),
  "merge_with_precisions, string task_scales": (
    lambda: merging.merge_with_precisions(BASE, MODELS, PRECISIONS, task_scales="1"),
    TypeError,
    "`task_scales` must be a real number",
  ),
  "task_arithmetic, a vector task scale": (
    lambda: merging.task_arithmetic(BASE, MODELS, task_scales=[1.0, jnp.ones(2)]),
    TypeError,
    r"`task_scales\[1\]` must be a scalar",
  ),
  "gaussian_sensitivity, per-example noise_variance against (n, k) outputs": (
    lambda: sensitivity.gaussian_sensitivity(
      jnp.ones((2, 2)), jnp.zeros((2, 2)), jnp.ones((2, 2)), noise_variance=jnp.array([1.0, 2.0])
    ),
    ValueError,
    "`noise_variance` must be a scalar s\\^2, or one per output",
  ),
  "gaussian_sensitivity, string noise_variance": (
    lambda: sensitivity.gaussian_sensitivity(
      jnp.ones(2), jnp.zeros(2), jnp.ones(2), noise_variance="1"
    ),
    TypeError,
    "`noise_variance` must be a real number",
  ),
  # NaN and negative values that gave NaN eagerly, or a plausible number, before.
  "loo_from_change, NaN change": (
    lambda: sensitivity.loo_from_change(LOGITS, LABELS, jnp.full((3, 3), jnp.nan)),
    ValueError,
    "`change` must not be NaN",
  ),
  "loo_change, a negative variance in a covariance block": (
    lambda: sensitivity.loo_change(-jnp.ones((1, 2, 2)), jnp.ones((1, 2)), jnp.zeros((1, 2, 2))),
    ValueError,
    "positive semi-definite",
  ),
  "softmax_sensitivity, negative variance": (
    lambda: sensitivity.softmax_sensitivity(LOGITS, LABELS, -jnp.ones((3, 3))),
    ValueError,
    "`variance` must hold prediction variances >= 0",
  ),
  "softmax_sensitivity, NaN logit": (
    lambda: sensitivity.softmax_sensitivity(LOGITS.at[0, 0].set(jnp.nan), LABELS, jnp.ones((3, 3))),
    ValueError,
    "`logits` must not be NaN",
  ),
  "gaussian_sensitivity, negative variance": (
    lambda: sensitivity.gaussian_sensitivity(jnp.ones(3), jnp.zeros(3), -jnp.ones(3)),
    ValueError,
    "`variance` must hold prediction variances >= 0",
  ),
  "gaussian_sensitivity, NaN target": (
    lambda: sensitivity.gaussian_sensitivity(
      jnp.ones(3), jnp.array([0.0, jnp.nan, 0.0]), jnp.ones(3)
    ),
    ValueError,
    "`targets` must not be NaN",
  ),
  "predictive_log_probs, NaN logits": (
    lambda: predict.predictive_log_probs(jnp.full((2, 1, 3), jnp.nan)),
    ValueError,
    "`logits` holds NaN",
  ),
  "predictive_moments, NaN means": (
    lambda: predict.predictive_moments(jnp.array([[0.0], [jnp.nan]])),
    ValueError,
    "`means` holds NaN",
  ),
  "diagnostics, negative learning_rate": (
    lambda: ivon_optax.diagnostics(STATE, PARAMS, learning_rate=-0.1),
    ValueError,
    "`learning_rate`",
  ),
  "fit_temperature, infinite upper bound": (
    lambda: calibration.fit_temperature(LOGITS, LABELS, bounds=(0.01, jnp.inf)),
    ValueError,
    "T_max < inf",
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


def impossible_change():
  """A change towards each label: every example fits better when left out, impossibly."""
  return 2.0 * jax.nn.one_hot(LABELS, 3) - 1.0


# (jitted call, the outputs that must be all NaN): each gave a plausible number before.
NAN_UNDER_JIT = {
  "loo_from_change, an impossible estimate (below the training NLL)": (
    lambda: jax.jit(sensitivity.loo_from_change)(LOGITS, LABELS, impossible_change()),
    lambda estimate: (estimate.nll, estimate.error),
  ),
  "loo_from_change, traced eps -1": (
    lambda: jax.jit(
      lambda eps: sensitivity.loo_from_change(LOGITS, LABELS, jnp.zeros((3, 3)), eps=eps)
    )(-1.0),
    lambda estimate: (estimate.nll, estimate.train_nll),
  ),
  "softmax_error_and_curvature, label 5": (
    lambda: jax.jit(sensitivity.softmax_error_and_curvature)(LOGITS, with_label(5)),
    lambda result: (result[0][0], result[1][0]),
  ),
  "softmax_sensitivity, negative variance": (
    lambda: jax.jit(sensitivity.softmax_sensitivity)(
      LOGITS, LABELS, jnp.ones((3, 3)).at[1].set(-1)
    ),
    lambda result: (result.error[1], result.change[1], result.score[1]),
  ),
  "predictive_log_probs, NaN logits": (
    lambda: jax.jit(predict.predictive_log_probs)(jnp.full((2, 1, 3), jnp.nan)),
    lambda log_probs: log_probs,
  ),
  "diagnostics, negative learning_rate": (
    lambda: jax.jit(ivon_optax.diagnostics)(STATE, PARAMS, learning_rate=-0.1),
    lambda logs: logs["effective_lr"],
  ),
  "fit_temperature, NaN logit": (
    lambda: jax.jit(calibration.fit_temperature)(LOGITS.at[1, 0].set(jnp.nan), LABELS),
    lambda temperature: temperature,
  ),
  "fit_temperature, +inf at another class": (
    lambda: jax.jit(calibration.fit_temperature)(LOGITS.at[0, 1].set(jnp.inf), LABELS),
    lambda temperature: temperature,
  ),
  "temperature_scale, NaN logit": (
    lambda: jax.jit(calibration.temperature_scale)(LOGITS.at[1, 0].set(jnp.nan), 2.0),
    lambda log_probs: log_probs[1],
  ),
  "fit_posterior_scale, logits passed as predictions": (
    lambda: jax.jit(lambda: fit_scale(lambda tau: LOGITS * tau))(),
    lambda fit: (fit.scale, fit.nlls),
  ),
  "fit_posterior_scale, label 5": (
    lambda: jax.jit(lambda labels: fit_scale(labels=labels))(with_label(5)),
    lambda fit: (fit.scale, fit.nlls),
  ),
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
    lambda estimate: tuple(estimate)[:4],  # the count stays an integer
  ),
  "leave_one_out, label -1": (
    lambda: jax.jit(
      lambda labels: sensitivity.leave_one_out(linear_apply, STATE, PARAMS, INPUTS, labels)
    )(train_labels_with(-1)),
    lambda estimate: tuple(estimate)[:4],  # the count stays an integer
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


# --- Inputs that gave a silent wrong result and now give the right one ---------------------


def test_fit_temperature_ignores_rows_certain_at_every_temperature():
  """A +inf logit at the label fits that row at any T: it must not pull T to its bound."""
  labels = jnp.array([0, 1, 0])  # the last row is misclassified: a finite optimum
  finite = calibration.fit_temperature(LOGITS, labels)
  with_certain_row = calibration.fit_temperature(
    jnp.concatenate([LOGITS, jnp.array([[jnp.inf, 0.0, 1.0]])]), jnp.array([0, 1, 0, 0])
  )
  np.testing.assert_allclose(with_certain_row, finite, rtol=1e-5)
  assert 0.1 < float(finite) < 10.0
  only_certain = calibration.fit_temperature(jnp.array([[jnp.inf, 0.0]]), jnp.array([0]))
  assert float(only_certain) == 1.0  # the NLL is 0 at every T: no change


def test_temperature_scale_applies_a_vector_per_example_even_when_n_equals_k():
  logits = jnp.array([[1.0, 0.0], [2.0, 0.0]])  # n = k = 2
  temperature = jnp.array([1.0, 2.0])
  expected = jax.nn.log_softmax(logits / temperature[:, None], axis=-1)
  for shape in ((2,), (2, 1)):
    scaled = calibration.temperature_scale(logits, temperature.reshape(shape))
    np.testing.assert_allclose(scaled, expected, rtol=1e-6)


def test_temperature_scale_of_a_row_with_an_infinite_logit_is_its_limit():
  scaled = calibration.temperature_scale(jnp.array([[jnp.inf, 0.0], [1.0, -jnp.inf]]), 2.0)
  np.testing.assert_array_equal(scaled, [[0.0, -jnp.inf], [0.0, -jnp.inf]])


def test_leverage_below_the_training_nll_is_flagged():
  """The issue's case: leverage with a diagonal posterior at 0.069 against a train NLL of 1.1."""
  inputs = jax.random.normal(jax.random.key(0), (30, 8))
  labels = jnp.arange(30) % 3
  params = {"w": jnp.zeros((8, 3)), "b": jnp.zeros(3)}
  state = ivon_optax.ivon(0.1, ess=3.0, hess_init=0.01).init(params)
  with pytest.warns(UserWarning, match="below the training NLL"):
    estimate = sensitivity.leave_one_out(
      linear_apply, state, params, inputs, labels, method="leverage"
    )
  assert int(estimate.num_below_train) > 0
  assert np.isnan(estimate.nll) and np.isnan(estimate.error)
  np.testing.assert_allclose(estimate.train_nll, np.log(3.0), rtol=1e-5)
  diagonal = sensitivity.leave_one_out(linear_apply, state, params, inputs, labels)
  assert int(diagonal.num_below_train) == 0 and float(diagonal.nll) > float(diagonal.train_nll)


@pytest.mark.parametrize("jit", [False, True])
def test_diagnostics_of_stacked_members_are_each_members(jit):
  diagnostics = jax.jit(ivon_optax.diagnostics) if jit else ivon_optax.diagnostics
  stacked = diagnostics(STACKED_STATES, STACKED_PARAMS)
  for member in range(2):
    alone = ivon_optax.diagnostics(
      jax.tree.map(lambda leaf, m=member: leaf[m], STACKED_STATES),
      jax.tree.map(lambda leaf, m=member: leaf[m], STACKED_PARAMS),
    )
    for name, value in alone.items():
      np.testing.assert_allclose(stacked[name][member], value, rtol=1e-6, err_msg=name)


def test_classification_sensitivity_of_no_example_is_empty():
  result = sensitivity.classification_sensitivity(
    linear_apply, STATE, PARAMS, INPUTS[:0], TRAIN_LABELS[:0]
  )
  assert result.score.shape == (0,) and result.change.shape == (0, 3)
