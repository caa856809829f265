"""What the variance examples and their tests share: digits, a small MLP, IVON training.

The data is scikit-learn's bundled ``load_digits`` (8x8 grey images, 1797 of
them, no download). The model is a plain-JAX MLP whose params are a list of
``{"w", "b"}`` layers; with no hidden layer it is multinomial logistic
regression. Training runs IVON with one Monte-Carlo sample per step inside a
``lax.scan``, so a whole epoch is one compiled call.
"""

import functools
import itertools
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ivon_optax

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8)


class Split(NamedTuple):
  """Inputs scaled to [0, 1] (float32, ``(n, 64)``) and integer labels (``(n,)``)."""

  inputs: np.ndarray
  labels: np.ndarray


def load_digits_splits(
  sizes: Sequence[int], *, seed: int = 0, classes: Sequence[int] | None = None
) -> list[Split]:
  """Disjoint random splits of the digits with the given sizes.

  Args:
    sizes: how many examples each split gets; their sum may not exceed the
      number of digits (of ``classes``).
    seed: the shuffling seed.
    classes: keep only these labels (all ten by default).

  Returns:
    One :class:`Split` per entry of ``sizes``.
  """
  from sklearn.datasets import load_digits

  digits = load_digits()
  inputs = (digits.data / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  if classes is not None:
    keep = np.isin(labels, np.asarray(classes))
    inputs, labels = inputs[keep], labels[keep]
  if sum(sizes) > len(labels):
    raise ValueError(f"`sizes` sum to {sum(sizes)} but only {len(labels)} digits are available.")
  order = np.random.default_rng(seed).permutation(len(labels))
  bounds = np.cumsum([0, *sizes])
  return [Split(inputs[order[a:b]], labels[order[a:b]]) for a, b in itertools.pairwise(bounds)]


def select_classes(split: Split, classes: Sequence[int]) -> Split:
  """The examples of ``split`` whose label is in ``classes``."""
  keep = np.isin(split.labels, np.asarray(classes))
  return Split(split.inputs[keep], split.labels[keep])


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict]:
  """LeCun-normal weights and zero biases for layer widths ``sizes`` (inputs first)."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in), "b": jnp.zeros(fan_out)}
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:])
  ]


def mlp_apply(params: list[dict], inputs: jax.Array) -> jax.Array:
  """Logits ``(batch, classes)`` of the tanh MLP."""
  hidden = inputs
  for layer in params[:-1]:
    hidden = jnp.tanh(hidden @ layer["w"] + layer["b"])
  return hidden @ params[-1]["w"] + params[-1]["b"]


def mean_nll(params, inputs, labels) -> jax.Array:
  """Mean cross-entropy of :func:`mlp_apply` at ``params``."""
  logits = mlp_apply(params, inputs)
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(params, inputs, labels) -> jax.Array:
  """Fraction of correct argmax predictions."""
  return jnp.mean(jnp.argmax(mlp_apply(params, inputs), -1) == labels)


@functools.partial(jax.jit, static_argnames=("tx", "num_steps", "batch_size"))
def ivon_steps(key, tx, params, opt_state, inputs, labels, *, num_steps: int, batch_size: int):
  """``num_steps`` IVON steps on random minibatches, one posterior sample each.

  The loss is the minibatch mean; IVON's ``ess`` turns it into the summed loss
  its posterior describes.

  Returns:
    ``(params, opt_state)`` after the steps.
  """
  num_examples = labels.shape[0]

  def step(carry, step_key):
    params, opt_state = carry
    batch_key, sample_key = jax.random.split(step_key)
    batch = jax.random.choice(batch_key, num_examples, (batch_size,), replace=False)
    sampled, noise = ivon_optax.sample_params(sample_key, opt_state, params)
    grads = jax.grad(mean_nll)(sampled, inputs[batch], labels[batch])
    updates, opt_state = tx.update(grads, opt_state, params, noise=noise)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, num_steps))
  return params, opt_state


def train_ivon(key, tx, params, split: Split, *, num_steps: int, batch_size: int, opt_state=None):
  """Runs :func:`ivon_steps` from ``tx.init(params)`` (or ``opt_state``).

  Returns:
    ``(params, opt_state)``.
  """
  opt_state = tx.init(params) if opt_state is None else opt_state
  batch_size = min(batch_size, len(split.labels))
  return ivon_steps(
    key,
    tx,
    params,
    opt_state,
    jnp.asarray(split.inputs),
    jnp.asarray(split.labels),
    num_steps=num_steps,
    batch_size=batch_size,
  )


class EpochLog(NamedTuple):
  """Per-epoch curves of :func:`train_with_loo`, each of shape ``(num_epochs,)``."""

  loo_nll: np.ndarray
  loo_error: np.ndarray
  train_nll: np.ndarray
  test_nll: np.ndarray
  test_error: np.ndarray


def train_with_loo(
  key,
  tx,
  params,
  train: Split,
  test: Split,
  *,
  num_epochs: int,
  steps_per_epoch: int,
  batch_size: int,
):
  """Trains with IVON and, after every epoch, records the leave-one-out estimate and test NLL.

  Returns:
    ``(params, opt_state, EpochLog)``.
  """
  opt_state = tx.init(params)
  train_inputs, train_labels = jnp.asarray(train.inputs), jnp.asarray(train.labels)
  rows = []
  for epoch in range(num_epochs):
    params, opt_state = train_ivon(
      jax.random.fold_in(key, epoch),
      tx,
      params,
      train,
      num_steps=steps_per_epoch,
      batch_size=batch_size,
      opt_state=opt_state,
    )
    estimate = ivon_optax.sensitivity.leave_one_out(
      mlp_apply, opt_state, params, train_inputs, train_labels
    )
    rows.append(
      (
        estimate.nll,
        estimate.error,
        estimate.train_nll,
        mean_nll(params, test.inputs, test.labels),
        1.0 - accuracy(params, test.inputs, test.labels),
      )
    )
  columns = np.asarray(jax.device_get(rows), dtype=np.float64).T
  return params, opt_state, EpochLog(*columns)


TASK_CLASSES = (tuple(range(5)), tuple(range(5, 10)))


class DigitTasks(NamedTuple):
  """A base model and its fine-tunings on digits 0-4 and 5-9, all trained with IVON."""

  base: list  # the base params theta_0
  base_state: Any  # the base's IVON optimizer state
  finetuned: list  # [(params, opt_state)] per task
  task_data: list  # [Split] per task
  test: Split  # test digits of all ten classes


@functools.cache
def cached_ivon(
  learning_rate: float, ess: float, hess_init: float, beta2: float, weight_decay: float
):
  """One :func:`ivon_optax.ivon` object per hyperparameter setting, so jitted loops reuse it."""
  return ivon_optax.ivon(
    learning_rate, ess=ess, hess_init=hess_init, beta2=beta2, weight_decay=weight_decay
  )


def finetune_digit_tasks(
  *,
  seed: int = 0,
  base_size: int = 100,
  task_size: int = 350,
  test_size: int = 600,
  base_steps: int = 1000,
  task_steps: int = 1000,
  task_hess_init: float = 0.01,
  task_learning_rate: float = 0.05,
) -> DigitTasks:
  """Trains a base on ``base_size`` digits of all classes, then fine-tunes it on each task.

  Each task gets ``task_size`` training digits of its classes, disjoint from
  the base's and the test digits. The base uses ``hess_init=0.1``; the
  fine-tunings use ``hess_init=0.01``, near the data's per-example curvature
  (about 0.003 to 0.01 here), so that with ``beta2=0.999`` each task's
  precision :math:`H_t` is learned from its data rather than inherited from
  ``hess_init``.
  """
  base_pool, task_pool, test = load_digits_splits(
    [base_size, len(TASK_CLASSES) * task_size + 200, test_size], seed=seed
  )
  task_data = []
  for classes in TASK_CLASSES:
    data = select_classes(task_pool, classes)
    if len(data.labels) < task_size:
      raise ValueError(f"Only {len(data.labels)} digits of {classes} for `task_size`={task_size}.")
    task_data.append(Split(data.inputs[:task_size], data.labels[:task_size]))
  params = init_mlp(jax.random.key(seed), [64, 32, NUM_CLASSES])
  base_tx = cached_ivon(0.2, float(base_size), 0.1, 0.999, 1e-3)
  base, base_state = train_ivon(
    jax.random.key(seed + 1), base_tx, params, base_pool, num_steps=base_steps, batch_size=32
  )
  task_tx = cached_ivon(task_learning_rate, float(task_size), task_hess_init, 0.999, 1e-3)
  finetuned = [
    train_ivon(
      jax.random.key(seed + 10 + task), task_tx, base, data, num_steps=task_steps, batch_size=32
    )
    for task, data in enumerate(task_data)
  ]
  return DigitTasks(base, base_state, finetuned, task_data, test)


class MergeResult(NamedTuple):
  """Test NLL and accuracy on the union of both tasks' test digits, per merged model."""

  test_nll: dict
  test_accuracy: dict


def compare_merges(
  tasks: DigitTasks, scales: Sequence[float] = (1.0,), extra: dict | None = None
) -> MergeResult:
  """Evaluates the base, each task model, the plain average, and per scale alpha task
  arithmetic and the uncertainty-based merge (with the base's IVON precision as H_0).
  Task arithmetic at alpha = 1/T is the plain average, listed under both names.

  ``extra`` maps more names to params to evaluate alongside.
  """
  models = [params for params, _ in tasks.finetuned]
  candidates = {"base": tasks.base}
  candidates.update({f"task {t} only": model for t, model in enumerate(models)})
  candidates["average"] = ivon_optax.merging.task_arithmetic(
    tasks.base, models, task_scales=1.0 / len(models)
  )
  for alpha in scales:
    name = f"task arithmetic (alpha={alpha:g})"
    # with alpha = 1/T, task arithmetic is the average itself
    candidates[name] = (
      candidates["average"]
      if np.isclose(alpha * len(models), 1.0)
      else (ivon_optax.merging.task_arithmetic(tasks.base, models, task_scales=alpha))
    )
    candidates[f"uncertainty (alpha={alpha:g})"] = ivon_optax.merging.merge_models(
      tasks.base, tasks.finetuned, task_scales=alpha, base_state=tasks.base_state
    )
  candidates.update(extra or {})
  inputs, labels = jnp.asarray(tasks.test.inputs), jnp.asarray(tasks.test.labels)
  return MergeResult(
    {name: float(mean_nll(params, inputs, labels)) for name, params in candidates.items()},
    {name: float(accuracy(params, inputs, labels)) for name, params in candidates.items()},
  )


def merge_digit_tasks(*, scales: Sequence[float] = (1.0,), **kwargs) -> MergeResult:
  """:func:`finetune_digit_tasks` (with ``kwargs``) then :func:`compare_merges`."""
  tasks = finetune_digit_tasks(**kwargs)
  return compare_merges(tasks, scales)
