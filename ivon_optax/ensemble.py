"""Ensembles of IVON posteriors (MultiIVON): the members' weight samples, pooled."""

from ivon_optax._src.ensemble import sample_ensemble_outputs

__all__ = ("sample_ensemble_outputs",)
