r"""Scalars to log that show whether IVON's Hessian estimate is learning.

The most common way an IVON run goes wrong is quietly: $h$ stays at
``hess_init``, so the posterior spread $\sigma = 1/\sqrt{\lambda (h +
\delta)}$ and the step size are set by the initial guess instead of the data.
[`diagnostics`][ivon_optax.diagnostics] summarizes the state in a few scalars that make that
visible in a training log.
"""

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import trees as _trees
from ivon_optax._src.sampling import _aligned_state
from ivon_optax._src.sampling import _precision
from ivon_optax._src.transform import precision_per_example

QUANTILES = (0.05, 0.5, 0.95)
STUCK_TOLERANCE = 0.01


def _managed_values(hess_tree, values_tree) -> jax.Array:
  """The elements of ``values_tree`` at the positions IVON manages, as one flat array."""
  leaves = [
    jnp.ravel(value).astype(jnp.float32)
    for h, value in zip(
      jax.tree.leaves(hess_tree, is_leaf=_trees.is_masked),
      jax.tree.leaves(values_tree, is_leaf=_trees.is_masked),
      strict=True,
    )
    if not _trees.is_masked(h)
  ]
  if not leaves:
    raise ValueError(
      "`params` holds no leaf that IVON manages (all masked out or not floating "
      "point): there is nothing to diagnose."
    )
  return jnp.concatenate(leaves)


def diagnostics(
  state: optax.OptState, params: optax.Params, *, learning_rate: chex.Numeric | None = None
) -> dict[str, jax.Array]:
  r"""A few scalars that show whether IVON's Hessian estimate $h$ is learning.

  Over all elements IVON manages (masked-out, integer and boolean leaves are
  left out), with $h_0$ = ``hess_init``, $\delta$ the weight
  decay of each element's leaf and $\lambda$ = ``ess``:

  * ``hess_at_init``: the fraction of elements with
    $|h - h_0| \le 0.01\, h_0$. Near 1 after many steps means $h$
    is stuck at its initial value.
  * ``hess_q05``, ``hess_q50``, ``hess_q95``: quantiles of $h$.
  * ``std_q05``, ``std_q50``, ``std_q95``: quantiles of the posterior standard
    deviation $\sigma = 1/\sqrt{\lambda (h + \delta)}$.
  * ``step_factor``: the mean of $(h_0 + \delta) / (h + \delta)$, the
    factor by which IVON's step differs from SGD's with the same learning
    rate (with ``rescale_lr=True``, the default). 1 while $h$ is at
    $h_0$.
  * ``effective_lr``: ``learning_rate`` times ``step_factor``, when
    ``learning_rate`` is given (the optimizer state does not hold it).
  * ``step``: the number of steps taken.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(4)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0, hess_init=0.5).init(params)
    >>> logs = ivon_optax.diagnostics(state, params, learning_rate=0.1)
    >>> float(logs["hess_at_init"]), float(logs["step_factor"]), int(logs["step"])
    (1.0, 1.0, 0)

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][].
    params: the params that state was created for.
    learning_rate: the current learning rate, to report ``effective_lr``.

  Returns:
    A dict of scalar arrays, ready for a logger (``float(value)``). The
    function is jittable.
  """
  ivon_state = _aligned_state(state, params)
  hess_tree, decay_tree = ivon_state.hess, ivon_state.weight_decay
  stats = _trees.map_unmasked
  hess = _managed_values(hess_tree, hess_tree)
  std = _managed_values(
    hess_tree,
    stats(lambda h, d: jax.lax.rsqrt(_precision(ivon_state, h, d)), hess_tree, decay_tree),
  )
  hess_init = ivon_state.hess_init.astype(jnp.float32)
  factor = _managed_values(
    hess_tree,
    stats(lambda h, d: (hess_init + d) / precision_per_example(h, d), hess_tree, decay_tree),
  )
  logs = {
    "step": ivon_state.count,
    "hess_at_init": jnp.mean(jnp.abs(hess - hess_init) <= STUCK_TOLERANCE * hess_init),
    "step_factor": jnp.mean(factor),
  }
  for name, values in (("hess", hess), ("std", std)):
    for q, value in zip(QUANTILES, jnp.quantile(values, jnp.asarray(QUANTILES)), strict=True):
      logs[f"{name}_q{round(100 * q):02d}"] = value
  if learning_rate is not None:
    logs["effective_lr"] = jnp.asarray(learning_rate, jnp.float32) * logs["step_factor"]
  return logs
