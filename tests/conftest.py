"""Shared fixtures: a small regression problem and an IVON train step."""

import pathlib

import jax
import jax.numpy as jnp
import optax
import pytest

import ivon_optax


def make_params(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(42), 2)
  return {
    "dense": {
      "kernel": jax.random.normal(keys[0], (4, 8), dtype) * 0.5,
      "bias": jnp.zeros((8,), dtype),
    },
    "out": {
      "kernel": jax.random.normal(keys[1], (8, 1), dtype) * 0.5,
      "bias": jnp.zeros((1,), dtype),
    },
  }


def make_batch(step, dtype=jnp.float32):
  inputs = jax.random.normal(jax.random.fold_in(jax.random.key(1), step), (16, 4), dtype)
  targets = jnp.sin(inputs.sum(axis=1, keepdims=True))
  return inputs, targets


def loss_fn(params, batch):
  inputs, targets = batch
  hidden = jnp.tanh(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
  outputs = hidden @ params["out"]["kernel"] + params["out"]["bias"]
  return jnp.mean((outputs - targets.astype(outputs.dtype)) ** 2)


def train_step(tx, params, state, key, batch):
  """One IVON step with one Monte-Carlo sample."""
  sampled, noise = ivon_optax.sample_params(key, state, params)
  grads = jax.grad(loss_fn)(sampled, batch)
  updates, state = tx.update(grads, state, params, noise=noise)
  return optax.apply_updates(params, updates), state


@pytest.fixture
def params():
  return make_params()


def pytest_ignore_collect(collection_path: pathlib.Path, config):
  """Collect ``eight_devices.py`` only in the 8-device process that runs it.

  ``test_distributed.py`` runs it in a subprocess with 8 simulated devices; the
  rest of the suite keeps one device and would otherwise import it (for
  doctests) only to skip it.
  """
  if collection_path.name == "eight_devices.py" and jax.device_count() != 8:
    return True
  return None
