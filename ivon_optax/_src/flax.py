r"""IVON with Flax: a Linen train state, and NNX weight sampling.

This module imports Flax; ``import ivon_optax`` does not import it. Each IVON
step takes the gradient at a weight sample $\theta = m + \text{noise}$
and passes ``noise`` to the optimizer, which updates the mean $m$.

**Linen.** Flax's ``TrainState.apply_gradients`` does not pass ``noise`` on to
``tx.update``; [`TrainState`][ivon_optax.flax.TrainState] does, keeps the model's other variable
collections (BatchNorm's ``batch_stats``) beside the params, and samples:

```python
@jax.jit
def train_step(state, key, x, y):
  sampled, noise = state.sample_params(key)
  def loss_fn(params):
    logits, updates = state.apply_fn(
        state.variables(params), x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
  grads, updates = jax.grad(loss_fn, has_aux=True)(sampled)
  return state.apply_gradients(grads=grads, noise=noise, collections=updates)
```

**NNX.** ``nnx.Optimizer.update(model, grads, **kwargs)`` passes ``noise`` on;
[`sample_nnx_model`][ivon_optax.flax.sample_nnx_model] gives the model at a weight sample, sharing
every other variable (BatchNorm statistics, RNG counts) with ``model``:

```python
@nnx.jit
def train_step(model, optimizer, key, x, y):
  sampled_model, noise = ivon_optax.flax.sample_nnx_model(key, optimizer, model)
  grads = nnx.grad(loss_fn)(sampled_model, x, y)  # BatchNorm stats update in `model`
  optimizer.update(model, grads, noise=noise)     # the step moves the mean
```

The NNX helpers sample exactly the variables ``optimizer.wrt`` selects: with
``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` only LoRA adapters are trained
and perturbed, and the base weights stay bitwise as they were.
"""

from collections.abc import Callable
from typing import Any

import chex
import optax
from flax import core
from flax import nnx
from flax import struct
from flax.training import train_state

from ivon_optax._src import posterior as _posterior
from ivon_optax._src import predict

# --- Linen ---------------------------------------------------------------------


def _linen_variables(params: Any, collections: Any) -> dict:
  if "params" in collections:
    raise ValueError(
      "`collections` must hold the model's variables other than 'params' (e.g. "
      "{'batch_stats': ...}); pass the params separately."
    )
  return {"params": params, **collections}


def sample_linen_outputs(
  key: chex.PRNGKey,
  apply_fn: Callable[..., Any],
  state: optax.OptState,
  variables: Any,
  *inputs: Any,
  num_samples: int,
  batch_size: int | None = None,
  **apply_kwargs: Any,
) -> Any:
  """A Linen model's outputs at ``num_samples`` weight samples, stacked on a leading axis.

  Only ``variables['params']`` is sampled; the other collections (e.g.
  ``batch_stats``) are passed through unchanged. See
  [`ivon_optax.predict.sample_outputs`][].

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, ivon_optax, ivon_optax.flax
    >>> model = nn.Sequential([nn.Dense(4), nn.BatchNorm(use_running_average=True)])
    >>> x = jnp.ones((5, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> state = ivon_optax.ivon(0.1, ess=100.0).init(variables["params"])
    >>> ivon_optax.flax.sample_linen_outputs(
    ...     jax.random.key(1), model.apply, state, variables, x, num_samples=3).shape
    (3, 5, 4)

  Args:
    key: a JAX PRNG key.
    apply_fn: a Linen ``model.apply``.
    state: the optax state of the optimizer of ``variables['params']``.
    variables: the model's variables, ``{'params': ..., 'batch_stats': ...}``.
    *inputs: positional inputs of the model.
    num_samples: the number of weight samples.
    batch_size: how many samples to evaluate at once (``None``: all).
    **apply_kwargs: keyword arguments of ``apply_fn``, e.g. ``train=False``.

  Returns:
    The model's output with a leading sample axis.
  """
  if "params" not in variables:
    raise ValueError(
      "`variables` must be a Linen variables dict with a 'params' collection, as "
      "model.init returns it."
    )
  collections = {name: value for name, value in variables.items() if name != "params"}
  return predict.sample_outputs(
    key,
    lambda params, *xs: apply_fn(_linen_variables(params, collections), *xs, **apply_kwargs),
    state,
    variables["params"],
    *inputs,
    num_samples=num_samples,
    batch_size=batch_size,
  )


class TrainState(train_state.TrainState):
  """A Linen ``TrainState`` for IVON: samples weights and passes the sample's noise to ``tx``.

  Fields beyond Flax's ``TrainState``: ``collections``, the model's variable
  collections other than ``params`` (e.g. ``{'batch_stats': ...}``), which
  ``apply_gradients(..., collections=...)`` replaces after a training step.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, flax.linen as nn, ivon_optax, ivon_optax.flax
    >>> model = nn.Dense(2)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    >>> state = ivon_optax.flax.TrainState.create(
    ...     apply_fn=model.apply, params=model.init(jax.random.key(0), x)["params"],
    ...     tx=ivon_optax.ivon(0.1, ess=4.0))
    >>> @jax.jit
    ... def train_step(state, key):
    ...   sampled, noise = state.sample_params(key)
    ...   loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
    ...       state.apply_fn(state.variables(p), x), y).mean()
    ...   return state.apply_gradients(grads=jax.grad(loss)(sampled), noise=noise)
    >>> state = train_step(state, jax.random.key(1))
    >>> int(state.step)
    1
  """

  collections: core.FrozenDict[str, Any] = struct.field(pytree_node=True, default_factory=dict)

  def variables(self, params: Any | None = None) -> dict:
    """The Linen variables ``{'params': params, **collections}``, by default at the mean."""
    return _linen_variables(self.params if params is None else params, self.collections)

  def sample_params(self, key: chex.PRNGKey) -> tuple[Any, Any]:
    """One weight sample ``(sampled_params, noise)``, as [`ivon_optax.sample_params`][]."""
    return _posterior.sample_params(key, self.opt_state, self.params)

  def posterior(self) -> tuple[Any, Any]:
    """The posterior ``(mean, std)`` of the params, as [`ivon_optax.posterior`][]."""
    return _posterior.posterior(self.opt_state, self.params)

  def apply_gradients(self, *, grads, noise=None, samples=None, **kwargs):
    """One IVON step: ``step + 1``, the mean moved by ``tx.update(grads, ..., noise=noise)``.

    Args:
      grads: the loss gradient at the weight sample, like ``params``.
      noise: the noise of that sample, from
        [`sample_params`][ivon_optax.flax.TrainState.sample_params].
      samples: for several samples per step, a [`ivon_optax.SampleAverage`][]
        instead of ``noise`` (and its ``grads`` as ``grads``).
      **kwargs: fields to replace, e.g. ``collections=`` the updated
        ``batch_stats``.

    Returns:
      The updated state.
    """
    if isinstance(grads, dict) and train_state.OVERWRITE_WITH_GRADIENT in grads:
      raise ValueError(
        f"ivon_optax.flax.TrainState does not support the "
        f"{train_state.OVERWRITE_WITH_GRADIENT!r} collection: keep IVON's params "
        "in `params` and other collections in `collections`."
      )
    updates, opt_state = self.tx.update(
      grads, self.opt_state, self.params, noise=noise, samples=samples
    )
    return self.replace(
      step=self.step + 1,
      params=optax.apply_updates(self.params, updates),
      opt_state=opt_state,
      **kwargs,
    )

  def sample_outputs(
    self,
    key: chex.PRNGKey,
    *inputs: Any,
    num_samples: int,
    batch_size: int | None = None,
    **apply_kwargs: Any,
  ) -> Any:
    """The model's outputs at ``num_samples`` weight samples, stacked.

    See [`sample_linen_outputs`][ivon_optax.flax.sample_linen_outputs].
    """
    return sample_linen_outputs(
      key,
      self.apply_fn,
      self.opt_state,
      self.variables(),
      *inputs,
      num_samples=num_samples,
      batch_size=batch_size,
      **apply_kwargs,
    )


# --- NNX -----------------------------------------------------------------------


def nnx_params_and_state(optimizer: nnx.Optimizer, model: nnx.Module) -> tuple[Any, Any]:
  """The plain-array ``(params, opt_state)`` of an NNX model and its optimizer.

  ``params`` are the variables ``optimizer.wrt`` selects; both trees are as
  ``nnx.Optimizer.update`` passes them to ``tx``, so the functions of
  [`ivon_optax`][] accept them (``ivon_optax.posterior(opt_state, params)``).

  Examples:
    >>> import jax, flax.nnx as nnx, ivon_optax, ivon_optax.flax
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ivon_optax.ivon(0.1, ess=100.0), wrt=nnx.Param)
    >>> params, opt_state = ivon_optax.flax.nnx_params_and_state(optimizer, model)
    >>> mean, std = ivon_optax.posterior(opt_state, params)
    >>> float(std["kernel"][0, 0])  # 1 / sqrt(ess * (hess_init + weight_decay))
    0.0999...
  """
  params = nnx.as_pure(nnx.state(model, optimizer.wrt, graph=optimizer.graph))
  return params, nnx.as_pure(optimizer.opt_state)


def sample_nnx_params(
  key: chex.PRNGKey, optimizer: nnx.Optimizer, model: nnx.Module
) -> tuple[Any, Any]:
  """One weight sample of an NNX model, ``(sampled, noise)``, as plain-array ``nnx.State``.

  The sampled variables are those ``optimizer.wrt`` selects; ``noise`` goes
  to ``optimizer.update(model, grads, noise=noise)``. See
  [`ivon_optax.sample_params`][].

  Examples:
    >>> import jax, jax.numpy as jnp, flax.nnx as nnx, ivon_optax, ivon_optax.flax
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ivon_optax.ivon(0.1, ess=100.0), wrt=nnx.Param)
    >>> sampled, noise = ivon_optax.flax.sample_nnx_params(jax.random.key(1), optimizer, model)
    >>> bool(jnp.allclose(sampled["kernel"], model.kernel[...] + noise["kernel"]))
    True
  """
  params, opt_state = nnx_params_and_state(optimizer, model)
  return _posterior.sample_params(key, opt_state, params)


def sample_nnx_model(
  key: chex.PRNGKey, optimizer: nnx.Optimizer, model: nnx.Module
) -> tuple[nnx.Module, Any]:
  """``model`` at one weight sample, and the sample's noise.

  The returned module holds sampled values of the variables ``optimizer.wrt``
  selects and shares every other variable with ``model``: BatchNorm
  statistics or RNG counts it updates are ``model``'s. Take the gradient with
  respect to it, then step the mean with ``optimizer.update(model, grads,
  noise=noise)``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, flax.nnx as nnx, ivon_optax, ivon_optax.flax
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ivon_optax.ivon(0.1, ess=4.0), wrt=nnx.Param)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    >>> loss_fn = lambda model: optax.softmax_cross_entropy_with_integer_labels(
    ...     model(x), y).mean()
    >>> @nnx.jit
    ... def train_step(model, optimizer, key):
    ...   sampled_model, noise = ivon_optax.flax.sample_nnx_model(key, optimizer, model)
    ...   grads = nnx.grad(loss_fn)(sampled_model)
    ...   optimizer.update(model, grads, noise=noise)
    >>> train_step(model, optimizer, jax.random.key(1))
    >>> int(optimizer.step[...])
    1

  Returns:
    ``(sampled_model, noise)``.
  """
  sampled, noise = sample_nnx_params(key, optimizer, model)
  graphdef, _, rest = nnx.split(model, optimizer.wrt, ..., graph=optimizer.graph)
  return nnx.merge(graphdef, sampled, rest), noise


def nnx_value_and_grad_at_sample(
  fun: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, Any, Any]]:
  r"""``nnx.value_and_grad(fun)`` taken at a weight sample of an NNX model, with its noise.

  The NNX counterpart of [`ivon_optax.value_and_grad_at_sample`][]: the
  returned function draws the model at $\theta = m + \sigma\odot\epsilon$
  ([`sample_nnx_model`][ivon_optax.flax.sample_nnx_model]) and differentiates
  ``fun`` there with respect to the variables ``optimizer.wrt`` selects, so
  that a train step cannot take the gradient at the mean by mistake. State
  updates made by ``fun`` (BatchNorm statistics) land in ``model``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, flax.nnx as nnx, ivon_optax, ivon_optax.flax
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ivon_optax.ivon(0.1, ess=4.0), wrt=nnx.Param)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    >>> loss_fn = lambda model, x, y: optax.softmax_cross_entropy_with_integer_labels(
    ...     model(x), y).mean()
    >>> grad_fn = ivon_optax.flax.nnx_value_and_grad_at_sample(loss_fn)
    >>> @nnx.jit
    ... def train_step(model, optimizer, key, x, y):
    ...   loss, grads, noise = grad_fn(key, optimizer, model, x, y)
    ...   optimizer.update(model, grads, noise=noise)
    ...   return loss
    >>> loss = train_step(model, optimizer, jax.random.key(1), x, y)
    >>> int(optimizer.step[...])
    1

  Args:
    fun: ``fun(model, *args, **kwargs)``, a scalar loss (or ``(loss, aux)``
      with ``has_aux``).
    has_aux: as in ``nnx.value_and_grad``.

  Returns:
    ``f(key, optimizer, model, *args, **kwargs) -> (value, grads, noise)``;
    pass ``grads`` and ``noise=noise`` to ``optimizer.update(model, grads, ...)``.
  """

  def at_sample(key, optimizer, model, *args, **kwargs):
    sampled_model, noise = sample_nnx_model(key, optimizer, model)
    value_and_grad = nnx.value_and_grad(
      fun, argnums=nnx.DiffState(0, optimizer.wrt), has_aux=has_aux
    )
    value, grads = value_and_grad(sampled_model, *args, **kwargs)
    return value, grads, noise

  return at_sample


def refresh_batch_stats(model: nnx.Module, *inputs: Any) -> None:
  """Sets every ``nnx.BatchNorm`` of ``model`` to the statistics of one batch, in place.

  The model is called once in training mode for its BatchNorm layers (with
  momentum 0), then left in evaluation mode. Used on each weight sample, it
  gives the statistics those weights produce, rather than running averages
  gathered at other weights during training.
  """
  iter_modules = getattr(nnx, "iter_modules", None)  # flax >= 0.12; a method before
  modules = iter_modules(model) if iter_modules else model.iter_modules()
  norms = [module for _, module in modules if isinstance(module, nnx.BatchNorm)]
  if not norms:
    raise ValueError(
      "`model` has no nnx.BatchNorm layer whose statistics could be refreshed: drop "
      "`batch_stats_inputs`."
    )
  saved = [(norm.momentum, norm.use_running_average) for norm in norms]
  for norm in norms:
    norm.momentum, norm.use_running_average = 0.0, False
  model(*inputs)
  for norm, (momentum, _) in zip(norms, saved, strict=True):
    norm.momentum, norm.use_running_average = momentum, True


def sample_nnx_outputs(
  key: chex.PRNGKey,
  optimizer: nnx.Optimizer,
  model: nnx.Module,
  *inputs: Any,
  num_samples: int,
  batch_size: int | None = None,
  posterior_scale: chex.Numeric = 1.0,
  batch_stats_inputs: Any = None,
) -> Any:
  r"""An NNX model's outputs at ``num_samples`` weight samples, stacked on a leading axis.

  Only the variables ``optimizer.wrt`` selects are sampled. Pass the model in
  evaluation mode (``nnx.view(model, use_running_average=True,
  deterministic=True)`` or ``model.eval()``): state updates made while
  predicting are discarded. See [`ivon_optax.predict.sample_outputs`][].

  Examples:
    >>> import jax, jax.numpy as jnp, flax.nnx as nnx, ivon_optax, ivon_optax.flax
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ivon_optax.ivon(0.1, ess=100.0), wrt=nnx.Param)
    >>> ivon_optax.flax.sample_nnx_outputs(
    ...     jax.random.key(1), optimizer, model, jnp.ones((5, 3)), num_samples=4).shape
    (4, 5, 2)

  Args:
    key: a JAX PRNG key.
    optimizer: the model's ``nnx.Optimizer`` with IVON.
    model: the model (its mean weights).
    *inputs: positional inputs of the model.
    num_samples: the number of weight samples.
    batch_size: how many samples to evaluate at once (``None``: all).
    posterior_scale: $\tau > 0$: draw from $\mathcal{N}(m, \tau^2\sigma^2)$
      ([`ivon_optax.calibration.scale_posterior`][]), e.g. the scale
      [`fit_posterior_scale`][ivon_optax.calibration.fit_posterior_scale] chose.
    batch_stats_inputs: inputs from the training set (an array, or a tuple
      of positional inputs). If given,
      each weight sample's BatchNorm statistics are recomputed on it
      ([`refresh_batch_stats`][ivon_optax.flax.refresh_batch_stats]) before
      it predicts: the statistics that belong to those weights.
  """
  if batch_stats_inputs is not None and not isinstance(batch_stats_inputs, tuple):
    batch_stats_inputs = (batch_stats_inputs,)
  params, opt_state = nnx_params_and_state(optimizer, model)
  opt_state = _posterior.scale_posterior(opt_state, posterior_scale)
  graphdef, _, rest = nnx.split(model, optimizer.wrt, ..., graph=optimizer.graph)
  rest = nnx.as_pure(rest)

  def apply_fn(sampled, *xs):
    sampled_model = nnx.merge(graphdef, sampled, rest)
    if batch_stats_inputs is not None:
      refresh_batch_stats(sampled_model, *batch_stats_inputs)
    return sampled_model(*xs)

  return predict.sample_outputs(
    key, apply_fn, opt_state, params, *inputs, num_samples=num_samples, batch_size=batch_size
  )
