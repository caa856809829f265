r"""Scalars to log that show whether the data, not ``hess_init``, set IVON's posterior.

IVON's Hessian estimate starts at $h_0$ and forgets it geometrically:
after $t$ steps, $h_0 \prod_s \beta_{2,s}$ of it is left (the state tracks
the product), and everything else in $h$ came from the data's estimates
$\hat h$. The most common way an IVON run goes wrong is quietly: $h$ is
still mostly that decayed initial value, so the posterior spread
$\sigma = 1/\sqrt{\lambda (h + \delta)}$ is set by a guess, not by the
data. [`diagnostics`][ivon_optax.diagnostics] measures this per element.
"""

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import algorithm
from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import guard
from ivon_optax._src.ensemble import check_stacked_states
from ivon_optax._src.ensemble import member_count
from ivon_optax._src.posterior import aligned_state
from ivon_optax._src.posterior import find_ivon_state
from ivon_optax._src.posterior import total_precision

QUANTILES = (0.05, 0.5, 0.95)
AT_INIT_TOLERANCE = 0.01  # |h - h0 prod(beta2)| within 1% of it: h is the decayed initial value
PRIOR_ONLY_RATIO = 0.1  # h below 10% of delta: sigma is the prior's
LEARNED_SHARE = 0.1  # the median element's h is at least a tenth the data's


def data_share(hess: chex.Array, init_left: chex.Array) -> chex.Array:
  r"""The share of $h$ the data set: $|h - r| / (|h - r| + r)$, $r = h_0 \prod \beta_2$.

  0 where $h$ is exactly the decayed initial value $r$, towards 1 where
  the data's estimates dominate it (pushing $h$ up or down).
  """
  moved = jnp.abs(hess - init_left)
  return moved / (moved + init_left)


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
  if not leaves or sum(leaf.size for leaf in leaves) == 0:
    raise ValueError(
      "`params` holds no element that IVON manages (all masked out, not floating "
      "point, or of size 0): there is nothing to diagnose."
    )
  return jnp.concatenate(leaves)


def diagnostics(
  state: optax.OptState, params: optax.Params, *, learning_rate: chex.Numeric | None = None
) -> dict[str, jax.Array]:
  r"""A few scalars that show whether the data set IVON's posterior.

  Over all elements IVON manages (masked-out, integer and boolean leaves are
  left out), with $r = h_0 \prod_s \beta_{2,s}$ what is left of
  ``hess_init`` in $h$, $\delta$ each element's prior precision and
  $\lambda$ = ``ess``:

  * ``hess_data_share``: the median over elements of the share of $h$ the
    data set, $|h - r| / (|h - r| + r)$: 0 when $h$ is the decayed initial
    value, near 1 when the data set it.
  * ``learned``: ``hess_data_share >= 0.1``. False means $h$, hence
    $\sigma$ and the step, is still the decayed ``hess_init`` to within
    10%, however long the run: give ``beta2`` a memory $1/(1-\beta_2)$ that is
    a small fraction of the run ([`recipe`][ivon_optax.recipe] takes a third).
  * ``hess_from_init``: the fraction of elements whose data share is below 0.5.
  * ``hess_at_init``: the fraction of elements with $|h - r| \le 0.01\, r$.
  * ``prior_only``: the fraction of elements with $h < 0.1\,\delta$, whose
    spread is the prior's, $1/\sqrt{\lambda\delta}$, not the data's.
  * ``prior_dominant``: the fraction with $h < \delta$, whose spread the
    prior sets more than the data.
  * ``hess_init_left``: $r$ itself.
  * ``hess_q05``, ``hess_q50``, ``hess_q95``: quantiles of $h$.
  * ``std_q05``, ``std_q50``, ``std_q95``: quantiles of the posterior standard
    deviation $\sigma$.
  * ``step_factor``: the mean of $(h_0 + \delta) / (h + \delta)$, the
    factor by which IVON's step differs from SGD's with the same learning
    rate (with ``rescale_lr=True``, the default).
  * ``step_factor_max``: its largest value. With ``rescale_lr`` it grows as
    $h$ falls below $h_0$; a value that keeps growing over the run warns of
    divergence.
  * ``effective_lr``: ``learning_rate`` times ``step_factor``, when
    ``learning_rate`` is given (the optimizer state does not hold it).
  * ``step``: the number of steps taken.

  Prediction depends on $\sigma$, hence on $h + \delta$ whatever set it;
  sensitivity, leave-one-out and merging read $h$ as the data's curvature and
  mean something only where ``learned`` holds and ``prior_only`` is small.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(4)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0, hess_init=0.5).init(params)
    >>> logs = ivon_optax.diagnostics(state, params, learning_rate=0.1)
    >>> float(logs["hess_data_share"]), bool(logs["learned"]), int(logs["step"])
    (0.0, False, 0)

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][],
      or a stack of them (vmapped ensemble members, with params stacked the
      same way): then every value has a leading member axis.
    params: the params that state was created for.
    learning_rate: the current learning rate (a scalar >= 0), to report
      ``effective_lr``; NaN under ``jit`` if invalid.

  Returns:
    A dict of scalar arrays (or one value per member), ready for a logger
    (``float(value)``). The function is jittable.
  """
  if learning_rate is not None:
    learning_rate = guard("learning_rate", learning_rate)
  if jnp.ndim(find_ivon_state(state).count) == 1:
    check_stacked_states(state, member_count(params), name="state")
    return jax.vmap(lambda s, p: diagnostics(s, p, learning_rate=learning_rate))(state, params)
  ivon_state = aligned_state(state, params)
  hess_tree, delta_tree = ivon_state.hess, ivon_state.prior_precision
  per_element = lambda fn: _managed_values(
    hess_tree, _trees.map_unmasked(fn, hess_tree, delta_tree)
  )
  hess = per_element(lambda h, d: h)
  hess_init = ivon_state.hess_init.astype(jnp.float32)
  init_left = hess_init * ivon_state.hess_init_weight.astype(jnp.float32)
  share = data_share(hess, init_left)
  std = per_element(lambda h, d: jax.lax.rsqrt(total_precision(ivon_state, h, d)))
  factor = per_element(lambda h, d: (hess_init + d) / algorithm.precision_per_example(h, d))
  prior_only = per_element(lambda h, d: h < PRIOR_ONLY_RATIO * d)
  prior_dominant = per_element(lambda h, d: h < d)
  logs = {
    "step": ivon_state.count,
    "hess_data_share": jnp.median(share),
    "hess_from_init": jnp.mean(share < 0.5),
    "hess_at_init": jnp.mean(jnp.abs(hess - init_left) <= AT_INIT_TOLERANCE * init_left),
    "prior_only": jnp.mean(prior_only),
    "prior_dominant": jnp.mean(prior_dominant),
    "hess_init_left": init_left,
    "step_factor": jnp.mean(factor),
    "step_factor_max": jnp.max(factor),
  }
  logs["learned"] = logs["hess_data_share"] >= LEARNED_SHARE
  for name, values in (("hess", hess), ("std", std)):
    for q, value in zip(QUANTILES, jnp.quantile(values, jnp.asarray(QUANTILES)), strict=True):
      logs[f"{name}_q{round(100 * q):02d}"] = value
  if learning_rate is not None:
    logs["effective_lr"] = jnp.asarray(learning_rate, jnp.float32) * logs["step_factor"]
  return logs
