"""Laying IVON's state out like the params on a device mesh (FSDP, data parallel)."""

from ivon_optax._src.sharding import check_state_sharding
from ivon_optax._src.sharding import state_sharding

__all__ = (
  "check_state_sharding",
  "state_sharding",
)
