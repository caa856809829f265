"""ivon-optax: the IVON variational optimizer for JAX, as optax transforms."""

from ivon_optax.samples import SampleAverage, add_sample, average_samples, init_sample_average
from ivon_optax.sampling import find_ivon_state, posterior, posterior_std, sample_params
from ivon_optax.transform import IVONState, ivon, scale_by_ivon

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
