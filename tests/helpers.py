"""Shared test helpers: a small regression problem, a digits MLP and IVON training loops.

Tests import these directly (``from helpers import ...``); ``conftest.py`` only
holds fixtures and collection rules.
"""

import functools
import itertools
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ivon_optax

NUM_CLASSES = 10

# --- A small regression problem -------------------------------------------------


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


# --- Digits and a tanh MLP ---------------------------------------------------------


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


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict]:
  """LeCun-normal weights and zero biases for layer widths ``sizes`` (inputs first)."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in), "b": jnp.zeros(fan_out)}
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
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


# --- Running the examples as scripts ---------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Compiling dominates the examples' tiny smoke runs; LLVM's optimizations are not needed.
FAST_COMPILE = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"


def run_example(name: str, tmp_path, *args) -> str:
  """Runs ``examples/NAME.py ARGS --out tmp_path`` as a script; returns its stdout."""
  command = [sys.executable, str(ROOT / "examples" / f"{name}.py"), *args, "--out", str(tmp_path)]
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_COMPILE}
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def load_json(tmp_path, name: str) -> dict:
  """The JSON file ``name`` an example wrote under ``tmp_path``."""
  with open(tmp_path / name) as file:
    return json.load(file)
