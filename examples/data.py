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


def digits(num_train: int | None = None, num_val: int = 0, num_test: int = 360, seed: int = 0):
  """scikit-learn's 8x8 digits (1797), pixels scaled to [0, 1], shuffled with ``seed``.

  The test split comes first in the shuffled order, then validation, then
  train; ``num_train=None`` takes all the rest.
  """
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
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
  from mnist1d.data import get_dataset_args
  from mnist1d.data import make_dataset

  pool_needed = 4000 if num_train is None else num_train + num_val
  args = get_dataset_args()
  # make_dataset keeps 4/5 of num_samples as the training pool.
  args.num_samples = 5 * max(math.ceil(pool_needed / 4), num_test)
  args.seed = data_seed
  generated = make_dataset(args)
  x, y = generated["x"].astype(np.float32), generated["y"].astype(np.int32)
  num_train = len(y) - num_val if num_train is None else num_train
  if min(num_train, num_val, num_test) < 0 or num_train + num_val > len(y):
    raise ValueError(
      f"Split sizes {num_train}/{num_val} (train/val) exceed MNIST-1D's training pool of "
      f"{len(y)}: lower them."
    )
  order = np.random.default_rng(seed).permutation(len(y))
  val, train = order[:num_val], order[num_val : num_val + num_train]
  test = Split(
    generated["x_test"][:num_test].astype(np.float32),
    generated["y_test"][:num_test].astype(np.int32),
  )
  return Dataset("mnist1d", _take(x, y, train), _take(x, y, val), test)


def load(name: str, **sizes) -> Dataset:
  """The data set ``name`` ('digits' or 'mnist1d'); ``sizes`` go to its loader."""
  loaders = {"digits": digits, "mnist1d": mnist1d}
  if name not in loaders:
    raise ValueError(f"Unknown dataset {name!r}: use 'digits' or 'mnist1d'.")
  return loaders[name](**sizes)
