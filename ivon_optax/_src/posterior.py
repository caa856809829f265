r"""IVON's posterior $\mathcal{N}(m, \sigma^2)$: find it, read it, draw from it, hand it on.

The functions here take the optimizer state, find the [`IVONState`][ivon_optax.IVONState] in it
(inside ``chain``, ``inject_hyperparams``, ``MultiSteps``, ``masked``,
``partition``, ...) and read $\sigma = 1/\sqrt{\lambda (h + \delta)}$
from it. Leaves IVON does not manage (masked out, with full or prefix masks,
or integer and boolean leaves) get zero noise and zero precision.
"""

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import algorithm
from ivon_optax._src import trees as _trees
from ivon_optax._src.algorithm import IVONState
from ivon_optax._src.checks import check_key
from ivon_optax._src.checks import concrete_number
from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import require
from ivon_optax._src.counter_normal import counter_normal
from ivon_optax._src.counter_normal import counter_normal_tree
from ivon_optax._src.prior import GaussianPrior

Sampler = Callable[[chex.PRNGKey, Any, Any], chex.Array]


def _is_ivon(node: Any) -> bool:
  return isinstance(node, IVONState)


def find_ivon_state(state: optax.OptState) -> IVONState:
  """The single [`IVONState`][ivon_optax.IVONState] inside any optax state.

  Raises:
    ValueError: if ``state`` holds no IVON state, or more than one.
  """
  found = [node for node in jax.tree.leaves(state, is_leaf=_is_ivon) if _is_ivon(node)]
  if len(found) != 1:
    what = "no IVON state" if not found else f"{len(found)} IVON states"
    raise ValueError(
      f"`state` holds {what}; pass the state of an optimizer that contains "
      "exactly one ivon_optax.ivon / scale_by_ivon (tx.init(params))."
    )
  return found[0]


def check_one_posterior(ivon_state: IVONState) -> None:
  """Raises a ``ValueError`` if ``ivon_state`` is a stack of states (vmapped ensemble members).

  Its scalars would broadcast against the params' trailing axes instead of
  the members'. Under ``jax.vmap`` each member's state is one state.
  """
  if jnp.ndim(ivon_state.count) != 0:
    raise ValueError(
      f"`state` holds a stack of IVON states (leading shape {jnp.shape(ivon_state.count)}, "
      "e.g. ensemble members from jax.vmap(tx.init)), where one is expected. Map over the "
      "members: jax.vmap(fn)(states, params), e.g. jax.vmap(ivon_optax.posterior_std); "
      "ivon_optax.ensemble.sample_ensemble_outputs pools the members' samples and "
      "ivon_optax.diagnostics reports per member."
    )


def aligned_state(state: optax.OptState, params: optax.Params) -> IVONState:
  """The `IVONState` in ``state``, its per-parameter trees lined up with ``params``.

  Prefix masks of ``optax.masked``/``optax.partition`` leave one ``MaskedNode``
  for a whole subtree; it is expanded here.

  Raises:
    ValueError: if ``state`` holds no IVON state, two, or a stack of them, or
      if its buffers do not line up with ``params``.
  """
  ivon_state = find_ivon_state(state)
  check_one_posterior(ivon_state)
  hess = _trees.expand_masked(ivon_state.hess, params)
  fix = "Pass the params this optimizer state was created for."
  _trees.check_like_params("params", params, hess, fix, like="the IVON state's buffers")
  return ivon_state._replace(
    hess=hess,
    momentum=_trees.expand_masked(ivon_state.momentum, params),
    prior_precision=_trees.expand_masked(ivon_state.prior_precision, params),
  )


def total_precision(ivon_state: IVONState, hess: chex.Array, prior_precision: chex.Array):
  r"""$\lambda (h + \delta)$ of one leaf, floored like the update's $h + \delta$."""
  per_example = algorithm.precision_per_example(hess, prior_precision)
  return jnp.maximum(ivon_state.ess.astype(hess.dtype) * per_example, jnp.finfo(hess.dtype).tiny)


def posterior_precision(state: optax.OptState, params: optax.Params) -> optax.Params:
  r"""IVON's posterior precision $\lambda (h + \delta) = 1/\sigma^2$, like ``params``.

  Leaves that IVON does not manage (masked out, or integer and boolean
  leaves) get precision 0 (no information).

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(2)}
    >>> state = ivon_optax.ivon(0.1, ess=10.0, hess_init=0.5, weight_decay=0.0).init(params)
    >>> ivon_optax.posterior_precision(state, params)["w"]
    Array([5., 5.], dtype=float32)

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][].
    params: the params that state was created for.

  Returns:
    A pytree like ``params``, in IVON's state dtype (float32 at least).
  """
  ivon_state = aligned_state(state, params)
  return jax.tree.map(
    lambda h, d, p: (
      jnp.zeros(jnp.shape(p), jnp.float32)
      if _trees.is_masked(h)
      else total_precision(ivon_state, h, d)
    ),
    ivon_state.hess,
    ivon_state.prior_precision,
    params,
    is_leaf=_trees.is_masked,
  )


def posterior_std(state: optax.OptState, params: optax.Params) -> optax.Params:
  r"""The posterior standard deviation $\sigma = 1/\sqrt{\lambda (h + \delta)}$.

  Leaves that IVON does not manage get 0. Each leaf has its param's shape and
  IVON's state dtype (float32 at least).

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(2)}
    >>> state = ivon_optax.ivon(0.1, ess=4.0, hess_init=1.0, weight_decay=0.0).init(params)
    >>> ivon_optax.posterior_std(state, params)["w"]
    Array([0.5, 0.5], dtype=float32)
  """
  # Unmanaged leaves have precision 0 and get 0; a NaN precision stays NaN.
  return jax.tree.map(
    lambda precision: jnp.where(precision == 0, 0.0, jax.lax.rsqrt(precision)),
    posterior_precision(state, params),
  )


def posterior(state: optax.OptState, params: optax.Params) -> tuple[optax.Params, optax.Params]:
  r"""IVON's posterior $\mathcal{N}(m, \sigma^2)$ as ``(mean, std)`` pytrees.

  ``mean`` is ``params``; ``std`` is [`posterior_std`][ivon_optax.posterior_std].
  """
  return params, posterior_std(state, params)


def sample_params(
  key: chex.PRNGKey,
  state: optax.OptState,
  params: optax.Params,
  *,
  sampler: Sampler = counter_normal,
) -> tuple[optax.Params, optax.Params]:
  r"""Draws one weight sample $\theta = m + \sigma \odot \epsilon$, $\epsilon \sim N(0, I)$.

  **With** ``optax.MultiSteps``, which averages the gradients of $k$
  micro-steps and hands IVON the last micro-step's ``noise``, every
  micro-step of an optimizer step must use the same sample: drawing a new one
  would pair one sample's noise with the average gradient of $k$ samples and
  make $h$ about $k$ times too small. So the sample is drawn at the first
  micro-step only: between micro-steps (the ``MultiSteps`` state's
  ``mini_step`` > 0) this raises a ``ValueError``, or, traced, gives NaN.
  Keep the first micro-step's ``sampled`` params and ``noise`` for the rest;
  for several samples per step use [`ivon_optax.add_sample`][] instead.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(3)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0).init(params)
    >>> sampled, noise = ivon_optax.sample_params(jax.random.key(0), state, params)
    >>> bool(jnp.allclose(sampled["w"], params["w"] + noise["w"]))
    True

  Args:
    key: a JAX PRNG key (typed or legacy ``uint32``). Derive a fresh one per
      step, e.g. ``jax.random.fold_in(base_key, step)``.
    state: an optax state containing exactly one [`IVONState`][ivon_optax.IVONState].
    params: the mean parameters.
    sampler: draws standard normals, ``sampler(key, shape, dtype)``; by default
      [`ivon_optax.random.counter_normal`][], a counter-based generator that is
      several times faster than ``jax.random.normal`` on CPU. Pass
      ``sampler=jax.random.normal`` for JAX's own generator.

  Returns:
    ``(sampled_params, noise)``, both like ``params`` and in its dtypes, with
    ``sampled_params = params + noise``. Pass ``noise`` to ``tx.update``.
  """
  return draw(key, state, params, sampler=sampler, valid=_at_first_micro_step(state))


def _at_first_micro_step(state: optax.OptState) -> chex.Array | None:
  """Whether every ``optax.MultiSteps`` around IVON is at its first micro-step; raises if not.

  ``None`` without ``MultiSteps``. A scalar comparison per ``MultiSteps``
  state: no pass over the params.
  """
  mini_steps = [
    node.mini_step
    for node in jax.tree.leaves(state, is_leaf=_is_multi_steps)
    if _is_multi_steps(node)
  ]
  if not mini_steps:
    return None
  mini_steps = jnp.stack([jnp.asarray(step) for step in mini_steps])
  return jnp.all(
    require(
      mini_steps == 0,
      mini_steps,
      "`state` is inside optax.MultiSteps between micro-steps (mini_step {}): a new weight "
      "sample here pairs one sample's noise with the average gradient of several in IVON's "
      "update, which makes h too small by the number of micro-steps. Draw the sample once "
      "per optimizer step, at the first micro-step, and pass the same sampled params and "
      "`noise` to every micro-step (or use ivon_optax.add_sample for several samples).",
    )
  )


def _is_multi_steps(node: Any) -> bool:
  return isinstance(node, optax.MultiStepsState)


def draw(
  key: chex.PRNGKey,
  state: optax.OptState,
  params: optax.Params,
  *,
  sampler: Sampler = counter_normal,
  valid: chex.Array | None = None,
) -> tuple[optax.Params, optax.Params]:
  r"""[`sample_params`][ivon_optax.sample_params] for prediction: any micro-step will do.

  Between the micro-steps of ``optax.MultiSteps`` the posterior does not
  change, so predictions may sample there. ``valid`` false makes the noise
  NaN, through $\lambda$ (a scalar).
  """
  check_key(key)
  ivon_state = aligned_state(state, params)
  if valid is not None:
    ivon_state = ivon_state._replace(ess=nan_unless(valid, ivon_state.ess))
  if sampler is counter_normal:
    return _sample_counter_normal(key, ivon_state, params)
  return _sample(key, ivon_state, params, sampler)


def _sample(
  key: chex.PRNGKey, ivon_state: IVONState, params: optax.Params, sampler: Sampler
) -> tuple[optax.Params, optax.Params]:
  r"""$(m + \sigma \odot \epsilon,\ \sigma \odot \epsilon)$ from a checked, aligned state."""
  if sampler is counter_normal:  # one key derivation for all leaves
    normals = counter_normal_tree(key, ivon_state.hess)
  else:
    normals = optax.tree.random_like(key, ivon_state.hess, sampler=sampler)

  def noise_of(h, delta, eps, param):
    if _trees.is_masked(h):
      return jnp.zeros_like(param)
    sigma = jax.lax.rsqrt(total_precision(ivon_state, h, delta))
    return (sigma * eps).astype(jnp.result_type(param))

  noise = jax.tree.map(
    noise_of, ivon_state.hess, ivon_state.prior_precision, normals, params, is_leaf=_trees.is_masked
  )
  sampled = jax.tree.map(jnp.add, params, noise)
  return sampled, noise


# The default sampler's draw as one compiled program, so that an eager call (or a
# ``vmap`` of one) does not compile each operation of the generator on its own;
# inside ``jit`` it is inlined. A sampler of the caller's runs as written.
_sample_counter_normal = jax.jit(functools.partial(_sample, sampler=counter_normal))


def value_and_grad_at_sample(
  fun: Callable[..., Any], *, has_aux: bool = False, sampler: Sampler = counter_normal
) -> Callable[..., tuple[Any, optax.Updates, optax.Updates]]:
  r"""``jax.value_and_grad(fun)`` taken at a weight sample, with the sample's noise.

  The gradient of an IVON step must be taken at $\theta = m + \sigma\odot\epsilon$,
  not at the mean $m$; the returned function draws the sample (with
  [`sample_params`][ivon_optax.sample_params]) and differentiates there, so that
  a train step cannot take the gradient at the mean by mistake:

  $$
  (\ell(\theta),\ \nabla_\theta \ell(\theta),\ \sigma\odot\epsilon),
  \qquad \theta = m + \sigma\odot\epsilon .
  $$

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ivon_optax
    >>> params = {"w": jnp.ones(3)}
    >>> tx = ivon_optax.ivon(learning_rate=0.1, ess=100.0)
    >>> state = tx.init(params)
    >>> loss_fn = lambda p, x: jnp.sum((p["w"] * x) ** 2)
    >>> grad_fn = ivon_optax.value_and_grad_at_sample(loss_fn)
    >>> loss, grads, noise = grad_fn(jax.random.key(0), state, params, 2.0)
    >>> updates, state = tx.update(grads, state, params, noise=noise)

  Args:
    fun: ``fun(params, *args, **kwargs)``, a scalar loss (or ``(loss, aux)``
      with ``has_aux``).
    has_aux: as in ``jax.value_and_grad``.
    sampler: as in [`sample_params`][ivon_optax.sample_params].

  Returns:
    ``f(key, state, params, *args, **kwargs) -> (value, grads, noise)``, with
    ``value`` as ``jax.value_and_grad`` returns it; pass ``grads`` and
    ``noise=noise`` to ``tx.update``.
  """
  value_and_grad = jax.value_and_grad(fun, has_aux=has_aux)

  def at_sample(key, state, params, *args, **kwargs):
    sampled, noise = sample_params(key, state, params, sampler=sampler)
    value, grads = value_and_grad(sampled, *args, **kwargs)
    return value, grads, noise

  return at_sample


def _positive(name: str, value: chex.Numeric, fix: str) -> chex.Array:
  """Whether ``value`` > 0 and finite: raises if concrete and not, else a (traced) bool."""
  concrete_number(name, value)
  value = jnp.asarray(value, jnp.float32)
  return require(
    (value > 0) & jnp.isfinite(value),
    value,
    f"Invalid `{name}`={{}}: it must be > 0 and finite. {fix}",
  )


def posterior_as_prior(
  state: optax.OptState, params: optax.Params, ess: chex.Numeric
) -> GaussianPrior:
  r"""IVON's posterior as the prior of a next run with effective sample size ``ess``.

  The posterior $\mathcal{N}(m, 1/(\lambda_1 (h + \delta)))$ is carried
  over exactly: the next run's prior is $\mathcal{N}(\mu_0,
  1/(\lambda_2 \delta_2))$ with

  $$
  \mu_0 = m, \qquad \delta_2 = \lambda_1 (h + \delta) / \lambda_2 .
  $$

  Leaves that IVON does not manage get precision 0.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.ones(2)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0, hess_init=0.5, weight_decay=0.0).init(params)
    >>> prior = ivon_optax.posterior_as_prior(state, params, ess=50.0)
    >>> prior.precision["w"]  # 100 * 0.5 / 50
    Array([1., 1.], dtype=float32)
    >>> tx = ivon_optax.ivon(0.1, ess=50.0, prior=prior)  # the next task's optimizer

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][].
    params: the posterior mean $m$, the params that state was trained with.
    ess: $\lambda_2$ (> 0, finite), the next run's effective sample size.

  Returns:
    A [`GaussianPrior`][ivon_optax.GaussianPrior] with ``mean=params`` and per-element precision.
    Under ``jit`` an invalid ``ess`` makes the precision NaN.
  """
  valid = _positive("ess", ess, "Pass the next run's effective sample size.")
  precision = posterior_precision(state, params)
  return GaussianPrior(
    mean=params, precision=jax.tree.map(lambda p: nan_unless(valid, p / ess), precision)
  )


def scale_posterior(state: optax.OptState, scale: chex.Numeric) -> optax.OptState:
  r"""``state`` with IVON's posterior standard deviation scaled: $\sigma \to \tau\sigma$.

  The IVON state's effective sample size becomes $\lambda/\tau^2$, so that
  [`ivon_optax.sample_params`][], [`ivon_optax.posterior_std`][] and
  [`ivon_optax.predict.sample_outputs`][] of the returned state draw from
  $\mathcal{N}(m, \tau^2\sigma^2)$. With $\tau = 1$ the state
  is unchanged and the samples are identical, key for key. The IVON state
  is found inside any wrapper (``chain``, ``inject_hyperparams``, ...); for a
  stack of ensemble members' states, one $\tau$ scales them all.

  The scaled state is for prediction. The transform that made ``state``
  refuses to train on from it (its ``ess`` no longer matches); to train with
  the scaled posterior, build the transform with ``ess`` $= \lambda/\tau^2$.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax.calibration
    >>> params = {"w": jnp.zeros(2)}
    >>> state = ivon_optax.ivon(0.1, ess=4.0, hess_init=1.0, weight_decay=0.0).init(params)
    >>> wider = ivon_optax.calibration.scale_posterior(state, 2.0)
    >>> ivon_optax.posterior_std(wider, params)["w"]
    Array([1., 1.], dtype=float32)

  Args:
    state: an optax state containing exactly one [`ivon_optax.IVONState`][].
    scale: $\tau > 0$, a scalar.

  Returns:
    The state, its structure unchanged. Under ``jit``, a $\tau$ that is not
    positive makes $\lambda$, hence every sample, NaN.
  """
  find_ivon_state(state)  # exactly one, or a ValueError that says so
  valid = _positive("scale", scale, "Pass the posterior scale tau, e.g. 1.0 for none.")

  def rescale(node):
    if not _is_ivon(node):
      return node
    ess = nan_unless(valid, node.ess / jnp.square(jnp.asarray(scale, node.ess.dtype)))
    return node._replace(ess=ess.astype(node.ess.dtype))

  return jax.tree.map(rescale, state, is_leaf=_is_ivon)
