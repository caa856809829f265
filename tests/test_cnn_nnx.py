"""The NNX CNN example (examples/cnn_nnx.py) on a tiny budget, in process.

IVON, configured by ``recipe``, must learn ``h`` from the data within a few
dozen steps and fit the data; the Bayesian average must use the BatchNorm
statistics of each weight sample, which predict better than the running ones.
"""

import os
import sys

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import cnn_nnx  # noqa: E402
import data  # noqa: E402

import ivon_optax  # noqa: E402


def _nll(log_probs, labels):
  return float(ivon_optax.metrics.negative_log_likelihood(log_probs, jnp.asarray(labels)))


@pytest.mark.study
def test_ivon_learns_h_and_fits_and_refreshes_batch_statistics():
  split = data.mnist1d(num_train=256, num_test=64).train
  values = {"learning_rate": 16.0, "temper": 16.0}
  # 16 epochs of 2 batches: 32 steps, warm-up 2 epochs.
  model, optimizer, losses = cnn_nnx.train("ivon", values, split, seed=0, epochs=16, warmup=2)
  untrained = cnn_nnx.CNN(split.inputs.shape[1], cnn_nnx.CHANNELS, 10, rngs=nnx.Rngs(0))
  logs = cnn_nnx.ivon_diagnostics(model, optimizer)
  assert logs["learned"] and logs["hess_data_share"] > 0.2, logs
  assert logs["step"] == 32
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
  inputs = jnp.asarray(split.inputs)
  untrained_nll = _nll(cnn_nnx.mean_log_probs(cnn_nnx.eval_view(untrained), inputs), split.labels)

  view, key = cnn_nnx.eval_view(model), jax.random.key(3)
  bayes = lambda refresh: cnn_nnx.bayes_log_probs(
    key, optimizer, view, inputs, inputs, 1.0, num_samples=4, refresh=refresh
  )
  refreshed, running = bayes(True), bayes(False)
  # The same weight samples; only the BatchNorm statistics differ. The running
  # averages, gathered at other samples while the weights moved, fit none of them.
  refreshed_nll, running_nll = _nll(refreshed, split.labels), _nll(running, split.labels)
  assert refreshed_nll < untrained_nll - 0.5, (refreshed_nll, untrained_nll)
  assert refreshed_nll < running_nll - 0.1, (refreshed_nll, running_nll)
  # Predicting leaves the model's running statistics as they were.
  np.testing.assert_array_equal(
    cnn_nnx.mean_log_probs(view, inputs), cnn_nnx.mean_log_probs(cnn_nnx.eval_view(model), inputs)
  )
