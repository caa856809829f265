"""Memory-perturbation sensitivity: how much each training example moves the model; LOO."""

from ivon_optax._src.leave_one_out import LOOEstimate
from ivon_optax._src.leave_one_out import leave_one_out
from ivon_optax._src.leave_one_out import loo_change
from ivon_optax._src.leave_one_out import loo_from_change
from ivon_optax._src.leave_one_out import softmax_error_and_curvature
from ivon_optax._src.prediction_variance import prediction_covariance
from ivon_optax._src.prediction_variance import prediction_variance
from ivon_optax._src.prediction_variance import sampled_prediction_variance
from ivon_optax._src.sensitivity import Sensitivity
from ivon_optax._src.sensitivity import classification_sensitivity
from ivon_optax._src.sensitivity import gaussian_sensitivity
from ivon_optax._src.sensitivity import regression_sensitivity
from ivon_optax._src.sensitivity import softmax_sensitivity

__all__ = (
  "classification_sensitivity",
  "gaussian_sensitivity",
  "leave_one_out",
  "loo_change",
  "loo_from_change",
  "LOOEstimate",
  "prediction_covariance",
  "prediction_variance",
  "regression_sensitivity",
  "sampled_prediction_variance",
  "Sensitivity",
  "softmax_error_and_curvature",
  "softmax_sensitivity",
)
