"""ivon-optax: IVON, the variational-learning optimizer, as optax transforms.

The top level holds the optimizer and its posterior. The applications live in
submodules named for what they hold: [`ivon_optax.predict`][],
[`ivon_optax.metrics`][], [`ivon_optax.sensitivity`][],
[`ivon_optax.merging`][], [`ivon_optax.calibration`][],
[`ivon_optax.ensemble`][], [`ivon_optax.sharding`][] and
[`ivon_optax.random`][], all imported with the package, and
[`ivon_optax.flax`][] and [`ivon_optax.checkpoint`][], imported on their own
because they need Flax and Orbax.
"""

from ivon_optax import calibration as calibration
from ivon_optax import ensemble as ensemble
from ivon_optax import merging as merging
from ivon_optax import metrics as metrics
from ivon_optax import predict as predict
from ivon_optax import random as random
from ivon_optax import sensitivity as sensitivity
from ivon_optax import sharding as sharding
from ivon_optax._src.algorithm import IVONState
from ivon_optax._src.diagnostics import diagnostics
from ivon_optax._src.posterior import find_ivon_state
from ivon_optax._src.posterior import posterior
from ivon_optax._src.posterior import posterior_as_prior
from ivon_optax._src.posterior import posterior_precision
from ivon_optax._src.posterior import posterior_std
from ivon_optax._src.posterior import sample_params
from ivon_optax._src.posterior import value_and_grad_at_sample
from ivon_optax._src.prior import GaussianPrior
from ivon_optax._src.recipe import init_scale
from ivon_optax._src.recipe import recipe
from ivon_optax._src.sample_average import SampleAverage
from ivon_optax._src.sample_average import add_sample
from ivon_optax._src.sample_average import average_samples
from ivon_optax._src.sample_average import init_sample_average
from ivon_optax._src.transform import ivon
from ivon_optax._src.transform import scale_by_ivon

__version__ = "0.1.0"

__all__ = (
  "GaussianPrior",
  "IVONState",
  "SampleAverage",
  "add_sample",
  "average_samples",
  "diagnostics",
  "find_ivon_state",
  "init_sample_average",
  "init_scale",
  "ivon",
  "posterior",
  "posterior_as_prior",
  "posterior_precision",
  "posterior_std",
  "recipe",
  "sample_params",
  "scale_by_ivon",
  "value_and_grad_at_sample",
)
