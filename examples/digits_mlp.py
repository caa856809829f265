"""The small digits MLP and data split shared by the scale-out examples."""

import flax.linen as nn
import numpy as np
from sklearn.datasets import load_digits


class MLP(nn.Module):
  hidden: int = 128

  @nn.compact
  def __call__(self, inputs):
    hidden = nn.relu(nn.Dense(self.hidden)(inputs))
    return nn.Dense(10)(hidden)


def load_data():
  """Digits, scaled to [0, 1], shuffled once and split 1500 / 297."""
  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  inputs = (digits.data[order] / 16.0).astype(np.float32)
  labels = digits.target[order].astype(np.int32)
  return (inputs[:1500], labels[:1500]), (inputs[1500:], labels[1500:])
