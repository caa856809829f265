"""IVON with Flax: a Linen train state that samples, and NNX weight sampling.

Importing this module imports Flax; ``import ivon_optax`` does not.
"""

from ivon_optax._src.flax import TrainState
from ivon_optax._src.flax import nnx_params_and_state
from ivon_optax._src.flax import nnx_value_and_grad_at_sample
from ivon_optax._src.flax import refresh_batch_stats
from ivon_optax._src.flax import sample_linen_outputs
from ivon_optax._src.flax import sample_nnx_model
from ivon_optax._src.flax import sample_nnx_outputs
from ivon_optax._src.flax import sample_nnx_params

__all__ = (
  "TrainState",
  "nnx_params_and_state",
  "nnx_value_and_grad_at_sample",
  "refresh_batch_stats",
  "sample_linen_outputs",
  "sample_nnx_model",
  "sample_nnx_outputs",
  "sample_nnx_params",
)
