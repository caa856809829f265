"""Restoring an IVON train state from an Orbax checkpoint, with errors that name the mismatch.

Orbax is imported when [`restore`][ivon_optax.checkpoint.restore] runs: ``import ivon_optax`` does
not need it.
"""

from ivon_optax._src.checkpoint import restore

__all__ = ("restore",)
