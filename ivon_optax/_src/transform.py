r"""IVON as optax transforms: [`scale_by_ivon`][ivon_optax.scale_by_ivon] and its alias `ivon`.

The formulas are in ``algorithm``; this module checks the arguments, builds
the state, and applies the formulas leaf by leaf in one pass.

**One home per value.** The state holds the posterior: the learned momentum
and Hessian, and $\lambda$ (``ess``), $h_0$ (``hess_init``) and the prior
$\delta, \mu_0$ (``weight_decay``, ``weight_decay_mask``, ``prior``), which
``init`` sets from the transform's arguments and ``update`` reads from the
state only. ``update`` compares those arguments with the state and refuses a
state made under other ones: it raises a ``ValueError`` that names the
mismatch where the state is concrete, and gives a NaN step under ``jit``.
The step's own hyperparameters (the learning rate, $\beta_1$, $\beta_2$,
$c$) live in the transform alone, so that ``optax.inject_hyperparams`` can
change them between steps.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import algorithm
from ivon_optax._src import arguments
from ivon_optax._src import checks
from ivon_optax._src import prior as _prior
from ivon_optax._src import trees as _trees
from ivon_optax._src.algorithm import IVONState
from ivon_optax._src.arguments import WeightDecayMask
from ivon_optax._src.checks import HessApprox
from ivon_optax._src.prior import GaussianPrior

DEFAULT_WEIGHT_DECAY = 1e-4  # the reference's, used when neither weight_decay nor prior is given

# --- The transforms ---------------------------------------------------------------


def scale_by_ivon(
  ess: chex.Numeric,
  *,
  hess_init: chex.Numeric = 1.0,
  beta1: chex.Numeric = 0.9,
  beta2: chex.Numeric = 0.99999,
  weight_decay: chex.Numeric | None = None,
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

  **The state holds the posterior.** ``ess``, ``hess_init``,
  ``weight_decay``, ``weight_decay_mask`` and ``prior`` set the state in
  ``init``; ``update`` reads them from the state and refuses a state made
  with other values (a ``ValueError`` naming the mismatch, or a NaN step
  under ``jit``), so that a restored or handed-over state never mixes two
  configurations. ``beta1``, ``beta2`` and ``clip_radius`` act on every
  step and may change between steps (``optax.inject_hyperparams``).

  **Where this differs from the reference.** Wherever the reference
  ``ivon-opt`` 0.1.3 stays finite, the formulas above are its formulas (tested
  to float64 round-off). Where its float arithmetic overflows (gradients near
  the dtype's largest value, e.g. 1e30 in float32), the reference's
  $h$ becomes inf and then NaN a step later; here $\hat h$ and
  $h$ saturate at the dtype's largest finite value and $h + \delta$
  is floored at its smallest normal number, so that from finite gradients
  $h$, $\sigma$ and the step stay finite. A non-finite gradient
  gives a NaN momentum and step (``optax.apply_if_finite`` skips the step and
  keeps the old state). Values the
  reference accepts but that cannot train are refused: ``beta1=1`` with
  ``debias=True`` (the reference divides 0 by 0 at step 1), and non-finite
  ``ess``, ``hess_init`` or ``weight_decay``. Integer and boolean leaves are
  neither perturbed nor updated, and complex leaves are refused.

  Args:
    ess: effective sample size $\lambda$ (> 0); usually the training-set
      size. Larger values shrink the posterior.
    hess_init: initial Hessian $h_0$ (> 0). Sets the initial posterior
      spread $1/\sqrt{\lambda (h_0 + \delta)}$.
    beta1: momentum decay, in [0, 1].
    beta2: Hessian decay, in [0, 1]. $h$ remembers about $1/(1-\beta_2)$
      steps: keep that a small fraction of the run so that the data, not
      $h_0$, sets $h$.
    weight_decay: $\delta$ (>= 0), the prior precision per example;
      ``None`` (not given) means 1e-4, the reference's default, unless
      ``prior`` is given.
    clip_radius: elementwise clip $c$ (> 0) of the preconditioned step.
    hess_approx: ``'price'`` (reparameterization estimator, the paper's) or
      ``'gradsq'`` (squared gradients).
    debias: divide the momentum by $1 - \beta_1^t$.
    rescale_lr: multiply the step by $h_0 + \delta$, so that the learning
      rate is comparable to SGD's. The step is then $\alpha (h_0 + \delta)$
      times a Newton step, and where the data do not pin a weight (its $h$
      decays towards 0) each step multiplies $m - \mu_0$ by
      $1 - \alpha (h_0 + \delta)$: [`ivon`][ivon_optax.ivon] refuses a
      learning rate with $\alpha (h_0 + \max\delta) \ge 2$, where that
      grows without bound (a ``ValueError``, or a NaN step for a traced or
      scheduled rate). A prior from
      [`posterior_as_prior`][ivon_optax.posterior_as_prior] has $\delta$ far
      above $h_0$: use ``rescale_lr=False`` with it.
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
      ``weight_decay``. ``weight_decay_mask`` still sets $\delta = 0$ on
      its ``False`` leaves. The state carries $\delta$ and $\mu_0$, so
      they are arguments, not constants, of a jitted update; build the state
      with an eager ``tx.init(params)``.

  Returns:
    A `optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``params`` and ``noise=`` (one sample) or ``samples=`` (a
    [`ivon_optax.SampleAverage`][]).
  """
  checks.check_hess_approx(hess_approx)
  if prior is not None:
    _prior.check_prior_type(prior)
    if weight_decay is not None:
      raise ValueError(
        f"Pass either `prior` or `weight_decay`, not both (got weight_decay={weight_decay!r}): "
        "the prior's precision is the weight decay. Use "
        "GaussianPrior(mean, precision=weight_decay)."
      )
  elif weight_decay is None:
    weight_decay = DEFAULT_WEIGHT_DECAY
  else:
    weight_decay = checks.guard("weight_decay", weight_decay)
  ess, hess_init, beta1, beta2, clip_radius = (
    checks.guard(name, value)
    for name, value in (
      ("ess", ess),
      ("hess_init", hess_init),
      ("beta1", beta1),
      ("beta2", beta2),
      ("clip_radius", clip_radius),
    )
  )
  arguments.check_beta1_for_debias(beta1, debias)
  arguments.check_state_dtype(state_dtype)
  prior_id = _prior.fingerprint(prior)
  has_prior_mean = prior is not None and prior.mean is not None

  def dtype_of(param):
    return checks.state_dtype(param, state_dtype)

  def managed(fn):
    return lambda p, *rest: fn(p, *rest) if arguments.is_managed(p) else optax.MaskedNode()

  def init_fn(params):
    keep = arguments.keep(weight_decay_mask, params)
    scalar_dtype = jnp.promote_types(jnp.result_type(ess), jnp.float32)
    return IVONState(
      count=jnp.zeros([], jnp.int32),
      # `*_like` keeps each param's sharding: the buffers are laid out like the params.
      momentum=jax.tree.map(managed(lambda p: jnp.zeros_like(p, dtype_of(p))), params),
      hess=jax.tree.map(managed(lambda p: jnp.full_like(p, hess_init, dtype_of(p))), params),
      ess=jnp.asarray(ess, scalar_dtype),
      hess_init=jnp.asarray(hess_init, scalar_dtype),
      hess_init_weight=jnp.ones([], scalar_dtype),
      prior_precision=jax.tree.map(
        managed(lambda p, delta: delta),
        params,
        _prior.prior_precision(prior, weight_decay, keep, params, dtype_of),
      ),
      prior_mean=(
        jax.tree.map(managed(lambda p, mu: mu), params, _prior.prior_mean(prior, params, dtype_of))
        if has_prior_mean
        else ()
      ),
      prior_id=jnp.asarray(prior_id or 0, jnp.int32),
    )

  def update_fn(updates, state, params=None, *, noise=None, samples=None, **extra_args):
    del extra_args
    if params is None or (noise is None and samples is None):
      raise ValueError(arguments.sample_message(hess_approx))
    if noise is not None and samples is not None:
      raise ValueError(arguments.sample_message(hess_approx, both=True))
    arguments.check_state(state, params)
    for name, value in dict(beta1=beta1, beta2=beta2).items():
      arguments.check_hyperparameter_dtype(name, value)
    fix = "Pass the trees of the same params you sampled from."
    _trees.check_like_params("grads", updates, params, fix)
    arguments.check_real("grads", updates)
    if samples is not None:
      statistic = arguments.sample_average_statistic(samples, hess_approx, params, fix)
      grads = jax.tree.map(lambda g: checks.nan_unless(samples.count > 0, g), updates)
    else:
      _trees.check_like_params("noise", noise, params, fix)
      statistic = _trees.map_unmasked(
        lambda h, g, n: _one_sample_statistic(g, n, h.dtype, hess_approx),
        state.hess,
        updates,
        noise,
      )
      grads = updates
    # The state's masked positions (optax.masked, integer leaves) drive every
    # map: whatever the caller passed there is dropped.
    grads, statistic = (
      _trees.map_unmasked(lambda h, x: jnp.asarray(x, h.dtype), state.hess, tree)
      for tree in (grads, statistic)
    )
    if axis_name is not None:
      grads, statistic = arguments.mean_over_axis((grads, statistic), axis_name)
    ok = arguments.consistent(
      state,
      params,
      ess=ess,
      hess_init=hess_init,
      prior=prior,
      prior_id=prior_id,
      weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask,
    )
    count = optax.safe_increment(state.count)
    prior_mean = state.prior_mean if has_prior_mean else jax.tree.map(lambda _: 0.0, state.hess)

    def step(momentum, hess, grad, stat, param, delta, mu):
      ess_, hess_init_ = (jnp.asarray(x, hess.dtype) for x in (state.ess, state.hess_init))
      # A non-finite gradient, or a state made under other posterior arguments
      # (`ok`), makes the momentum and so the step NaN: optax.apply_if_finite then
      # skips the step and keeps the old state.
      momentum = jnp.where(
        ok & jnp.isfinite(grad), algorithm.new_momentum(momentum, grad, beta1), jnp.nan
      )
      precision = algorithm.precision_per_example(hess, delta)
      if hess_approx == "price":
        estimate = algorithm.price_estimate(stat, precision, ess_)
      else:
        estimate = algorithm.gradsq_estimate(stat, ess_)
      hess = algorithm.new_hess(hess, estimate, beta2, precision)
      momentum_hat = algorithm.debiased(momentum, beta1, count) if debias else momentum
      direction = algorithm.mean_step(
        momentum_hat,
        jnp.asarray(param, hess.dtype),
        algorithm.precision_per_example(hess, delta),
        delta,
        mu,
        clip_radius,
      )
      if rescale_lr:
        direction = algorithm.rescaled(direction, hess_init_, delta)
      return momentum, hess, algorithm.saturate(direction.astype(jnp.result_type(param)))

    new = _trees.map_unmasked(
      lambda m, *rest: step(m, *rest),
      state.momentum,
      state.hess,
      grads,
      statistic,
      params,
      state.prior_precision,
      prior_mean,
    )
    momentum, hess, direction = _trees.unzip3(new, state.momentum)
    new_state = state._replace(
      count=count,
      momentum=momentum,
      hess=hess,
      hess_init_weight=state.hess_init_weight * jnp.asarray(beta2, state.hess_init_weight.dtype),
    )
    return _trees.place_like_params(direction, state.hess, updates, params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _one_sample_statistic(grad, noise, dtype, hess_approx):
  """One sample's Hessian statistic: ``noise * grad`` (price) or ``grad**2`` (gradsq)."""
  grad = jnp.asarray(grad, dtype)
  return noise.astype(dtype) * grad if hess_approx == "price" else jnp.square(grad)


def ivon(
  learning_rate: optax.ScalarOrSchedule,
  ess: chex.Numeric,
  *,
  hess_init: chex.Numeric = 1.0,
  beta1: chex.Numeric = 0.9,
  beta2: chex.Numeric = 0.99999,
  weight_decay: chex.Numeric | None = None,
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

  Each step takes the gradient at a weight sample $\theta = m + \sigma\odot\epsilon$
  from the posterior $\mathcal{N}(m, \sigma^2)$,
  $\sigma = 1/\sqrt{\lambda (h + \delta)}$, and moves the mean $m$ by
  $-\alpha_t u_t$:

  $$
  \begin{aligned}
  \bar g_t &= \beta_1 \bar g_{t-1} + (1-\beta_1)\, g(\theta) \\
  h_t &= \beta_2 h_{t-1} + (1-\beta_2) \hat h_t
    + \tfrac12 (1-\beta_2)^2 (h_{t-1} - \hat h_t)^2 / (h_{t-1} + \delta),
    \qquad \hat h_t = g(\theta)\, \epsilon / \sigma \\
  m_t &= m_{t-1} - \alpha_t (h_0 + \delta)\,
    \frac{\bar g_t / (1 - \beta_1^t) + \delta m_{t-1}}{h_t + \delta}
  \end{aligned}
  $$

  (see [`scale_by_ivon`][ivon_optax.scale_by_ivon] for clipping, priors and several samples).
  The gradient passed to ``update`` must be taken at a posterior sample, whose
  noise $\sigma\odot\epsilon$ goes along so that IVON can estimate the Hessian;
  [`value_and_grad_at_sample`][ivon_optax.value_and_grad_at_sample] returns both:

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ivon_optax
    >>> params = {"w": jnp.ones(3)}
    >>> tx = ivon_optax.ivon(learning_rate=0.1, ess=100.0)
    >>> state = tx.init(params)
    >>> loss_fn = lambda p: jnp.sum(p["w"] ** 2)
    >>> grad_fn = ivon_optax.value_and_grad_at_sample(loss_fn)
    >>> loss, grads, noise = grad_fn(jax.random.key(0), state, params)
    >>> updates, state = tx.update(grads, state, params, noise=noise)
    >>> params = optax.apply_updates(params, updates)
    >>> int(state[0].count)
    1

  Args:
    learning_rate: $\alpha$, a scalar or an optax schedule. With
      ``rescale_lr`` (default) it is on SGD's scale; the paper uses 0.1 to 2.5
      for vision models. With ``rescale_lr`` it must stay below
      $2 / (h_0 + \max\delta)$, the limit beyond which the rescaled step
      diverges (see ``rescale_lr`` of
      [`scale_by_ivon`][ivon_optax.scale_by_ivon]).
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
    checks.guard("learning_rate", learning_rate)
  direction = scale_by_ivon(
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
  )
  step_factor = None
  if rescale_lr:  # the arguments are valid: scale_by_ivon checked them
    if prior is None and weight_decay is None:
      weight_decay = DEFAULT_WEIGHT_DECAY
    step_factor = arguments.largest_step_factor(
      checks.guard("hess_init", hess_init),
      None if prior is not None else checks.guard("weight_decay", weight_decay),
      prior,
    )
  return optax.chain(direction, _scale_by_learning_rate(learning_rate, step_factor))


def _scale_by_learning_rate(learning_rate, step_factor=None) -> optax.GradientTransformation:
  """``optax.scale_by_learning_rate`` that saturates at the dtype's range.

  An invalid traced rate gives NaN, and so does a rate at or above the
  stability limit ``2 / step_factor`` of the rescaled step
  (`arguments.stable_learning_rate`). Its state is
  ``optax.scale_by_learning_rate``'s: ``EmptyState`` for a constant,
  ``ScaleByScheduleState`` for a schedule.
  """

  def checked(value):
    return arguments.stable_learning_rate(checks.guard("learning_rate", value), step_factor)

  if callable(learning_rate):
    schedule = learning_rate
    rate = lambda count: checked(jnp.asarray(schedule(count)))
  else:
    rate = checked(learning_rate)
  inner = optax.scale_by_learning_rate(rate)

  def update_fn(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    return jax.tree.map(algorithm.saturate, updates), state

  return optax.GradientTransformation(inner.init, update_fn)
