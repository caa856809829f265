"""Shared pieces of the examples: data, the MLP, optimizers, the training loop, evaluation.

Every example trains the same Flax Linen MLP with IVON and with the
baselines (AdamW, SGD), on embedded or locally generated data (no downloads).
"""

import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

import ivon_optax
import ivon_optax.flax

matplotlib.use("Agg")

OPTIMIZERS = ("sgd", "adamw", "ivon")

# --- Data ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification (or regression) data set, split into train and test."""

  name: str
  x_train: np.ndarray  # (num_train, num_features), float32.
  y_train: np.ndarray  # (num_train,), int32 labels (float32 targets for regression).
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int  # 0 for regression.


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn), pixels scaled to [0, 1]."""
  from sklearn.datasets import load_digits as sklearn_digits
  from sklearn.model_selection import train_test_split

  x, y = sklearn_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = train_test_split(
    (x / 16.0).astype(np.float32),
    y.astype(np.int32),
    test_size=test_fraction,
    random_state=seed,
    stratify=y,
  )
  return Dataset("digits", x_train, y_train, x_test, y_test, 10)


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
  """MNIST-1D (Greydanus, 2020), generated locally by the ``mnist1d`` package.

  ``make_dataset`` builds the signals from the package's templates; unlike
  ``get_dataset`` it never downloads. The defaults (5000 samples, seed 42)
  give the standard 4000/1000 split.
  """
  from mnist1d.data import get_dataset_args
  from mnist1d.data import make_dataset

  args = get_dataset_args()
  args.num_samples, args.seed = num_samples, seed
  data = make_dataset(args)
  return Dataset(
    "mnist1d",
    data["x"].astype(np.float32),
    data["y"].astype(np.int32),
    data["x_test"].astype(np.float32),
    data["y_test"].astype(np.int32),
    10,
  )


def load_dataset(name: str, seed: int = 0) -> Dataset:
  """The data set ``name``: 'digits' or 'mnist1d'."""
  if name == "digits":
    return load_digits(seed)
  if name == "mnist1d":
    return load_mnist1d()
  raise ValueError(f"Unknown dataset {name!r}: use 'digits' or 'mnist1d'.")


def validation_split(data: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
  """A train/validation split of ``data``'s training set (the test set is left unused)."""
  order = np.random.default_rng(seed).permutation(len(data.y_train))
  num_val = round(fraction * len(order))
  val, train = order[:num_val], order[num_val:]
  return Dataset(
    data.name + "-val",
    data.x_train[train],
    data.y_train[train],
    data.x_train[val],
    data.y_train[val],
    data.num_classes,
  )


# --- Model and optimizers --------------------------------------------------------


class MLP(nn.Module):
  """A ReLU multilayer perceptron."""

  hidden: Sequence[int]
  num_outputs: int

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs)(x)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """One optimizer's hyperparameters; all use linear warm-up then cosine decay to 0."""

  name: str  # 'sgd', 'adamw' or 'ivon'.
  learning_rate: float
  weight_decay: float
  momentum: float = 0.9  # SGD's momentum.
  hess_init: float = 0.1  # IVON's h0.
  beta2: float = 0.99999  # IVON's Hessian decay.
  train_samples: int = 1  # IVON's Monte-Carlo weight samples per step.
  warmup_epochs: int = 5

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"Unknown optimizer {self.name!r}: use one of {OPTIMIZERS}.")


# Chosen by examples/sweep_classifier.py (lowest validation NLL on a split of the
# training set, 2 seeds, 256-256 MLP, 60 epochs, batch 128); see docs/readme/prediction.md.
# "ivon-4mc" draws 4 weight samples per step (4x the gradient evaluations).
CLASSIFIER_CONFIGS = {
  "digits": {
    "sgd": OptimizerConfig("sgd", learning_rate=0.3, weight_decay=1e-4),
    "adamw": OptimizerConfig("adamw", learning_rate=0.03, weight_decay=0.1),
    "ivon": OptimizerConfig(
      "ivon", learning_rate=2.0, weight_decay=1e-4, hess_init=0.3, beta2=0.999
    ),
    "ivon-4mc": OptimizerConfig(
      "ivon", learning_rate=4.0, weight_decay=1e-3, hess_init=1.0, beta2=0.999, train_samples=4
    ),
  },
  "mnist1d": {
    "sgd": OptimizerConfig("sgd", learning_rate=0.3, weight_decay=1e-3),
    "adamw": OptimizerConfig("adamw", learning_rate=0.03, weight_decay=0.5),
    "ivon": OptimizerConfig(
      "ivon", learning_rate=4.0, weight_decay=1e-3, hess_init=0.3, beta2=0.999
    ),
    "ivon-4mc": OptimizerConfig(
      "ivon", learning_rate=4.0, weight_decay=1e-3, hess_init=0.3, beta2=0.999, train_samples=4
    ),
  },
}


@functools.lru_cache(maxsize=64)
def make_optimizer(
  config: OptimizerConfig, num_train: int, steps_per_epoch: int, epochs: int
) -> optax.GradientTransformation:
  """The optax optimizer of ``config``; IVON's ess is the training-set size, as the paper advises.

  Cached, so that runs with the same settings reuse one optimizer object and
  hence one compiled training step.
  """
  warmup = min(config.warmup_epochs, epochs) * steps_per_epoch
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, config.learning_rate, warmup, max(epochs * steps_per_epoch, warmup + 1)
  )
  if config.name == "ivon":
    return ivon_optax.ivon(
      schedule,
      ess=float(num_train),
      hess_init=config.hess_init,
      beta2=config.beta2,
      weight_decay=config.weight_decay,
    )
  if config.name == "adamw":
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule, momentum=config.momentum)
  )


# --- Training --------------------------------------------------------------------

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _train_step(state, key, inputs, targets, loss_fn: LossFn, train_samples: int):
  def loss_at(params):
    return loss_fn(state.apply_fn(state.variables(params), inputs), targets)

  if not isinstance(state, ivon_optax.flax.TrainState):
    loss, grads = jax.value_and_grad(loss_at)(state.params)
    return state.apply_gradients(grads=grads), loss
  if train_samples == 1:
    sampled, noise = state.sample_params(key)
    loss, grads = jax.value_and_grad(loss_at)(sampled)
    return state.apply_gradients(grads=grads, noise=noise), loss

  def loss_and_grad_at_sample(sample_key):
    sampled, noise = state.sample_params(sample_key)
    loss, grads = jax.value_and_grad(loss_at)(sampled)
    return loss, grads, noise

  losses, grads, noise = jax.vmap(loss_and_grad_at_sample)(jax.random.split(key, train_samples))
  average = ivon_optax.average_samples(grads, noise)
  return state.apply_gradients(grads=average.grads, samples=average), jnp.mean(losses)


class BaselineTrainState(train_state.TrainState):
  """Flax's ``TrainState`` with the ``variables`` method of ``ivon_optax.flax.TrainState``."""

  def variables(self, params=None):
    return {"params": self.params if params is None else params}


@dataclasses.dataclass
class TrainResult:
  """A trained model and its optimizer state."""

  state: train_state.TrainState
  config: OptimizerConfig
  losses: list  # mean training loss per epoch.


@functools.partial(jax.jit, static_argnames=("loss_fn", "batch_size", "train_samples"))
def _run_epoch(
  state, epoch_key, sample_key, x_train, y_train, *, loss_fn, batch_size, train_samples
):
  num_train = x_train.shape[0]
  steps_per_epoch = num_train // batch_size
  order = jax.random.permutation(epoch_key, num_train)
  batches = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

  def step(state, batch):
    key = jax.random.fold_in(sample_key, state.step)
    return _train_step(state, key, x_train[batch], y_train[batch], loss_fn, train_samples)

  state, losses = jax.lax.scan(step, state, batches)
  return state, jnp.mean(losses)


def train(
  model: nn.Module,
  config: OptimizerConfig,
  x_train: np.ndarray,
  y_train: np.ndarray,
  *,
  epochs: int,
  batch_size: int,
  seed: int,
  loss_fn: LossFn = softmax_cross_entropy,
  progress: bool = True,
) -> TrainResult:
  """Trains ``model`` with ``config``'s optimizer for ``epochs`` passes over shuffled mini-batches.

  Each epoch is one jitted ``lax.scan`` over its mini-batches (the last,
  incomplete one is dropped). IVON draws ``config.train_samples`` weight
  samples per step (vmapped; their gradients averaged with
  ``ivon_optax.average_samples``). Runs that differ only in ``seed`` share one
  compiled epoch.
  """
  num_train = len(y_train)
  batch_size = min(batch_size, num_train)
  tx = make_optimizer(config, num_train, num_train // batch_size, epochs)
  init_key, data_key, sample_key = jax.random.split(jax.random.key(seed), 3)
  params = model.init(init_key, jnp.asarray(x_train[:1]))["params"]
  state_class = ivon_optax.flax.TrainState if config.name == "ivon" else BaselineTrainState
  state = state_class.create(apply_fn=model.apply, params=params, tx=tx)
  state = state.replace(step=jnp.zeros([], jnp.int32))
  x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)

  losses = []
  with tqdm(range(epochs), desc=f"{config.name:>5}", disable=not progress, leave=False) as bar:
    for epoch in bar:
      state, loss = _run_epoch(
        state,
        jax.random.fold_in(data_key, epoch),
        sample_key,
        x_train,
        y_train,
        loss_fn=loss_fn,
        batch_size=batch_size,
        train_samples=config.train_samples,
      )
      losses.append(float(loss))
      bar.set_postfix(loss=f"{losses[-1]:.3f}")
  return TrainResult(state, config, losses)


# --- Prediction and evaluation ---------------------------------------------------


@jax.jit
def _apply_at_mean(state, inputs):
  return state.apply_fn(state.variables(), inputs)


def predict_at_mean(state, inputs: np.ndarray) -> jax.Array:
  """The model's outputs at the mean (or point-estimate) weights."""
  return _apply_at_mean(state, jnp.asarray(inputs))


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_samples"))
def _sample_outputs(apply_fn, opt_state, params, key, inputs, *, num_samples):
  return ivon_optax.flax.sample_linen_outputs(
    key, apply_fn, opt_state, {"params": params}, inputs, num_samples=num_samples, batch_size=16
  )


def predict_samples(state, key, inputs: np.ndarray, num_samples: int) -> jax.Array:
  """IVON's outputs at ``num_samples`` posterior samples, stacked on axis 0 (16 at a time)."""
  return _sample_outputs(
    state.apply_fn, state.opt_state, state.params, key, jnp.asarray(inputs), num_samples=num_samples
  )


def classification_metrics(log_probs: jax.Array, labels: np.ndarray) -> dict:
  """Test accuracy, NLL, ECE (15 bins) and Brier score of normalized log probabilities."""
  labels = jnp.asarray(labels)
  return {
    "accuracy": float(ivon_optax.metrics.accuracy(log_probs, labels)),
    "nll": float(ivon_optax.metrics.negative_log_likelihood(log_probs, labels)),
    "ece": float(ivon_optax.metrics.expected_calibration_error(log_probs, labels)),
    "brier": float(ivon_optax.metrics.brier_score(log_probs, labels)),
  }


METRIC_NAMES = {"accuracy": "accuracy ↑", "nll": "NLL ↓", "ece": "ECE ↓", "brier": "Brier ↓"}


def format_table(rows: dict, digits: int = 3) -> str:
  """A markdown table of ``{method: {metric: [values over seeds]}}``, mean ± std over seeds."""
  metrics = list(next(iter(rows.values())))
  header = "| method | " + " | ".join(METRIC_NAMES.get(m, m) for m in metrics) + " |"
  lines = [header, "|---" * (len(metrics) + 1) + "|"]
  for method, values in rows.items():
    cells = []
    for metric in metrics:
      seeds = np.asarray(values[metric], np.float64)
      cell = f"{seeds.mean():.{digits}f}"
      if len(seeds) > 1:
        cell += f" ± {seeds.std(ddof=0):.{digits}f}"
      cells.append(cell)
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_reliability(
  curves: dict, labels: np.ndarray, path: str, title: str, num_bins: int = 15
) -> None:
  """Saves a reliability diagram: accuracy against confidence per bin, one line per method.

  Markers are sized by the bin's share of the examples; the legend gives each
  method's ECE on these predictions.
  """
  import matplotlib.pyplot as plt

  fig, (ax_diagram, ax_count) = plt.subplots(
    2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
  )
  ax_diagram.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
  width = 1.0 / num_bins
  for method, log_probs in curves.items():
    bins = ivon_optax.metrics.calibration_bins(log_probs, jnp.asarray(labels), num_bins)
    filled = np.asarray(bins.count) > 0
    ece = float(
      ivon_optax.metrics.expected_calibration_error(log_probs, jnp.asarray(labels), num_bins)
    )
    share = np.asarray(bins.count)[filled] / len(labels)
    (line,) = ax_diagram.plot(
      np.asarray(bins.confidence)[filled],
      np.asarray(bins.accuracy)[filled],
      linewidth=1,
      label=f"{method} (ECE {ece:.3f})",
    )
    ax_diagram.scatter(
      np.asarray(bins.confidence)[filled],
      np.asarray(bins.accuracy)[filled],
      s=4 + 200 * share,
      color=line.get_color(),
    )
    ax_count.step(
      (np.arange(num_bins) + 0.5) * width,
      np.asarray(bins.count) / len(labels),
      where="mid",
      label=method,
    )
  ax_diagram.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
  ax_diagram.legend(loc="upper left", fontsize=8)
  ax_count.set(xlabel="confidence (top-class probability)", ylabel="fraction", yscale="log")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def describe(config: OptimizerConfig) -> str:
  """A short description of ``config``'s hyperparameters."""
  text = f"lr {config.learning_rate:g}, wd {config.weight_decay:g}"
  if config.name == "ivon":
    text += f", h0 {config.hess_init:g}, beta2 {config.beta2:g}, ess = N"
    if config.train_samples > 1:
      text += f", {config.train_samples} samples/step"
  if config.name == "sgd":
    text += f", momentum {config.momentum:g}"
  return text
