"""Merging models with IVON's posterior precisions as weights."""

from ivon_optax._src.merging import merge_models
from ivon_optax._src.merging import merge_with_precisions
from ivon_optax._src.merging import task_arithmetic

__all__ = (
  "merge_models",
  "merge_with_precisions",
  "task_arithmetic",
)
