"""Post-hoc calibration on a validation split: a logit temperature and IVON's posterior scale."""

from ivon_optax._src.calibration import PosteriorScaleFit
from ivon_optax._src.calibration import default_scales
from ivon_optax._src.calibration import fit_posterior_scale
from ivon_optax._src.calibration import fit_temperature
from ivon_optax._src.calibration import temperature_scale
from ivon_optax._src.posterior import scale_posterior

__all__ = (
  "PosteriorScaleFit",
  "default_scales",
  "fit_posterior_scale",
  "fit_temperature",
  "scale_posterior",
  "temperature_scale",
)
