"""The data-parallel IVON steps that the multi-device tests compare.

Shared by ``tests/eight_devices.py`` (one process, 8 simulated devices),
``tests/multihost_worker.py`` (2 processes of 4 devices) and
``tests/test_sharding.py`` (the single-device references). Not collected by
pytest on its own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ivon_optax

NUM_FEATURES, NUM_HIDDEN, NUM_CLASSES = 16, 32, 8
BATCH_SIZE = 64
SEED = 0


def make_params(seed: int = SEED) -> dict:
  """A two-layer MLP's params; widths divisible by 8 so that every leaf can be sharded."""
  key_1, key_2 = jax.random.split(jax.random.key(seed))
  return {
    "dense_1": {
      "kernel": jax.random.normal(key_1, (NUM_FEATURES, NUM_HIDDEN)) / NUM_FEATURES**0.5,
      "bias": jnp.zeros(NUM_HIDDEN),
    },
    "dense_2": {
      "kernel": jax.random.normal(key_2, (NUM_HIDDEN, NUM_CLASSES)) / NUM_HIDDEN**0.5,
      "bias": jnp.zeros(NUM_CLASSES),
    },
  }


def make_batch(step: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
  """A batch of a fixed random linear classification problem (numpy, host memory)."""
  rng = np.random.default_rng(seed)
  teacher = rng.normal(size=(NUM_FEATURES, NUM_CLASSES))
  rng = np.random.default_rng([seed, step])
  inputs = rng.normal(size=(BATCH_SIZE, NUM_FEATURES)).astype(np.float32)
  labels = np.argmax(inputs @ teacher, axis=-1).astype(np.int32)
  return inputs, labels


def loss_fn(params, inputs, labels):
  """Mean cross-entropy of the MLP over the batch."""
  hidden = jnp.tanh(inputs @ params["dense_1"]["kernel"] + params["dense_1"]["bias"])
  logits = hidden @ params["dense_2"]["kernel"] + params["dense_2"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_tx(axis_name=None, hess_approx="price"):
  return ivon_optax.ivon(
    learning_rate=0.2, ess=1000.0, hess_init=0.5, hess_approx=hess_approx, axis_name=axis_name
  )


def step_key(step, seed: int = SEED):
  """Each step's key, ``fold_in(base_key, step)``: no key lives in any state."""
  return jax.random.fold_in(jax.random.key(seed), step)


def one_sample_step(tx):
  """One IVON step with one weight sample; flavour 1 jits it over a mesh as is."""

  def step(params, state, step, inputs, labels):
    sampled, noise = ivon_optax.sample_params(step_key(step), state, params)
    grads = jax.grad(loss_fn)(sampled, inputs, labels)
    updates, state = tx.update(grads, state, params, noise=noise)
    return optax.apply_updates(params, updates), state

  return step


def sync_step(tx, mesh, axis_name: str = "data"):
  """Flavour 2: under shard_map each device draws its own sample of the weights.

  Device ``w`` uses the key ``fold_in(step_key(step), w)`` and its shard of the
  batch; ``tx`` (built with ``axis_name``) averages the gradients and the
  Hessian statistic over the devices before the step.
  """

  def per_device(params, state, step, inputs, labels):
    key = jax.random.fold_in(step_key(step), jax.lax.axis_index(axis_name))
    sampled, noise = ivon_optax.sample_params(key, state, params)
    grads = jax.grad(loss_fn)(sampled, inputs, labels)
    updates, state = tx.update(grads, state, params, noise=noise)
    return optax.apply_updates(params, updates), state

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(P(), P(), P(), P(axis_name), P(axis_name)),
      out_specs=(P(), P()),
    )
  )


def reference_sync_step(tx, num_devices: int, hess_approx: str = "price"):
  """Flavour 2 on one device: the same ``num_devices`` samples, averaged by ``average_samples``."""

  def step(params, state, step, inputs, labels):
    def one_sample(device, inputs, labels):
      key = jax.random.fold_in(step_key(step), device)
      sampled, noise = ivon_optax.sample_params(key, state, params)
      return jax.grad(loss_fn)(sampled, inputs, labels), noise

    shard = lambda x: x.reshape(num_devices, -1, *x.shape[1:])
    grads, noise = jax.vmap(one_sample)(jnp.arange(num_devices), shard(inputs), shard(labels))
    average = ivon_optax.average_samples(grads, noise, hess_approx=hess_approx)
    updates, state = tx.update(average.grads, state, params, samples=average)
    return optax.apply_updates(params, updates), state

  return jax.jit(step)


def global_array(value, sharding):
  """A global array from a value every process holds in full (works across hosts)."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicated(tree, mesh):
  return jax.tree.map(lambda x: global_array(x, NamedSharding(mesh, P())), tree)
