r"""IVON: the improved variational online Newton optimizer, as optax transforms.

IVON learns a diagonal Gaussian posterior $\mathcal{N}(m, \sigma^2)$ over
the weights. The mean $m$ is the model's parameters; the state holds the
momentum $\bar g$ and the Hessian estimate $h$, from which
$\sigma^2 = 1 / (\lambda (h + \delta))$.

Each step evaluates the gradient at a weight sample
$\theta = m + \sigma \odot \epsilon$ (see [`ivon_optax.sample_params`][])
and passes that sample's noise $\sigma \odot \epsilon$ to ``update``.

References:
  Shen et al., [Variational Learning is Effective for Large Deep
  Networks](https://arxiv.org/abs/2402.17641), ICML 2024 (Algorithm 1).
"""

import warnings
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ivon_optax._src import checks
from ivon_optax._src import prior as _prior
from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import HessApprox
from ivon_optax._src.checks import check_hess_approx
from ivon_optax._src.prior import GaussianPrior
from ivon_optax._src.sample_average import SampleAverage

WeightDecayMask = Any | Callable[[optax.Params], Any] | None


class IVONState(NamedTuple):
  """State of [`scale_by_ivon`][ivon_optax.scale_by_ivon]: the variational posterior's parameters.

  The per-parameter fields hold an `optax.MaskedNode` for each leaf IVON
  does not manage: leaves masked out by ``optax.masked``/``optax.partition``,
  and integer or boolean leaves, which IVON neither perturbs nor updates.
  """

  count: chex.Array  # shape=(), dtype=jnp.int32: steps taken.
  momentum: optax.Updates  # like params, state dtype: gradient momentum g_m.
  hess: optax.Updates  # like params, state dtype: Hessian estimate h.
  ess: chex.Array  # shape=(), state dtype: effective sample size lambda.
  weight_decay: optax.Updates  # one scalar per param leaf: delta (0 if masked).
  hess_init: chex.Array  # shape=(), state dtype: h0, for ivon_optax.diagnostics.
  # With a prior mean: like params, state dtype: mu_0; () without one.
  # (weight_decay above then holds the prior's precision, per leaf or per element.)
  prior_mean: optax.Updates = ()


# --- The update's formulas, one per line of Algorithm 1 ------------------------
#
# Each formula is the reference's wherever the reference's float arithmetic stays
# finite. Where it overflows, the estimate and h saturate at the dtype's largest
# finite value instead of becoming inf (and then inf - inf = NaN a step later),
# and h + delta is floored at the smallest normal number, so that sigma and the
# step stay finite.


def _largest(x) -> chex.Array:
  return jnp.finfo(x.dtype).max


def _saturate(x: chex.Array) -> chex.Array:
  """``x`` clipped to its dtype's finite range; NaN stays NaN."""
  return jnp.clip(x, -_largest(x), _largest(x))


def precision_per_example(hess, weight_decay):
  r"""The posterior precision per example, $h + \delta$.

  Floored at the dtype's smallest normal number, so that $\sigma$ and the
  step stay finite even where rounding would make it 0.
  """
  return jnp.maximum(hess + weight_decay, jnp.finfo(hess.dtype).tiny)


def price_hess_estimate(noise_grads, precision, ess):
  r"""Price's-theorem Hessian estimate.

  $$
  \hat h = \lambda\, \overline{\text{noise} \cdot g}\, (h + \delta)
  $$

  This equals $g \epsilon / \sigma$ for one sample (reparameterization
  trick), averaged over the Monte-Carlo samples. ``precision`` is
  $h + \delta$.
  """
  return _saturate(noise_grads * precision * ess)


def gradsq_hess_estimate(grads_squared, ess):
  r"""Squared-gradient (Gauss-Newton-like) estimate $\hat h = \lambda\, \overline{g^2}$."""
  return _saturate(grads_squared * ess)


def new_hess(hess, hess_estimate, beta2, precision):
  r"""The Riemannian-gradient Hessian update.

  $$
  h \leftarrow \beta_2 h + (1-\beta_2)\hat h
    + \tfrac12 (1-\beta_2)^2 (h - \hat h)^2 / (h + \delta)
  $$

  The last term keeps $h + \delta > 0$ whatever $\hat h$ is. It is
  computed as $d \cdot (d / (h + \delta))$, $d = h - \hat h$, so that
  $d^2$ cannot overflow where the result itself fits. With $h$ and
  $\hat h$ finite, the first two terms are finite and the last is in
  $[0, \infty]$, so the sum is never NaN; an overflow saturates at the
  dtype's largest value. ``precision`` is $h + \delta$.
  """
  gap = hess - hess_estimate
  hess = (
    beta2 * hess
    + (1.0 - beta2) * hess_estimate
    + (0.5 * (1.0 - beta2) ** 2) * gap * (gap / precision)
  )
  return jnp.minimum(hess, _largest(hess))


def preconditioned_step(momentum_hat, param, precision, weight_decay, clip_radius, prior_mean=0.0):
  r"""The mean's step before the learning rate.

  $$
  \mathrm{clip}((\hat g + \delta (m - \mu_0)) / (h + \delta), -c, c)
  $$

  ``precision`` is the new $h + \delta$; without a prior mean
  $\mu_0 = 0$.
  """
  step = (momentum_hat + weight_decay * (param - prior_mean)) / precision
  return jnp.clip(step, -clip_radius, clip_radius)


# --- Argument checks ------------------------------------------------------------

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite32(value: float) -> bool:
  return abs(value) <= _FLOAT32_MAX


# name: (rule on a float, rule on a traced array, what the rule says).
_RULES = {
  "learning_rate": (
    lambda v: 0 <= v and _finite32(v),
    lambda v: (v >= 0) & jnp.isfinite(v),
    "must be finite and >= 0",
  ),
  "ess": (
    lambda v: 0 < v and _finite32(v),
    lambda v: (v > 0) & jnp.isfinite(v),
    "must be > 0 and finite in float32 (use the training-set size)",
  ),
  "hess_init": (
    lambda v: 0 < v and _finite32(v),
    lambda v: (v > 0) & jnp.isfinite(v),
    "must be > 0 and finite (typical: 0.01 to 1)",
  ),
  "beta1": (lambda v: 0 <= v <= 1, lambda v: (v >= 0) & (v <= 1), "must be in [0, 1]"),
  "beta2": (
    lambda v: 0 <= v <= 1,
    lambda v: (v >= 0) & (v <= 1),
    "must be in [0, 1] (typical: 0.99999)",
  ),
  "weight_decay": (
    lambda v: 0 <= v and _finite32(v),
    lambda v: (v >= 0) & jnp.isfinite(v),
    "must be finite and >= 0",
  ),
  "clip_radius": (
    lambda v: v > 0,
    lambda v: v > 0,
    "must be > 0 (float('inf') for no clipping)",
  ),
}


def _concrete_value(name: str, value) -> float | None:
  """``value`` as a float if it is a concrete scalar; ``None`` if traced.

  Raises:
    TypeError: if ``value`` is not a real number or a scalar array of one.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError) as error:
    raise TypeError(f"`{name}` must be a real number; got {type(value).__name__}.") from error
  if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == bool) or jnp.issubdtype(
    array.dtype, jnp.complexfloating
  ):
    raise TypeError(
      f"`{name}` must be a real number; got {type(value).__name__} {value!r} "
      f"(dtype {array.dtype}). Pass e.g. {name}=10.0."
    )
  if array.ndim != 0:
    raise TypeError(f"`{name}` must be a scalar; got an array of shape {array.shape}.")
  return float(array)


def _check_hyperparameters(**hyperparameters) -> None:
  """Applies the rules to the hyperparameters whose values are known here.

  Python and NumPy numbers and concrete 0-d arrays are checked; values traced
  under ``jit`` or ``inject_hyperparams`` are guarded by `_guarded`.
  """
  for name, value in hyperparameters.items():
    number = _concrete_value(name, value)
    if number is None:
      continue
    valid, _, rule = _RULES[name]
    if not valid(number):
      raise ValueError(f"Invalid `{name}`={number!r}: it {rule}.")


def _guarded(name: str, value):
  """``value``, or NaN where a traced value breaks its rule.

  Python and NumPy numbers pass unchanged (they were checked when the optimizer
  was built); arrays become ``where(valid, value, nan)``, a scalar op, so that
  an invalid injected or traced hyperparameter gives NaN, never a plausible
  step.
  """
  if not isinstance(value, jax.Array):
    return value
  return jnp.where(_RULES[name][1](value), value, jnp.nan)


def _check_beta1_for_debias(beta1, debias: bool) -> None:
  number = _concrete_value("beta1", beta1)
  if debias and number is not None and np.float32(number) >= 1:
    raise ValueError(
      f"Invalid `beta1`={number!r} with debias=True: the debiasing divides by "
      "1 - beta1**t = 0. Use beta1 < 1 (typical: 0.9), or debias=False."
    )


def _check_hyperparameter_dtype(name: str, value) -> None:
  if jnp.result_type(value) in (jnp.bfloat16, jnp.float16):
    raise ValueError(
      f"`{name}` arrived as {jnp.result_type(value)}, which rounds IVON's "
      "hyperparameters (beta2=0.99999 becomes 1). Keep them in float32: "
      "optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)."
    )


def _check_state_dtype(state_dtype) -> None:
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


def is_managed(param) -> bool:
  """Whether IVON learns ``param``: floating-point leaves only.

  Integer and boolean leaves (counters, indices, flags kept among the params)
  are never perturbed or updated: their state entries are
  `optax.MaskedNode`, their noise and update are zero.

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


def _is_bool_leaf(node) -> bool:
  return isinstance(node, (bool, np.bool_)) or (
    isinstance(node, (np.ndarray, jax.Array)) and node.dtype == bool
  )


_MASK_FIX = (
  "Pass a pytree of Python bools with the params' structure (or a prefix of "
  "it), one bool per leaf or subtree, or a callable returning one. Under "
  "optax.inject_hyperparams, which calls callables as schedules, pass "
  "static_args=('weight_decay_mask',)."
)


def _mask_bool(node, param) -> bool:
  """One mask entry as a Python bool."""
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


def _leaf_weight_decay(weight_decay, mask: WeightDecayMask, params):
  """One weight-decay scalar per param leaf: ``weight_decay``, or 0 where masked out."""
  if mask is None:
    return jax.tree.map(lambda _: weight_decay, params)
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
      lambda m, p: jax.tree.map(lambda _: weight_decay if _mask_bool(m, p) else 0.0, p),
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


_DEFAULT_WEIGHT_DECAY = 1e-4  # weight_decay's default in scale_by_ivon and ivon.


def _check_prior_without_weight_decay(weight_decay) -> None:
  """Raises a ``ValueError`` if ``weight_decay`` was changed from its default next to a prior."""
  value = _concrete_value("weight_decay", weight_decay)
  if value is not None and np.float32(value) != np.float32(_DEFAULT_WEIGHT_DECAY):
    raise ValueError(
      f"Pass either `prior` or `weight_decay`, not both (got weight_decay={value!r}): "
      "the prior's precision is the weight decay. Use "
      "GaussianPrior(mean, precision=weight_decay)."
    )


def _sample_message(hess_approx: str, both: bool = False) -> str:
  statistic = "noise_grads" if hess_approx == "price" else "grads_squared"
  problem = (
    "Pass either `noise=` (one sample) or `samples=` (several), not both. "
    if both
    else "IVON's update needs the Monte-Carlo sample its gradient was taken at: "
  )
  return problem + (
    "call `tx.update(grads, state, params, noise=noise)` with the `noise` "
    "returned by `ivon_optax.sample_params(key, state, params)`, or, for "
    "several samples, `tx.update(average.grads, state, params, samples=average)` "
    f"with an `ivon_optax.SampleAverage` holding `{statistic}` "
    f"(hess_approx={hess_approx!r})."
  )


def _check_state(state, params) -> None:
  """Trace-time check that ``state`` is an IVON state for ``params``."""
  if not isinstance(state, IVONState):
    raise TypeError(
      f"`state` must be the ivon_optax.IVONState made by this optimizer's "
      f"init (tx.init(params)); got {type(state).__name__}."
    )
  _trees.check_like_params(
    "params",
    params,
    state.hess,
    "Pass the params this optimizer state was created for, or create the state "
    "with tx.init(params).",
    like="the IVON state's buffers",
  )


def _check_real(name: str, tree) -> None:
  for leaf in jax.tree.leaves(tree):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
      raise TypeError(
        f"`{name}` holds a {jnp.result_type(leaf)} leaf; IVON learns real "
        "parameters from real gradients. Split complex values into real and "
        "imaginary parts."
      )


# --- The transforms ---------------------------------------------------------------


def scale_by_ivon(
  ess: chex.Numeric,
  *,
  hess_init: chex.Numeric = 1.0,
  beta1: chex.Numeric = 0.9,
  beta2: chex.Numeric = 0.99999,
  weight_decay: chex.Numeric = 1e-4,
  clip_radius: chex.Numeric = float("inf"),
  hess_approx: HessApprox = "price",
  debias: bool = True,
  rescale_lr: bool = True,
  weight_decay_mask: WeightDecayMask = None,
  state_dtype: Any | None = None,
  axis_name: str | None = None,
  prior: GaussianPrior | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""IVON's direction, everything but the learning rate.

  With $\lambda$ = ``ess``, $\delta$ = ``weight_decay``, $h_0$
  = ``hess_init``, $c$ = ``clip_radius`` and $S$ Monte-Carlo samples
  $\theta_s = m + \text{noise}_s$ with gradients $g_s$:

  $$
  \begin{aligned}
  \bar g_t &= \beta_1 \bar g_{t-1} + (1-\beta_1)\, \tfrac1S \textstyle\sum_s g_s \\
  \hat h_t &= \lambda\, \tfrac1S \textstyle\sum_s \text{noise}_s g_s\, (h_{t-1} + \delta)
    \quad \text{(price; gradsq: } \lambda\, \tfrac1S \textstyle\sum_s g_s^2) \\
  h_t &= \beta_2 h_{t-1} + (1-\beta_2) \hat h_t
    + \tfrac12 (1-\beta_2)^2 (h_{t-1} - \hat h_t)^2 / (h_{t-1} + \delta) \\
  u_t &= (h_0 + \delta)\, \mathrm{clip}\!\left(
    \frac{\bar g_t / (1 - \beta_1^t) + \delta (m - \mu_0)}{h_t + \delta}, -c, c\right)
  \end{aligned}
  $$

  The factor $h_0 + \delta$ is present when ``rescale_lr`` and the
  debiasing $1 - \beta_1^t$ when ``debias``. [`ivon`][ivon_optax.ivon] scales
  $u_t$ by $-\alpha_t$. The prior is $\mathcal{N}(\mu_0,
  1/(\lambda \delta))$: $\mu_0 = 0$ unless ``prior`` says otherwise.

  **Where this differs from the reference.** Wherever the reference
  ``ivon-opt`` 0.1.3 stays finite, the formulas above are its formulas (tested
  to float64 round-off). Where its float arithmetic overflows (gradients near
  the dtype's largest value, e.g. 1e30 in float32), the reference's
  $h$ becomes inf and then NaN a step later; here $\hat h$ and
  $h$ saturate at the dtype's largest finite value and $h + \delta$
  is floored at its smallest normal number, so that from finite gradients
  $h$, $\sigma$ and the step stay finite. Non-finite gradients
  still give a NaN step (so ``optax.apply_if_finite`` can skip it). Values the
  reference accepts but that cannot train are refused: ``beta1=1`` with
  ``debias=True`` (the reference divides 0 by 0 at step 1), and non-finite
  ``ess``, ``hess_init`` or ``weight_decay``. Integer and boolean leaves are
  neither perturbed nor updated, and complex leaves are refused.

  Args:
    ess: effective sample size $\lambda$ (> 0); usually the training-set
      size. Larger values shrink the posterior.
    hess_init: initial Hessian $h_0$ (> 0), typically 0.01 to 1. Sets
      the initial posterior spread $1/\sqrt{\lambda (h_0 + \delta)}$.
    beta1: momentum decay, in [0, 1].
    beta2: Hessian decay, in [0, 1]; keep it near 1 (0.99999).
    weight_decay: $\delta$ (>= 0), the prior precision per example.
    clip_radius: elementwise clip $c$ (> 0) of the preconditioned step.
    hess_approx: ``'price'`` (reparameterization estimator, the paper's) or
      ``'gradsq'`` (squared gradients).
    debias: divide the momentum by $1 - \beta_1^t$.
    rescale_lr: multiply the step by $h_0 + \delta$, so that the learning
      rate is comparable to SGD's.
    weight_decay_mask: a pytree of bools like the params, or a callable
      returning one; ``False`` leaves get $\delta = 0$ (in the step and in
      $\sigma$), like a parameter group with ``weight_decay=0``.
    state_dtype: dtype of the momentum and Hessian buffers. By default the
      param's dtype promoted to at least float32.
    axis_name: a mapped axis (``shard_map``/``pmap``) over which the sample
      averages of the gradient and of its Hessian statistic are averaged
      before the step, like the reference's ``sync=True``: with each device
      drawing its own noise, that is one Monte-Carlo sample per device.
    prior: a [`ivon_optax.GaussianPrior`][] with mean $\mu_0$ and
      precision $\delta$ (scalar, per leaf or per element), instead of
      ``weight_decay`` (leave that at its default). ``weight_decay_mask``
      still sets $\delta = 0$ on its ``False`` leaves. The state carries
      $\delta$ and $\mu_0$ (one more param-sized buffer when the
      mean is given, another when the precision is per element), so they are
      arguments, not constants, of a jitted update; build the state with an
      eager ``tx.init(params)``, as under ``jit`` they would be constants of
      the init.

  Returns:
    A `optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``params`` and ``noise=`` (one sample) or ``samples=`` (a
    [`ivon_optax.SampleAverage`][]).
  """
  check_hess_approx(hess_approx)
  _check_hyperparameters(
    ess=ess,
    hess_init=hess_init,
    beta1=beta1,
    beta2=beta2,
    weight_decay=weight_decay,
    clip_radius=clip_radius,
  )
  _check_beta1_for_debias(beta1, debias)
  _check_state_dtype(state_dtype)
  # Traced values (jit, inject_hyperparams) cannot be checked: an invalid one
  # turns into NaN here, which reaches sigma and the step.
  ess, hess_init, beta1, beta2, weight_decay, clip_radius = (
    _guarded(name, value)
    for name, value in (
      ("ess", ess),
      ("hess_init", hess_init),
      ("beta1", beta1),
      ("beta2", beta2),
      ("weight_decay", weight_decay),
      ("clip_radius", clip_radius),
    )
  )
  if prior is not None:
    _prior.check_prior_type(prior)
    _check_prior_without_weight_decay(weight_decay)
  has_prior_mean = prior is not None and prior.mean is not None

  def dtype_of(param):
    return checks.state_dtype(param, state_dtype)

  def init_fn(params):
    managed = lambda fn: lambda p, *rest: fn(p, *rest) if is_managed(p) else optax.MaskedNode()
    leaf_decay = _leaf_weight_decay(weight_decay, weight_decay_mask, params)
    prior_mean = ()
    if prior is not None:
      keep = _leaf_weight_decay(1.0, weight_decay_mask, params)
      leaf_decay, prior_mean = _prior.prior_buffers(prior, keep, params, dtype_of)
      if has_prior_mean:
        prior_mean = jax.tree.map(managed(lambda p, mu: mu), params, prior_mean)
    ess_dtype = jnp.promote_types(jnp.result_type(ess), jnp.float32)
    return IVONState(
      count=jnp.zeros([], jnp.int32),
      # `*_like` keeps each param's sharding: the buffers are laid out like the params.
      momentum=jax.tree.map(managed(lambda p: jnp.zeros_like(p, dtype_of(p))), params),
      hess=jax.tree.map(managed(lambda p: jnp.full_like(p, hess_init, dtype_of(p))), params),
      ess=jnp.asarray(ess, ess_dtype),
      weight_decay=jax.tree.map(
        managed(lambda p, d: jnp.asarray(d, dtype_of(p))), params, leaf_decay
      ),
      hess_init=jnp.asarray(hess_init, ess_dtype),
      prior_mean=prior_mean,
    )

  def update_fn(updates, state, params=None, *, noise=None, samples=None, **extra_args):
    del extra_args
    if params is None or (noise is None and samples is None):
      raise ValueError(_sample_message(hess_approx))
    if noise is not None and samples is not None:
      raise ValueError(_sample_message(hess_approx, both=True))
    _check_state(state, params)
    for name, value in dict(beta1=beta1, beta2=beta2, ess=ess).items():
      _check_hyperparameter_dtype(name, value)
    fix = "Pass the trees of the same params you sampled from."
    _trees.check_like_params("grads", updates, params, fix)
    _check_real("grads", updates)

    if samples is not None:
      hess_input = _sample_average_input(samples, hess_approx, params, fix)
      grads = samples_or_nan(samples, updates)
    else:
      _trees.check_like_params("noise", noise, params, fix)
      hess_input = _trees.map_unmasked(
        lambda h, g, n: _sample_hess_input(g, n, h.dtype, hess_approx), state.hess, updates, noise
      )
      grads = updates

    # The state's masked positions (optax.masked, integer leaves) drive every
    # map: whatever the caller passed there is dropped.
    grads, hess_input = (
      _trees.map_unmasked(lambda h, x: jnp.asarray(x, h.dtype), state.hess, tree)
      for tree in (grads, hess_input)
    )
    if axis_name is not None:
      grads, hess_input = _mean_over_axis((grads, hess_input), axis_name)

    # The next step's delta: from the weight_decay hyperparameter (which
    # inject_hyperparams may change), or as init set it from a prior.
    next_decay = (
      state.weight_decay
      if prior is not None
      else _trees.map_unmasked(
        lambda old, d: jnp.asarray(d, old.dtype),
        state.weight_decay,
        _leaf_weight_decay(weight_decay, weight_decay_mask, params),
      )
    )
    count = optax.safe_increment(state.count)
    momentum = _trees.map_unmasked(
      lambda m, g: _saturate(beta1 * m + (1.0 - beta1) * g), state.momentum, grads
    )
    precision = _trees.map_unmasked(precision_per_example, state.hess, state.weight_decay)
    if hess_approx == "price":
      estimate = _trees.map_unmasked(
        lambda nxg, prec: price_hess_estimate(nxg, prec, ess), hess_input, precision
      )
    else:
      estimate = _trees.map_unmasked(lambda gsq: gradsq_hess_estimate(gsq, ess), hess_input)
    hess = _trees.map_unmasked(
      lambda h, e, prec: new_hess(h, e, beta2, prec), state.hess, estimate, precision
    )
    momentum_hat = _debiased(momentum, beta1, count) if debias else momentum
    new_precision = _trees.map_unmasked(precision_per_example, hess, state.weight_decay)
    # Without a prior mean, mu_0 = 0 is a literal: no buffer in the state.
    prior_mean = state.prior_mean if has_prior_mean else jax.tree.map(lambda _: 0.0, hess)
    direction = _trees.map_unmasked(
      lambda g, p, prec, d, mu: preconditioned_step(
        g, jnp.asarray(p, prec.dtype), prec, d, clip_radius, mu
      ),
      momentum_hat,
      params,
      new_precision,
      state.weight_decay,
      prior_mean,
    )
    if rescale_lr:
      direction = _trees.map_unmasked(
        lambda u, d: (hess_init + d) * u, direction, state.weight_decay
      )
    # A non-finite gradient gives a NaN step (for optax.apply_if_finite to
    # skip), though the saturated state above stays finite.
    direction = _trees.map_unmasked(
      lambda u, g: jnp.where(jnp.isfinite(g), u, jnp.nan), direction, grads
    )

    new_state = IVONState(
      count=count,
      momentum=momentum,
      hess=hess,
      ess=jnp.asarray(ess, state.ess.dtype),
      weight_decay=next_decay,
      hess_init=jnp.asarray(hess_init, state.hess_init.dtype),
      prior_mean=state.prior_mean,
    )
    return _like_params(direction, state.hess, updates, params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sample_average_input(samples, hess_approx: str, params, fix: str):
  """The Hessian statistic a `SampleAverage` holds for ``hess_approx``."""
  if not isinstance(samples, SampleAverage):
    raise TypeError(f"`samples` must be an ivon_optax.SampleAverage, got {type(samples)}.")
  count = _concrete_value("samples.count", samples.count)
  if count is not None and count < 1:
    raise ValueError(
      "`samples` averages no sample (count 0): add samples with "
      "ivon_optax.add_sample before the update, or pass one sample's `noise=`."
    )
  hess_input = samples.noise_grads if hess_approx == "price" else samples.grads_squared
  if isinstance(hess_input, tuple) and not hess_input:
    raise ValueError(
      f"`samples` holds no statistic for hess_approx={hess_approx!r}: "
      f"build it with ivon_optax.init_sample_average(params, "
      f"hess_approx={hess_approx!r}) or average_samples(..., "
      f"hess_approx={hess_approx!r})."
    )
  _trees.check_like_params("samples", hess_input, params, fix)
  _check_real("samples", hess_input)
  return hess_input


def samples_or_nan(samples: SampleAverage, grads):
  """``grads``, or NaN if ``samples`` averages no sample (a traced count of 0)."""
  return jax.tree.map(lambda g: jnp.where(samples.count > 0, g, jnp.nan), grads)


def _like_params(direction, hess, updates, params):
  """The step in each param's dtype: zero for integer leaves, masked nodes kept."""

  def cast(h, u, g, p):
    if _trees.is_masked(h):
      return g if _trees.is_masked(g) else jnp.zeros_like(p)
    return _saturate(u.astype(jnp.result_type(p)))

  return jax.tree.map(cast, hess, direction, updates, params, is_leaf=_trees.is_masked)


def _sample_hess_input(grad, noise, dtype, hess_approx):
  """One sample's Hessian statistic: ``noise * grad`` (price) or ``grad**2`` (gradsq)."""
  grad = jnp.asarray(grad, dtype)
  return noise.astype(dtype) * grad if hess_approx == "price" else jnp.square(grad)


def _debiased(momentum, beta1, count):
  """``momentum / (1 - beta1**count)``, the correction computed in the momentum's dtype."""
  return jax.tree.map(
    lambda g: g / (1.0 - jnp.asarray(beta1, g.dtype) ** count.astype(g.dtype)), momentum
  )


def _mean_over_axis(trees, axis_name: str):
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


def ivon(
  learning_rate: optax.ScalarOrSchedule,
  ess: chex.Numeric,
  *,
  hess_init: chex.Numeric = 1.0,
  beta1: chex.Numeric = 0.9,
  beta2: chex.Numeric = 0.99999,
  weight_decay: chex.Numeric = 1e-4,
  clip_radius: chex.Numeric = float("inf"),
  hess_approx: HessApprox = "price",
  debias: bool = True,
  rescale_lr: bool = True,
  weight_decay_mask: WeightDecayMask = None,
  state_dtype: Any | None = None,
  axis_name: str | None = None,
  prior: GaussianPrior | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The IVON optimizer: variational learning at the cost of Adam.

  One step, with $\alpha_t$ = ``learning_rate`` (see
  [`scale_by_ivon`][ivon_optax.scale_by_ivon] for $u_t$):

  $$
  m_t = m_{t-1} - \alpha_t\, u_t
  $$

  The gradients passed to ``update`` must be taken at a posterior sample; the
  sample's noise goes along so that IVON can estimate the Hessian:

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ivon_optax
    >>> params = {"w": jnp.ones(3)}
    >>> tx = ivon_optax.ivon(learning_rate=0.1, ess=100.0)
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
    >>> grads = jax.grad(loss)(sampled)
    >>> updates, state = tx.update(grads, state, params, noise=noise)
    >>> params = optax.apply_updates(params, updates)
    >>> int(state[0].count)
    1

  Args:
    learning_rate: $\alpha$, a scalar or an optax schedule. With
      ``rescale_lr`` (default) it is on SGD's scale; the paper uses 0.1 to 2.5
      for vision models.
    ess: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    hess_init: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    beta1: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    beta2: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    weight_decay: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    clip_radius: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    hess_approx: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    debias: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    rescale_lr: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    weight_decay_mask: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    state_dtype: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    axis_name: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].
    prior: see [`scale_by_ivon`][ivon_optax.scale_by_ivon].

  The defaults are the reference ``ivon-opt``'s.

  Returns:
    A `optax.GradientTransformationExtraArgs`; its state's first element
    is the [`IVONState`][ivon_optax.IVONState].

  References:
    Shen et al., [Variational Learning is Effective for Large Deep
    Networks](https://arxiv.org/abs/2402.17641), ICML 2024.
  """
  if not callable(learning_rate):
    _check_hyperparameters(learning_rate=learning_rate)
  return optax.chain(
    scale_by_ivon(
      ess,
      hess_init=hess_init,
      beta1=beta1,
      beta2=beta2,
      weight_decay=weight_decay,
      clip_radius=clip_radius,
      hess_approx=hess_approx,
      debias=debias,
      rescale_lr=rescale_lr,
      weight_decay_mask=weight_decay_mask,
      state_dtype=state_dtype,
      axis_name=axis_name,
      prior=prior,
    ),
    _scale_by_learning_rate(learning_rate),
  )


def _scale_by_learning_rate(learning_rate) -> optax.GradientTransformation:
  """``optax.scale_by_learning_rate`` that saturates at the dtype's range.

  An invalid traced rate gives NaN.

  Its state is ``optax.scale_by_learning_rate``'s: ``EmptyState`` for a
  constant, ``ScaleByScheduleState`` for a schedule.
  """
  if callable(learning_rate):
    schedule = learning_rate
    guarded = lambda count: _guarded("learning_rate", jnp.asarray(schedule(count)))
  else:
    guarded = _guarded("learning_rate", learning_rate)
  inner = optax.scale_by_learning_rate(guarded)

  def update_fn(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    return jax.tree.map(_saturate, updates), state

  return optax.GradientTransformation(inner.init, update_fn)
