"""ivon-optax: the IVON variational optimizer for JAX, as optax transforms.

Flax integrations live in :mod:`ivon_optax.flax` and checkpointing in
:mod:`ivon_optax.checkpoint`, each imported on its own (``import ivon_optax.flax``)
so that ``import ivon_optax`` needs neither Flax nor Orbax.
"""

from ivon_optax.distributed import check_state_sharding
from ivon_optax.distributed import state_sharding
from ivon_optax.merging import ivon_precision
from ivon_optax.merging import merge_models
from ivon_optax.merging import merge_with_precisions
from ivon_optax.merging import task_arithmetic
from ivon_optax.metrics import CalibrationBins
from ivon_optax.metrics import accuracy
from ivon_optax.metrics import auroc
from ivon_optax.metrics import brier_score
from ivon_optax.metrics import calibration_bins
from ivon_optax.metrics import expected_calibration_error
from ivon_optax.metrics import negative_log_likelihood
from ivon_optax.metrics import ood_auroc
from ivon_optax.metrics import predictive_entropy
from ivon_optax.predict import PredictiveMoments
from ivon_optax.predict import predictive_log_probs
from ivon_optax.predict import predictive_moments
from ivon_optax.predict import sample_outputs
from ivon_optax.samples import SampleAverage
from ivon_optax.samples import add_sample
from ivon_optax.samples import average_samples
from ivon_optax.samples import init_sample_average
from ivon_optax.sampling import find_ivon_state
from ivon_optax.sampling import posterior
from ivon_optax.sampling import posterior_std
from ivon_optax.sampling import sample_params
from ivon_optax.sensitivity import Sensitivity
from ivon_optax.sensitivity import classification_sensitivity
from ivon_optax.sensitivity import gaussian_sensitivity
from ivon_optax.sensitivity import prediction_variance
from ivon_optax.sensitivity import regression_sensitivity
from ivon_optax.sensitivity import sampled_prediction_variance
from ivon_optax.sensitivity import softmax_sensitivity
from ivon_optax.transform import IVONState
from ivon_optax.transform import ivon
from ivon_optax.transform import scale_by_ivon
from ivon_optax.validation import LOOEstimate
from ivon_optax.validation import leave_one_out
from ivon_optax.validation import loo_from_change

__version__ = "0.1.0"

__all__ = (
    "CalibrationBins",
    "IVONState",
    "LOOEstimate",
    "PredictiveMoments",
    "SampleAverage",
    "Sensitivity",
    "accuracy",
    "add_sample",
    "auroc",
    "average_samples",
    "brier_score",
    "calibration_bins",
    "check_state_sharding",
    "classification_sensitivity",
    "expected_calibration_error",
    "find_ivon_state",
    "gaussian_sensitivity",
    "init_sample_average",
    "ivon",
    "ivon_precision",
    "leave_one_out",
    "loo_from_change",
    "merge_models",
    "merge_with_precisions",
    "negative_log_likelihood",
    "ood_auroc",
    "posterior",
    "posterior_std",
    "prediction_variance",
    "predictive_entropy",
    "predictive_log_probs",
    "predictive_moments",
    "regression_sensitivity",
    "sample_outputs",
    "sample_params",
    "sampled_prediction_variance",
    "scale_by_ivon",
    "softmax_sensitivity",
    "state_sharding",
    "task_arithmetic",
)
