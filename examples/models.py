"""The examples' model, optimizers, training loop and predictions.

One Flax MLP, trained by SGD, AdamW or IVON. :func:`train` trains many runs
at once (seeds, and hyperparameter settings of one optimizer), vmapped: each
epoch is one jitted call, a ``lax.scan`` over its mini-batches. The
optimizer is built inside the trace from the run's hyperparameters, so runs
that differ only in their values share one compiled epoch.
"""

import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import ivon_optax

OPTIMIZERS = ("sgd", "adamw", "ivon")
# A run's key, folded with the epoch, shuffles and samples that epoch; these two
# fold-in values, beyond any epoch, give its initialization and its test-time samples.
INIT_STREAM, PREDICT_STREAM = 2**31 - 1, 2**31 - 2


class MLP(nn.Module):
  """A multilayer perceptron ``in -> hidden... -> num_outputs`` (ReLU by default)."""

  hidden: Sequence[int]
  num_outputs: int = 10
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, inputs):
    features = inputs
    for width in self.hidden:
      features = self.activation(nn.Dense(width)(features))
    return nn.Dense(self.num_outputs)(features)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# --- Optimizers --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """One optimizer's hyperparameters. The learning rate warms up linearly, then decays (cosine)."""

  name: str  # 'sgd', 'adamw' or 'ivon'.
  learning_rate: float
  weight_decay: float
  batch_size: int = 128
  momentum: float = 0.9  # SGD's.
  hess_init: float = 0.1  # IVON's h0.
  beta2: float = 0.99999  # IVON's Hessian decay.
  warmup_epochs: int = 5
  schedule: str = "cosine"  # or 'constant' (no warm-up either).
  # IVON's temperature k: if set, ess, weight_decay, hess_init and beta2 come from
  # ivon_optax.recipe(init params, num_train=N, num_steps=T, temper=k) (the fields are ignored).
  temper: float | None = None

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"Unknown optimizer {self.name!r}: use one of {OPTIMIZERS}.")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"Unknown schedule {self.schedule!r}: use 'cosine' or 'constant'.")

  def values(self) -> dict:
    """The hyperparameters that may differ between runs trained together."""
    names = ("learning_rate", "weight_decay", "momentum", "hess_init", "beta2")
    return {name: getattr(self, name) for name in names}

  def describe(self) -> str:
    text = f"lr {self.learning_rate:g}, wd {self.weight_decay:g}, batch {self.batch_size}"
    if self.name == "ivon" and self.temper is not None:
      return f"lr {self.learning_rate:g}, recipe(temper={self.temper:g}), batch {self.batch_size}"
    if self.name == "ivon":
      text += f", h0 {self.hess_init:g}, beta2 {self.beta2:g}"
    if self.name == "sgd":
      text += f", momentum {self.momentum:g}"
    return text


def make_optimizer(name, values, *, ess, schedule, total_steps, warmup_steps):
  """The optax optimizer ``name`` with hyperparameter ``values`` (plain or traced numbers).

  IVON's effective sample size is ``values["ess"]`` if given (``recipe``'s), else ``ess``.
  """
  if schedule == "cosine":
    shape = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, warmup_steps, max(total_steps, warmup_steps + 1)
    )
  else:
    shape = optax.constant_schedule(1.0)
  learning_rate = lambda count: values["learning_rate"] * shape(count)
  if name == "ivon":
    return ivon_optax.ivon(
      learning_rate,
      ess=values.get("ess", ess),
      hess_init=values["hess_init"],
      beta2=values["beta2"],
      weight_decay=values["weight_decay"],
    )
  if name == "adamw":
    return optax.adamw(learning_rate, weight_decay=values["weight_decay"])
  return optax.chain(
    optax.add_decayed_weights(values["weight_decay"]),
    optax.sgd(learning_rate, momentum=values["momentum"]),
  )


def recipe_values(config: OptimizerConfig, params, num_train: int, num_steps: int) -> dict:
  """``config.values()``, with IVON's ``ess``, weight decay, h0 and beta2 from ``recipe``.

  With ``config.temper`` set, ``ivon_optax.recipe(params, num_train=num_train,
  num_steps=num_steps, temper=config.temper)`` gives them; otherwise
  ``config.values()`` is returned unchanged (and ``ess`` is the training-set size).
  """
  values = config.values()
  if config.name == "ivon" and config.temper is not None:
    values.update(
      ivon_optax.recipe(params, num_train=num_train, num_steps=num_steps, temper=config.temper)
    )
  elif config.name == "ivon":
    values["ess"] = float(num_train)
  return values


# --- Training ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the compiled epoch depends on beyond the arrays (hashable, hence static)."""

  model: nn.Module
  loss_fn: Callable
  name: str
  schedule: str
  batch_size: int
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  ess: float

  def optimizer(self, values):
    return make_optimizer(
      self.name,
      values,
      ess=self.ess,
      schedule=self.schedule,
      total_steps=self.total_steps,
      warmup_steps=self.warmup_steps,
    )


class Runs(NamedTuple):
  """Trained runs, stacked on a leading axis: params, optimizer states, per-epoch mean losses."""

  params: Any
  opt_state: Any
  losses: np.ndarray  # (runs, epochs)


@functools.partial(jax.jit, static_argnames=("plan",))
def _init(plan: _Plan, params, values):
  return jax.vmap(lambda p, v: plan.optimizer(v).init(p))(params, values)


@functools.partial(jax.jit, static_argnames=("plan",))
def _epoch(plan: _Plan, params, opt_state, values, keys, epoch, inputs, targets):
  """One epoch of every run: a fresh shuffle per run, one IVON weight sample per step."""

  def one_run(params, opt_state, values, key):
    tx = plan.optimizer(values)
    data_key, sample_key = jax.random.split(jax.random.fold_in(key, epoch))
    order = jax.random.permutation(data_key, inputs.shape[0])
    batches = order[: plan.steps_per_epoch * plan.batch_size].reshape(plan.steps_per_epoch, -1)

    def step(carry, inputs_step):
      params, opt_state = carry
      batch, step_key = inputs_step
      loss_at = lambda p: plan.loss_fn(
        plan.model.apply({"params": p}, inputs[batch]), targets[batch]
      )
      if plan.name == "ivon":
        sampled, noise = ivon_optax.sample_params(step_key, opt_state, params)
        loss, grads = jax.value_and_grad(loss_at)(sampled)
        updates, opt_state = tx.update(grads, opt_state, params, noise=noise)
      else:
        loss, grads = jax.value_and_grad(loss_at)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    step_keys = jax.random.split(sample_key, plan.steps_per_epoch)
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batches, step_keys))
    return params, opt_state, jnp.mean(losses)

  return jax.vmap(one_run)(params, opt_state, values, keys)


def train(
  model: nn.Module,
  configs: OptimizerConfig | Sequence[OptimizerConfig],
  inputs: np.ndarray,
  targets: np.ndarray,
  *,
  seeds: Sequence[int],
  epochs: int,
  loss_fn: Callable = cross_entropy,
  params: Any = None,
  progress: bool = True,
  on_epoch: Callable | None = None,
) -> Runs:
  """Trains one run per ``(config, seed)`` pair, all at once.

  Args:
    model: the Flax module.
    configs: one config for every seed, or one per seed; all of one optimizer,
      schedule, warm-up and batch size.
    inputs: training inputs ``(n, ...)``.
    targets: training targets ``(n, ...)``.
    seeds: one per run: the initialization, the shuffles and IVON's samples.
    epochs: passes over the shuffled data (the last, incomplete batch dropped).
    loss_fn: ``loss_fn(outputs, targets)``, the mini-batch mean.
    params: start from these params (shared by all runs) instead of ``model.init``.
    progress: show a tqdm bar over the epochs.
    on_epoch: called as ``on_epoch(epoch, params, opt_state)`` after each epoch.

  Returns:
    The :class:`Runs`, stacked over runs in the order of ``seeds``.
  """
  configs = [configs] * len(seeds) if isinstance(configs, OptimizerConfig) else list(configs)
  first = configs[0]
  static = {(c.name, c.schedule, c.warmup_epochs, c.batch_size) for c in configs}
  if len(configs) != len(seeds) or len(static) != 1:
    raise ValueError(
      "`configs` must be one config or one per seed, all with the same optimizer, schedule, "
      f"warm-up and batch size; got {len(configs)} configs for {len(seeds)} seeds ({static})."
    )
  batch_size = min(first.batch_size, len(inputs))
  steps_per_epoch = len(inputs) // batch_size
  cosine = first.schedule == "cosine"
  plan = _Plan(
    model=model,
    loss_fn=loss_fn,
    name=first.name,
    schedule=first.schedule,
    batch_size=batch_size,
    steps_per_epoch=steps_per_epoch,
    total_steps=epochs * steps_per_epoch,
    warmup_steps=min(first.warmup_epochs, epochs) * steps_per_epoch if cosine else 0,
    ess=float(len(inputs)),
  )
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
  if params is None:
    init = lambda key: model.init(jax.random.fold_in(key, INIT_STREAM), inputs[:1])["params"]
    params = jax.vmap(init)(keys)
  else:
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (len(seeds), *jnp.shape(p))), params)
  run_values = [recipe_values(c, select(params, 0), len(inputs), plan.total_steps) for c in configs]
  values = {k: jnp.asarray([v[k] for v in run_values], jnp.float32) for k in run_values[0]}
  opt_state = _init(plan, params, values)
  losses = []
  label = f"{first.name} x{len(seeds)}"
  for epoch in tqdm(range(epochs), desc=label, disable=not progress, leave=False):
    params, opt_state, loss = _epoch(plan, params, opt_state, values, keys, epoch, inputs, targets)
    losses.append(loss)
    if on_epoch is not None:
      on_epoch(epoch, params, opt_state)
  losses = np.asarray(jnp.stack(losses, axis=1)) if losses else np.zeros((len(seeds), 0))
  return Runs(params, opt_state, losses)


# --- Predictions and scores --------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model",))
def predict_at_mean(model: nn.Module, params, inputs) -> jax.Array:
  """Each run's outputs at its mean (or point-estimate) weights: ``(runs, n, ...)``."""
  return jax.vmap(lambda p: model.apply({"params": p}, inputs))(params)


@functools.partial(jax.jit, static_argnames=("model", "num_samples"))
def predict_samples(model: nn.Module, params, opt_state, keys, inputs, *, num_samples: int):
  """Each IVON run's outputs at ``num_samples`` posterior samples: ``(runs, samples, n, ...)``.

  Runs are evaluated a few at a time and samples 16 at a time, which bounds memory.
  """

  def one_run(run):
    params, opt_state, key = run
    apply = lambda p, x: model.apply({"params": p}, x)
    return ivon_optax.predict.sample_outputs(
      key, apply, opt_state, params, inputs, num_samples=num_samples, batch_size=16
    )

  return jax.lax.map(one_run, (params, opt_state, keys), batch_size=4)


def bayes_log_probs(model, runs: Runs, seeds, inputs, num_samples: int) -> jax.Array:
  """Log probabilities of IVON's Bayesian model average over ``num_samples`` posterior samples.

  The sample keys are ``fold_in(key(seed), PREDICT_STREAM)``, apart from the training keys.
  """
  keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), PREDICT_STREAM))(
    jnp.asarray(seeds)
  )
  logits = predict_samples(
    model, runs.params, runs.opt_state, keys, inputs, num_samples=num_samples
  )
  return jax.vmap(ivon_optax.predict.predictive_log_probs)(logits)


@jax.jit
def _scores(log_probs, labels):
  def one_run(log_probs):
    return {
      "accuracy": ivon_optax.metrics.accuracy(log_probs, labels),
      "nll": ivon_optax.metrics.negative_log_likelihood(log_probs, labels),
      "ece": ivon_optax.metrics.expected_calibration_error(log_probs, labels),
      "brier": ivon_optax.metrics.brier_score(log_probs, labels),
    }

  return jax.vmap(one_run)(log_probs)


def classification_metrics(log_probs: jax.Array, labels: np.ndarray) -> dict:
  """Accuracy, NLL, ECE (15 bins) and Brier score per run: ``{metric: (runs,) float64 array}``.

  Args:
    log_probs: normalized log probabilities ``(runs, n, classes)``.
    labels: integer labels ``(n,)``.
  """
  scores = _scores(log_probs, jnp.asarray(labels))
  return {name: np.asarray(value, np.float64) for name, value in scores.items()}


def select(tree: Any, run: int) -> Any:
  """Run ``run`` of a tree stacked over runs (params, optimizer states)."""
  return jax.tree.map(lambda leaf: leaf[run], tree)


def fsdp_spec(param: jax.Array, fsdp_size: int) -> jax.sharding.PartitionSpec:
  """Shards a param's last axis over the mesh axis 'fsdp' if it divides evenly, else replicates."""
  partition = jax.sharding.PartitionSpec
  if param.ndim and param.shape[-1] % fsdp_size == 0:
    return partition(*([None] * (param.ndim - 1)), "fsdp")
  return partition()


# --- A plain-JAX ReLU MLP (a list of {"w", "b"} layers), for the prior examples ---------


def init_mlp(key, sizes):
  """He-normal weights and zero biases for layer widths ``sizes`` (inputs first)."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in), "b": jnp.zeros(fan_out)}
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp_apply(params, inputs):
  """Logits ``(batch, classes)``."""
  hidden = inputs
  for layer in params[:-1]:
    hidden = jax.nn.relu(hidden @ layer["w"] + layer["b"])
  return hidden @ params[-1]["w"] + params[-1]["b"]


def mean_nll(params, inputs, labels):
  """Mean cross-entropy of :func:`mlp_apply`'s logits."""
  logits = mlp_apply(params, inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
