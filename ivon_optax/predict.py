"""Bayesian prediction: outputs at posterior samples and the predictive distribution they give."""

from ivon_optax._src.predict import PredictiveMoments
from ivon_optax._src.predict import predictive_log_probs
from ivon_optax._src.predict import predictive_moments
from ivon_optax._src.predict import sample_outputs

__all__ = (
  "PredictiveMoments",
  "predictive_log_probs",
  "predictive_moments",
  "sample_outputs",
)
