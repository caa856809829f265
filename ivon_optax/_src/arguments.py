"""The checks of IVON's transform arguments: masks, dtypes, states and samples.

The hyperparameters' value rules are the table in ``checks``; what is here
needs the params or the state, and runs while the update is traced, never as
work on the device.
"""

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ivon_optax._src import checks
from ivon_optax._src import prior as _prior
from ivon_optax._src import trees as _trees
from ivon_optax._src.algorithm import IVONState
from ivon_optax._src.sample_average import SampleAverage

WeightDecayMask = Any | Callable[[optax.Params], Any] | None


def check_beta1_for_debias(beta1, debias: bool) -> None:
  number = checks.concrete_number("beta1", beta1)
  if debias and number is not None and np.float32(number) >= 1:
    raise ValueError(
      f"Invalid `beta1`={number!r} with debias=True: the debiasing divides by "
      "1 - beta1**t = 0. Use beta1 < 1 (typical: 0.9), or debias=False."
    )


def largest_step_factor(hess_init, weight_decay, prior) -> Any:
  r"""$h_0 + \max \delta$, the largest factor ``rescale_lr`` multiplies a step by.

  ``None`` where it cannot be known when the transform is built (a traced
  prior, or a prior whose precision is not real numbers, which ``init``
  refuses). Computed once, from the arguments; masked-out leaves count too,
  and precisions beyond float32's range (which ``init`` refuses for float32
  params) do not.
  """
  if prior is None:
    return hess_init + weight_decay
  largest = 0.0
  for leaf in jax.tree.leaves(prior.precision):
    if isinstance(leaf, jax.core.Tracer):
      return None
    try:
      values = np.asarray(leaf, np.float64)
    except (TypeError, ValueError):
      return None
    # Precisions beyond float32's range are init's to refuse (for float32 params).
    values = values[np.abs(values) <= checks.FLOAT32_MAX]
    largest = max(largest, float(values.max(initial=0.0)))
  return hess_init + largest


def stable_learning_rate(learning_rate, step_factor):
  r"""``learning_rate``, checked against the stability limit of the rescaled step.

  With ``rescale_lr`` the step is $\alpha (h_0 + \delta)$ times a Newton
  step, $(\hat g + \delta (m - \mu_0)) / (h + \delta)$. Where the data
  have no curvature and $h$ has decayed towards 0 (dead units, or the
  weights a prior pins), each step multiplies $m - \mu_0$ by
  $1 - \alpha (h_0 + \delta)$: at $\alpha (h_0 + \delta) \ge 2$ the
  weights grow geometrically. A concrete rate at or above the limit raises a
  ``ValueError``; a traced one gives NaN (a scalar check per step).
  """
  if step_factor is None:
    return learning_rate
  valid = learning_rate * step_factor < 2.0
  if checks.concrete_number("learning_rate", learning_rate) is None or isinstance(
    valid, jax.core.Tracer
  ):
    return checks.nan_unless(valid, learning_rate)
  if not valid:
    raise ValueError(
      f"`learning_rate`={float(learning_rate):g} with rescale_lr=True multiplies each step by "
      f"learning_rate * (hess_init + largest prior precision) = "
      f"{float(learning_rate * step_factor):g} >= 2: where the data do not pin a weight, "
      "the pull to the prior mean overshoots and the weights grow without bound. Use "
      f"learning_rate < {2.0 / float(step_factor):.4g}, or rescale_lr=False (the step is "
      "then a Newton step; learning rates 0.1 to 0.5 are natural), as for a prior from "
      "posterior_as_prior."
    )
  return learning_rate


def check_state_dtype(state_dtype) -> None:
  if state_dtype is None:
    return
  dtype = jnp.dtype(state_dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"`state_dtype`={dtype} is not a floating-point dtype: IVON's momentum and "
      "Hessian are real numbers. Pass jnp.float32 (or None for the default)."
    )
  if dtype.itemsize < 4:
    warnings.warn(
      f"`state_dtype`={dtype} cannot hold IVON's Hessian: its increments are "
      "(1 - beta2)-sized and round away, so h drifts from its float32 value. "
      "Pass state_dtype=None (float32 at least) unless memory forces this.",
      UserWarning,
      stacklevel=3,
    )


def check_hyperparameter_dtype(name: str, value) -> None:
  if jnp.result_type(value) in (jnp.bfloat16, jnp.float16):
    raise ValueError(
      f"`{name}` arrived as {jnp.result_type(value)}, which rounds IVON's "
      "hyperparameters (beta2=0.99999 becomes 1). Keep them in float32: "
      "optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)."
    )


def is_managed(param) -> bool:
  """Whether IVON learns ``param``: floating-point leaves only.

  Raises:
    TypeError: for complex leaves, which IVON's real Gaussian cannot describe.
  """
  dtype = jnp.result_type(param)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise TypeError(
      f"IVON learns real parameters; got a {dtype} leaf. Split complex params "
      "into real and imaginary parts (two float leaves)."
    )
  return bool(jnp.issubdtype(dtype, jnp.floating))


def check_real(name: str, tree) -> None:
  for leaf in jax.tree.leaves(tree):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
      raise TypeError(
        f"`{name}` holds a {jnp.result_type(leaf)} leaf; IVON learns real "
        "parameters from real gradients. Split complex values into real and "
        "imaginary parts."
      )


_MASK_FIX = (
  "Pass a pytree of Python bools with the params' structure (or a prefix of "
  "it), one bool per leaf or subtree, or a callable returning one. Under "
  "optax.inject_hyperparams, which calls callables as schedules, pass "
  "static_args=('weight_decay_mask',)."
)


def _is_bool_leaf(node) -> bool:
  return isinstance(node, (bool, np.bool_)) or (
    isinstance(node, (np.ndarray, jax.Array)) and node.dtype == bool
  )


def _mask_bool(node) -> bool:
  if isinstance(node, jax.core.Tracer) or not _is_bool_leaf(node):
    raise TypeError(
      f"`weight_decay_mask` holds {type(node).__name__} "
      f"{getattr(node, 'dtype', '')} where a bool belongs. {_MASK_FIX}"
    )
  if np.ndim(node) != 0:
    raise ValueError(
      f"`weight_decay_mask` holds a bool array of shape {np.shape(node)}; "
      "per-element masks are not supported (delta is one scalar per leaf). "
      f"{_MASK_FIX}"
    )
  return bool(node)


def keep(mask: WeightDecayMask, params) -> Any:
  """One Python bool per param leaf: ``False`` where ``weight_decay_mask`` turns the prior off."""
  if mask is None:
    return jax.tree.map(lambda _: True, params, is_leaf=_trees.is_masked)
  mask_tree = mask(params) if callable(mask) else mask
  params_def = jax.tree.structure(params, is_leaf=_trees.is_masked)
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(mask_tree)) and not (
    jax.tree_util.treedef_is_leaf(params_def)
  ):
    raise TypeError(
      f"`weight_decay_mask` is a single {type(mask_tree).__name__}, not a tree "
      f"like the params ({params_def}). {_MASK_FIX}"
    )
  try:
    return jax.tree.map(
      lambda m, p: jax.tree.map(lambda _: _mask_bool(m), p, is_leaf=_trees.is_masked),
      mask_tree,
      params,
      is_leaf=_is_bool_leaf,
    )
  except ValueError as error:
    if "weight_decay_mask" in str(error):
      raise
    raise ValueError(
      f"`weight_decay_mask` has structure {jax.tree.structure(mask_tree)}, "
      f"which is not a prefix of the params' {params_def}. {_MASK_FIX}"
    ) from error


def sample_message(hess_approx: str, both: bool = False) -> str:
  statistic = "noise_grads" if hess_approx == "price" else "grads_squared"
  problem = (
    "Pass either `noise=` (one sample) or `samples=` (several), not both. "
    if both
    else "IVON's update needs the Monte-Carlo sample its gradient was taken at: "
  )
  return problem + (
    "call `tx.update(grads, state, params, noise=noise)` with the `noise` "
    "returned by `ivon_optax.sample_params(key, state, params)` (or by "
    "`ivon_optax.value_and_grad_at_sample`), or, for several samples, "
    "`tx.update(average.grads, state, params, samples=average)` with an "
    f"`ivon_optax.SampleAverage` holding `{statistic}` (hess_approx={hess_approx!r})."
  )


def check_state(state, params) -> None:
  """Trace-time check that ``state`` is an IVON state for ``params``."""
  if not isinstance(state, IVONState):
    raise TypeError(
      f"`state` must be the ivon_optax.IVONState made by this optimizer's "
      f"init (tx.init(params)); got {type(state).__name__}."
    )
  if jnp.ndim(state.count) != 0:
    raise ValueError(
      f"`state` is a stack of IVON states (leading shape {jnp.shape(state.count)}, e.g. "
      "ensemble members from jax.vmap(tx.init)); update one member at a time: "
      "jax.vmap(tx.update)(grads, states, params, noise=noise) over the members."
    )
  _trees.check_like_params(
    "params",
    params,
    state.hess,
    "Pass the params this optimizer state was created for, or create the state "
    "with tx.init(params).",
    like="the IVON state's buffers",
  )


STATE_FIX = (
  "The IVON state is the one home of the posterior (ess, hess_init, weight_decay, "
  "weight_decay_mask, prior): build the transform with the values the state was made "
  "with, or start a new posterior with tx.init(params). "
  "(calibration.scale_posterior changes ess for prediction only.)"
)


def same(what: str, stored, given, ok):
  """``ok`` and ``stored == given``: raises a ``ValueError`` naming ``what`` if both are known."""
  same = stored == jnp.asarray(given, stored.dtype)
  if isinstance(same, jax.core.Tracer):
    return ok & same
  if not bool(same):
    raise ValueError(
      f"The IVON state was made with {what}={np.asarray(stored).tolist()!r}, but this "
      f"transform has {what}={np.asarray(given).tolist()!r}. {STATE_FIX}"
    )
  return ok


def consistent(
  state: IVONState, params, *, ess, hess_init, prior, prior_id, weight_decay, weight_decay_mask
) -> jax.Array:
  """Whether ``state`` was made with these posterior arguments of the transform.

  Compares ``ess``, ``hess_init``, the prior precision of each leaf (from
  ``weight_decay``, ``weight_decay_mask`` or ``prior``) and the prior's
  fingerprint with the state's: scalars only, no pass over the params. Raises
  a ``ValueError`` naming the first mismatch that is known while tracing;
  returns the traced verdict of the rest, for the update to fold into its
  step as NaN.
  """
  has_prior_mean = prior is not None and prior.mean is not None
  if has_prior_mean == _trees.is_empty(state.prior_mean):
    has = "without a prior mean, but this transform has one"
    has_not = "with a prior mean, but this transform has none"
    raise ValueError(f"The IVON state was made {has if has_prior_mean else has_not}. {STATE_FIX}")
  ok = same("ess", state.ess, ess, jnp.asarray(True))
  ok = same("hess_init", state.hess_init, hess_init, ok)
  if prior_id is not None:
    ok = same("prior (fingerprint of its arrays)", state.prior_id, prior_id, ok)
  given = _prior.leaf_precisions(prior, weight_decay, keep(weight_decay_mask, params), params)
  paths = jax.tree_util.tree_flatten_with_path(state.prior_precision, is_leaf=_trees.is_masked)[0]
  for (path, stored), delta in zip(paths, jax.tree.leaves(given), strict=True):
    if _trees.is_masked(stored):
      continue
    what = f"prior precision (weight decay) at {jax.tree_util.keystr(path)}"
    if jnp.ndim(stored) != jnp.ndim(delta):
      raise ValueError(
        f"The IVON state holds a {what} of shape {jnp.shape(stored)}, but this transform "
        f"gives one of shape {jnp.shape(delta)}. {STATE_FIX}"
      )
    if jnp.ndim(delta) == 0:  # per-element precisions are covered by the fingerprint
      ok = same(what, stored, delta, ok)
  return ok


def sample_average_statistic(samples, hess_approx: str, params, fix: str):
  """The Hessian statistic a `SampleAverage` holds for ``hess_approx``."""
  if not isinstance(samples, SampleAverage):
    raise TypeError(f"`samples` must be an ivon_optax.SampleAverage, got {type(samples)}.")
  count = checks.concrete_number("samples.count", samples.count)
  if count is not None and count < 1:
    raise ValueError(
      "`samples` averages no sample (count 0): add samples with "
      "ivon_optax.add_sample before the update, or pass one sample's `noise=`."
    )
  statistic = samples.noise_grads if hess_approx == "price" else samples.grads_squared
  if isinstance(statistic, tuple) and not statistic:
    raise ValueError(
      f"`samples` holds no statistic for hess_approx={hess_approx!r}: "
      f"build it with ivon_optax.init_sample_average(params, "
      f"hess_approx={hess_approx!r}) or average_samples(..., "
      f"hess_approx={hess_approx!r})."
    )
  _trees.check_like_params("samples", statistic, params, fix)
  check_real("samples", statistic)
  return statistic


def mean_over_axis(trees, axis_name: str):
  # Probe with axis_size: it raises NameError for an unbound name, whereas
  # pmean under shard_map (check_vma=True) fails with a bare AssertionError.
  try:
    jax.lax.axis_size(axis_name)
  except NameError as error:
    raise ValueError(
      f"`axis_name`={axis_name!r} is not a mapped axis here: call the update "
      "inside shard_map/pmap over that mesh axis, or pass axis_name=None."
    ) from error
  return jax.lax.pmean(trees, axis_name)
