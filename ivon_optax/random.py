"""Standard-normal samplers for [`ivon_optax.sample_params`][]."""

from ivon_optax._src.counter_normal import counter_normal

__all__ = ("counter_normal",)
