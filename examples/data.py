"""The examples' data: scikit-learn's digits and MNIST-1D, split into train, validation and test.

Both are local: the digits ship with scikit-learn, and MNIST-1D is generated
by the ``mnist1d`` package's ``make_dataset`` (never ``get_dataset``, which
downloads). Inputs are float32, labels int32.
"""

import math
from typing import NamedTuple

import numpy as np

NUM_CLASSES = 10


class Split(NamedTuple):
  """Inputs ``(n, features)`` and integer labels ``(n,)``."""

  inputs: np.ndarray
  labels: np.ndarray


class Dataset(NamedTuple):
  """Train, validation (possibly empty) and test splits of one data set."""

  name: str
  train: Split
  val: Split
  test: Split
  num_classes: int = NUM_CLASSES


def _take(inputs, labels, indices) -> Split:
  return Split(inputs[indices], labels[indices])


def digits_arrays() -> Split:
  """All 1797 of scikit-learn's 8x8 digits, pixels scaled to [0, 1], in their stored order."""
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  return Split((x / 16.0).astype(np.float32), y.astype(np.int32))


def mnist1d_arrays(
  num_samples: int | None = None, seed: int = 42, **changes
) -> tuple[Split, Split]:
  """MNIST-1D's training pool and test set from ``mnist1d.data.make_dataset`` (no download).

  Args:
    num_samples: samples generated; the package keeps 4/5 as the training
      pool, 1/5 as the test set. ``None``: the package's 5000.
    seed: the generator's seed (42 is the standard MNIST-1D).
    **changes: other arguments of the generator (``shear_scale``, ...), for
      shifted versions of the task.
  """
  from mnist1d.data import get_dataset_args
  from mnist1d.data import make_dataset

  args = get_dataset_args()
  unknown = set(changes) - set(vars(args))
  if unknown:
    raise ValueError(f"Unknown MNIST-1D generator arguments {sorted(unknown)}: see mnist1d.data.")
  vars(args).update(changes, seed=seed)
  if num_samples is not None:
    args.num_samples = num_samples
  generated = make_dataset(args)
  split = lambda x, y: Split(generated[x].astype(np.float32), generated[y].astype(np.int32))
  return split("x", "y"), split("x_test", "y_test")


def digits(num_train: int | None = None, num_val: int = 0, num_test: int = 360, seed: int = 0):
  """scikit-learn's 8x8 digits (1797), pixels scaled to [0, 1], shuffled with ``seed``.

  The test split comes first in the shuffled order, then validation, then
  train; ``num_train=None`` takes all the rest.
  """
  x, y = digits_arrays()
  num_train = len(y) - num_test - num_val if num_train is None else num_train
  if min(num_train, num_val, num_test) < 0 or num_train + num_val + num_test > len(y):
    raise ValueError(
      f"Split sizes {num_train}/{num_val}/{num_test} (train/val/test) do not fit the "
      f"{len(y)} digits: make them non-negative with a sum of at most {len(y)}."
    )
  order = np.random.default_rng(seed).permutation(len(y))
  bounds = np.cumsum([0, num_test, num_val, num_train])
  test, val, train = (order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
  return Dataset("digits", _take(x, y, train), _take(x, y, val), _take(x, y, test))


def mnist1d(
  num_train: int | None = None,
  num_val: int = 0,
  num_test: int = 1000,
  seed: int = 0,
  data_seed: int = 42,
):
  """MNIST-1D (Greydanus, 2020), generated locally by ``mnist1d.data.make_dataset``.

  The package splits its samples 80/20 into a training pool and a test set;
  with the defaults (4000 + 1000 samples, ``data_seed`` 42) that is the
  standard MNIST-1D. Validation examples are drawn from the training pool
  with ``seed``, never from the test set; ``num_train=None`` takes the rest.
  """
  pool_needed = 4000 if num_train is None else num_train + num_val
  # make_dataset keeps 4/5 of num_samples as the training pool.
  num_samples = 5 * max(math.ceil(pool_needed / 4), num_test)
  (x, y), generated_test = mnist1d_arrays(num_samples, seed=data_seed)
  num_train = len(y) - num_val if num_train is None else num_train
  if min(num_train, num_val, num_test) < 0 or num_train + num_val > len(y):
    raise ValueError(
      f"Split sizes {num_train}/{num_val} (train/val) exceed MNIST-1D's training pool of "
      f"{len(y)}: lower them."
    )
  order = np.random.default_rng(seed).permutation(len(y))
  val, train = order[:num_val], order[num_val : num_val + num_train]
  test = Split(generated_test.inputs[:num_test], generated_test.labels[:num_test])
  return Dataset("mnist1d", _take(x, y, train), _take(x, y, val), test)


def load(name: str, **sizes) -> Dataset:
  """The data set ``name`` ('digits' or 'mnist1d'); ``sizes`` go to its loader."""
  loaders = {"digits": digits, "mnist1d": mnist1d}
  if name not in loaders:
    raise ValueError(f"Unknown dataset {name!r}: use 'digits' or 'mnist1d'.")
  return loaders[name](**sizes)


# --- A 1-D regression with a gap in the data ------------------------------------------

REGRESSION_INTERVALS = ((-3.0, -1.5), (1.5, 3.0))  # where the data lie
REGRESSION_GAP = (-0.75, 0.75)
REGRESSION_OUTSIDE = (3.5, 4.0)  # |x| in this range: beyond both ends of the data.
REGRESSION_NOISE_STD = 0.1


def true_function(x: np.ndarray) -> np.ndarray:
  """The curve the 1-D regression samples: ``sin(2x) + 0.3 x``."""
  return np.sin(2.0 * x) + 0.3 * x


def regression_1d(num_points: int = 1000, seed: int = 0) -> Split:
  """Noisy samples of :func:`true_function`, half on each of ``REGRESSION_INTERVALS``.

  Inputs ``(n, 1)`` and float32 targets ``(n,)``.
  """
  if num_points < 2:
    raise ValueError(f"`num_points`={num_points}: use at least 2 (one per interval).")
  rng = np.random.default_rng(seed)
  intervals = REGRESSION_INTERVALS
  x = np.concatenate([rng.uniform(low, high, num_points // 2) for low, high in intervals])
  y = true_function(x) + REGRESSION_NOISE_STD * rng.normal(size=x.shape)
  return Split(x[:, None].astype(np.float32), y.astype(np.float32))


def regression_regions(x: np.ndarray) -> dict:
  """Boolean masks of 1-D points ``x``: on the data, in the gap, outside the data."""
  on_data = np.zeros_like(x, bool)
  for low, high in REGRESSION_INTERVALS:
    on_data |= (x >= low) & (x <= high)
  return {
    "data": on_data,
    "gap": (x >= REGRESSION_GAP[0]) & (x <= REGRESSION_GAP[1]),
    "outside": (np.abs(x) >= REGRESSION_OUTSIDE[0]) & (np.abs(x) <= REGRESSION_OUTSIDE[1]),
  }
