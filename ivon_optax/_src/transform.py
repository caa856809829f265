r"""IVON: the improved variational online Newton optimizer, as optax transforms.

IVON learns a diagonal Gaussian posterior :math:`\mathcal{N}(m, \sigma^2)` over
the weights. The mean :math:`m` is the model's parameters; the state holds the
momentum :math:`\bar g` and the Hessian estimate :math:`h`, from which
:math:`\sigma^2 = 1 / (\lambda (h + \delta))`.

Each step evaluates the gradient at a weight sample
:math:`\theta = m + \sigma \odot \epsilon` (see :func:`ivon_optax.sample_params`)
and passes that sample's noise :math:`\sigma \odot \epsilon` to ``update``.

References:
  Shen et al., `Variational Learning is Effective for Large Deep Networks
  <https://arxiv.org/abs/2402.17641>`_, ICML 2024 (Algorithm 1).
"""

import numbers
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
  """State of :func:`scale_by_ivon`: the variational posterior's parameters."""

  count: chex.Array  # shape=(), dtype=jnp.int32: steps taken.
  momentum: optax.Updates  # like params, state dtype: gradient momentum g_m.
  hess: optax.Updates  # like params, state dtype: Hessian estimate h.
  ess: chex.Array  # shape=(), state dtype: effective sample size lambda.
  weight_decay: optax.Updates  # one scalar per param leaf: delta (0 if masked).
  # With a prior: like params, state dtype: the prior mean mu_0; () without one.
  # (delta above is then the prior's precision, per leaf or per element.)
  prior_mean: optax.Updates = ()


# --- The update's formulas, one per line of Algorithm 1 ------------------------


def price_hess_estimate(noise_grads, hess, weight_decay, ess):
  r"""Price's-theorem Hessian estimate :math:`\hat h = \lambda\, \overline{\text{noise} \cdot g}\, (h + \delta)`.

  This equals :math:`g \epsilon / \sigma` for one sample (reparameterization
  trick), averaged over the Monte-Carlo samples.
  """
  return noise_grads * (hess + weight_decay) * ess


def gradsq_hess_estimate(grads_squared, ess):
  r"""Squared-gradient (Gauss-Newton-like) estimate :math:`\hat h = \lambda\, \overline{g^2}`."""
  return grads_squared * ess


def new_hess(hess, hess_estimate, beta2, weight_decay):
  r"""The Riemannian-gradient Hessian update.

  .. math::
    h \leftarrow \beta_2 h + (1-\beta_2)\hat h
      + \tfrac12 (1-\beta_2)^2 (h - \hat h)^2 / (h + \delta)

  The last term keeps :math:`h + \delta > 0` whatever :math:`\hat h` is. It is
  computed as :math:`d \cdot (d / (h + \delta))`, :math:`d = h - \hat h`, so that
  :math:`d^2` cannot overflow float32 where the result itself fits.
  """
  gap = hess - hess_estimate
  return (
    beta2 * hess
    + (1.0 - beta2) * hess_estimate
    + (0.5 * (1.0 - beta2) ** 2) * gap * (gap / (hess + weight_decay))
  )


def preconditioned_step(momentum_hat, param, hess, weight_decay, clip_radius, prior_mean=0.0):
  r"""The mean's step before the learning rate.

  :math:`\mathrm{clip}((\hat g + \delta (m - \mu_0)) / (h + \delta), c)`; without a
  prior mean :math:`\mu_0 = 0`.
  """
  step = (momentum_hat + weight_decay * (param - prior_mean)) / (hess + weight_decay)
  return jnp.clip(step, -clip_radius, clip_radius)


# --- Argument checks ------------------------------------------------------------


def _is_concrete(value) -> bool:
  return isinstance(value, numbers.Real) or (
    isinstance(value, (jax.Array,))
    and not isinstance(value, jax.core.Tracer)
    and jnp.ndim(value) == 0
  )


def _check_hyperparameters(**hyperparameters) -> None:
  """Applies the reference's rules to the hyperparameters that are numbers.

  Arrays traced under ``jit`` or ``inject_hyperparams`` cannot be checked here.
  """
  rules = {
    "learning_rate": (lambda v: v >= 0, "must be >= 0"),
    "ess": (lambda v: v > 0, "must be > 0 (use the training-set size)"),
    "hess_init": (lambda v: v > 0, "must be > 0 (typical: 0.01 to 1)"),
    "beta1": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "beta2": (lambda v: 0 <= v <= 1, "must be in [0, 1] (typical: 0.99999)"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "clip_radius": (lambda v: v > 0, "must be > 0 (float('inf') for no clipping)"),
  }
  for name, value in hyperparameters.items():
    if not _is_concrete(value):
      continue
    valid, rule = rules[name]
    if not bool(valid(float(value))):
      raise ValueError(f"Invalid `{name}`={float(value)!r}: it {rule}.")


def _check_hyperparameter_dtype(name: str, value) -> None:
  if jnp.result_type(value) in (jnp.bfloat16, jnp.float16):
    raise ValueError(
      f"`{name}` arrived as {jnp.result_type(value)}, which rounds IVON's "
      "hyperparameters (beta2=0.99999 becomes 1). Keep them in float32: "
      "optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)."
    )


def _leaf_weight_decay(weight_decay, mask: WeightDecayMask, params):
  """One weight-decay scalar per param leaf: ``weight_decay``, or 0 where masked out."""
  if mask is None:
    return jax.tree.map(lambda _: weight_decay, params)
  mask_tree = mask(params) if callable(mask) else mask
  return jax.tree.map(
    lambda m, p: jax.tree.map(lambda _: weight_decay if m else 0.0, p),
    mask_tree,
    params,
    is_leaf=lambda node: isinstance(node, bool),
  )


_DEFAULT_WEIGHT_DECAY = 1e-4  # weight_decay's default in scale_by_ivon and ivon.


def _check_prior_without_weight_decay(weight_decay) -> None:
  """Raises a ``ValueError`` if ``weight_decay`` was changed from its default next to a prior."""
  if not _is_concrete(weight_decay):
    return
  value = np.asarray(weight_decay)  # concrete: numpy compares without tracing
  if value != np.asarray(_DEFAULT_WEIGHT_DECAY, value.dtype):
    raise ValueError(
      f"Pass either `prior` or `weight_decay`, not both (got weight_decay="
      f"{float(value)!r}): the prior's precision is the weight decay. Use "
      "GaussianPrior(mean, precision=weight_decay)."
    )


def _missing_sample_message(hess_approx: str) -> str:
  statistic = "noise_grads" if hess_approx == "price" else "grads_squared"
  return (
    "IVON's update needs the Monte-Carlo sample its gradient was taken at: "
    "call `tx.update(grads, state, params, noise=noise)` with the `noise` "
    "returned by `ivon_optax.sample_params(key, state, params)`, or, for "
    "several samples, `tx.update(average.grads, state, params, samples=average)` "
    f"with an `ivon_optax.SampleAverage` holding `{statistic}` "
    f"(hess_approx={hess_approx!r})."
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

  With :math:`\lambda` = ``ess``, :math:`\delta` = ``weight_decay``, :math:`h_0`
  = ``hess_init``, :math:`c` = ``clip_radius`` and :math:`S` Monte-Carlo samples
  :math:`\theta_s = m + \text{noise}_s` with gradients :math:`g_s`:

  .. math::
    \bar g_t &= \beta_1 \bar g_{t-1} + (1-\beta_1)\, \tfrac1S \textstyle\sum_s g_s \\
    \hat h_t &= \lambda\, \tfrac1S \textstyle\sum_s \text{noise}_s g_s\, (h_{t-1} + \delta)
      \quad \text{(price; gradsq: } \lambda\, \tfrac1S \textstyle\sum_s g_s^2) \\
    h_t &= \beta_2 h_{t-1} + (1-\beta_2) \hat h_t
      + \tfrac12 (1-\beta_2)^2 (h_{t-1} - \hat h_t)^2 / (h_{t-1} + \delta) \\
    u_t &= (h_0 + \delta)\, \mathrm{clip}\!\left(
      \frac{\bar g_t / (1 - \beta_1^t) + \delta (m - \mu_0)}{h_t + \delta}, -c, c\right)

  The factor :math:`h_0 + \delta` is present when ``rescale_lr`` and the
  debiasing :math:`1 - \beta_1^t` when ``debias``. :func:`ivon` scales
  :math:`u_t` by :math:`-\alpha_t`. The prior is :math:`\mathcal{N}(\mu_0,
  1/(\lambda \delta))`: :math:`\mu_0 = 0` unless ``prior`` says otherwise.

  Args:
    ess: effective sample size :math:`\lambda` (> 0); usually the training-set
      size. Larger values shrink the posterior.
    hess_init: initial Hessian :math:`h_0` (> 0), typically 0.01 to 1. Sets
      the initial posterior spread :math:`1/\sqrt{\lambda (h_0 + \delta)}`.
    beta1: momentum decay, in [0, 1].
    beta2: Hessian decay, in [0, 1]; keep it near 1 (0.99999).
    weight_decay: :math:`\delta` (>= 0), the prior precision per example.
    clip_radius: elementwise clip :math:`c` (> 0) of the preconditioned step.
    hess_approx: ``'price'`` (reparameterization estimator, the paper's) or
      ``'gradsq'`` (squared gradients).
    debias: divide the momentum by :math:`1 - \beta_1^t`.
    rescale_lr: multiply the step by :math:`h_0 + \delta`, so that the learning
      rate is comparable to SGD's.
    weight_decay_mask: a pytree of bools like the params, or a callable
      returning one; ``False`` leaves get :math:`\delta = 0` (in the step and in
      :math:`\sigma`), like a parameter group with ``weight_decay=0``.
    state_dtype: dtype of the momentum and Hessian buffers. By default the
      param's dtype promoted to at least float32.
    axis_name: a mapped axis (``shard_map``/``pmap``) over which the sample
      averages of the gradient and of its Hessian statistic are averaged
      before the step, like the reference's ``sync=True``: with each device
      drawing its own noise, that is one Monte-Carlo sample per device.
    prior: a :class:`ivon_optax.GaussianPrior` with mean :math:`\mu_0` and
      precision :math:`\delta` (scalar, per leaf or per element), instead of
      ``weight_decay`` (leave that at its default). ``weight_decay_mask``
      still sets :math:`\delta = 0` on its ``False`` leaves. The state carries
      :math:`\delta` and :math:`\mu_0` (one more param-sized buffer when the
      mean is given, another when the precision is per element), so they are
      arguments, not constants, of a jitted update; build the state with an
      eager ``tx.init(params)``, as under ``jit`` they would be constants of
      the init.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``params`` and ``noise=`` (one sample) or ``samples=`` (a
    :class:`ivon_optax.SampleAverage`).
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
  if prior is not None:
    _prior.check_prior_type(prior)
    _check_prior_without_weight_decay(weight_decay)
  has_prior_mean = prior is not None and prior.mean is not None

  def dtype_of(param):
    return checks.state_dtype(param, state_dtype)

  def init_fn(params):
    leaf_decay = _leaf_weight_decay(weight_decay, weight_decay_mask, params)
    prior_mean = ()
    if prior is not None:
      keep = _leaf_weight_decay(1.0, weight_decay_mask, params)
      leaf_decay, prior_mean = _prior.prior_buffers(prior, keep, params, dtype_of)
    return IVONState(
      count=jnp.zeros([], jnp.int32),
      # `*_like` keeps each param's sharding: the buffers are laid out like the params.
      momentum=jax.tree.map(lambda p: jnp.zeros_like(p, dtype_of(p)), params),
      hess=jax.tree.map(lambda p: jnp.full_like(p, hess_init, dtype_of(p)), params),
      ess=jnp.asarray(ess, jnp.promote_types(jnp.result_type(ess), jnp.float32)),
      weight_decay=jax.tree.map(lambda d, p: jnp.asarray(d, dtype_of(p)), leaf_decay, params),
      prior_mean=prior_mean,
    )

  def update_fn(updates, state, params=None, *, noise=None, samples=None, **extra_args):
    del extra_args
    if params is None or (noise is None) == (samples is None):
      raise ValueError(_missing_sample_message(hess_approx))
    for name, value in dict(beta1=beta1, beta2=beta2, ess=ess).items():
      _check_hyperparameter_dtype(name, value)
    fix = "Pass the trees of the same params you sampled from."
    _trees.check_like_params("grads", updates, params, fix)

    if samples is not None:
      if not isinstance(samples, SampleAverage):
        raise TypeError(f"`samples` must be an ivon_optax.SampleAverage, got {type(samples)}.")
      hess_input = samples.noise_grads if hess_approx == "price" else samples.grads_squared
      if isinstance(hess_input, tuple) and not hess_input:
        raise ValueError(
          f"`samples` holds no statistic for hess_approx={hess_approx!r}: "
          f"build it with ivon_optax.init_sample_average(params, "
          f"hess_approx={hess_approx!r}) or average_samples(..., "
          f"hess_approx={hess_approx!r})."
        )
      _trees.check_like_params("samples", hess_input, params, fix)
    else:
      _trees.check_like_params("noise", noise, params, fix)
      hess_input = _trees.map_unmasked(
        lambda g, n, h: _sample_hess_input(g, n, h.dtype, hess_approx), updates, noise, state.hess
      )

    # Masked positions are dropped here, whatever the caller passed there.
    hess_input = _trees.map_unmasked(lambda _, h: h, updates, hess_input)
    grads, hess_input = (
      jax.tree.map(lambda x, h: x.astype(h.dtype), tree, state.hess)
      for tree in (updates, hess_input)
    )
    if axis_name is not None:
      grads, hess_input = _mean_over_axis((grads, hess_input), axis_name)

    decay = state.weight_decay
    count = optax.safe_increment(state.count)
    momentum = optax.tree.update_moment(grads, state.momentum, beta1, 1)
    if hess_approx == "price":
      estimate = jax.tree.map(
        lambda nxg, h, d: price_hess_estimate(nxg, h, d, ess), hess_input, state.hess, decay
      )
    else:
      estimate = jax.tree.map(lambda gsq: gradsq_hess_estimate(gsq, ess), hess_input)
    hess = jax.tree.map(lambda h, e, d: new_hess(h, e, beta2, d), state.hess, estimate, decay)
    momentum_hat = _debiased(momentum, beta1, count) if debias else momentum
    # Without a prior mean, mu_0 = 0 is a literal: no buffer in the state.
    prior_mean = state.prior_mean if has_prior_mean else jax.tree.map(lambda _: 0.0, hess)
    direction = jax.tree.map(
      lambda g, p, h, d, mu: preconditioned_step(g, p.astype(h.dtype), h, d, clip_radius, mu),
      momentum_hat,
      params,
      hess,
      decay,
      prior_mean,
    )
    if rescale_lr:
      direction = jax.tree.map(lambda u, d: (hess_init + d) * u, direction, decay)

    new_state = IVONState(
      count=count,
      momentum=momentum,
      hess=hess,
      ess=jnp.asarray(ess, state.ess.dtype),
      # A prior's delta stays as init set it: it is data, not a hyperparameter.
      weight_decay=decay
      if prior is not None
      else jax.tree.map(
        lambda d, old: jnp.asarray(d, old.dtype),
        _leaf_weight_decay(weight_decay, weight_decay_mask, params),
        decay,
      ),
      prior_mean=state.prior_mean,
    )
    return optax.tree.cast_like(direction, params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sample_hess_input(grad, noise, dtype, hess_approx):
  """One sample's Hessian statistic: ``noise * grad`` (price) or ``grad**2`` (gradsq)."""
  grad = grad.astype(dtype)
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

  One step, with :math:`\alpha_t` = ``learning_rate`` (see
  :func:`scale_by_ivon` for :math:`u_t`):

  .. math::
    m_t = m_{t-1} - \alpha_t\, u_t

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
    learning_rate: :math:`\alpha`, a scalar or an optax schedule. With
      ``rescale_lr`` (default) it is on SGD's scale; the paper uses 0.1 to 2.5
      for vision models.
    ess, hess_init, beta1, beta2, weight_decay, clip_radius, hess_approx,
    debias, rescale_lr, weight_decay_mask, state_dtype, axis_name, prior: see
      :func:`scale_by_ivon`. Defaults are the reference ``ivon-opt``'s.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; its state's first element
    is the :class:`IVONState`.

  References:
    Shen et al., `Variational Learning is Effective for Large Deep Networks
    <https://arxiv.org/abs/2402.17641>`_, ICML 2024.
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
    optax.scale_by_learning_rate(learning_rate),
  )
