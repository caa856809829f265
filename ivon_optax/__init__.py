"""ivon-optax: the IVON variational optimizer for JAX, as optax transforms.

Flax integrations live in :mod:`ivon_optax.flax`, imported on its own
(``import ivon_optax.flax``) so that ``import ivon_optax`` needs no Flax.
"""

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
from ivon_optax.transform import IVONState
from ivon_optax.transform import ivon
from ivon_optax.transform import scale_by_ivon

__version__ = "0.1.0"

__all__ = (
    "CalibrationBins",
    "IVONState",
    "PredictiveMoments",
    "SampleAverage",
    "accuracy",
    "add_sample",
    "auroc",
    "average_samples",
    "brier_score",
    "calibration_bins",
    "expected_calibration_error",
    "find_ivon_state",
    "init_sample_average",
    "ivon",
    "negative_log_likelihood",
    "ood_auroc",
    "posterior",
    "posterior_std",
    "predictive_entropy",
    "predictive_log_probs",
    "predictive_moments",
    "sample_outputs",
    "sample_params",
    "scale_by_ivon",
)
