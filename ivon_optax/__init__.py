"""ivon-optax: the IVON variational optimizer for JAX, as optax transforms."""

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
    "IVONState",
    "SampleAverage",
    "add_sample",
    "average_samples",
    "find_ivon_state",
    "init_sample_average",
    "ivon",
    "posterior",
    "posterior_std",
    "sample_params",
    "scale_by_ivon",
)
