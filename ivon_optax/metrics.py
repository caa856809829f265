"""Metrics for predictive distributions: accuracy, NLL, Brier, calibration, entropy, AUROC."""

from ivon_optax._src.metrics import CalibrationBins
from ivon_optax._src.metrics import accuracy
from ivon_optax._src.metrics import auroc
from ivon_optax._src.metrics import brier_score
from ivon_optax._src.metrics import calibration_bins
from ivon_optax._src.metrics import expected_calibration_error
from ivon_optax._src.metrics import negative_log_likelihood
from ivon_optax._src.metrics import ood_auroc
from ivon_optax._src.metrics import predictive_entropy

__all__ = (
  "CalibrationBins",
  "accuracy",
  "auroc",
  "brier_score",
  "calibration_bins",
  "expected_calibration_error",
  "negative_log_likelihood",
  "ood_auroc",
  "predictive_entropy",
)
