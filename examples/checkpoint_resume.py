"""Interruptible IVON training: checkpoint the full train state with Orbax, resume exactly.

Trains an MLP on scikit-learn's digits with IVON and a warm-up + cosine
learning-rate schedule. The train state saved every ``--save-every`` steps holds

* the params (the posterior mean),
* the whole optimizer state: IVON's step count, momentum and Hessian, and the
  schedule's step count,
* the data loader's position (epoch, batch within the epoch).

No PRNG key is saved: step ``t`` draws its weight sample with
``fold_in(base_key, t)`` and epoch ``e`` shuffles with ``seed + e``, so a run
that is stopped and resumed is bit-identical to one that never stopped. Run it
twice with the same ``--checkpoint-dir``: the second run continues from the
last complete checkpoint::

  python examples/checkpoint_resume.py --stop-at 150 --checkpoint-dir /tmp/ivon_run
  python examples/checkpoint_resume.py --checkpoint-dir /tmp/ivon_run

With ``--devices N`` (N > 1) it trains on N simulated CPU devices, the batch
sharded over a ``data`` mesh axis and the params and IVON state FSDP-sharded
over an ``fsdp`` axis; the checkpoint restores on any other layout (e.g. a
run saved on 8 devices continues on 1).
"""

import argparse
import os
import sys
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--total-steps",
    type=int,
    default=300,
    help="the run's length, which the learning-rate schedule spans",
  )
  parser.add_argument(
    "--stop-at",
    type=int,
    default=None,
    help="stop (and checkpoint) at this step, as if interrupted",
  )
  parser.add_argument("--save-every", type=int, default=100)
  parser.add_argument("--checkpoint-dir", required=True)
  parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices > 1:
  # Must precede the first use of jax's CPU backend.
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
  )

import data  # noqa: E402 (after the device count is set)
import jax  # noqa: E402 (after the device count is set)
import jax.numpy as jnp  # noqa: E402 (after the device count is set)
import models  # noqa: E402 (after the device count is set)
import numpy as np  # noqa: E402 (after the device count is set)
import optax  # noqa: E402 (after the device count is set)
import orbax.checkpoint as ocp  # noqa: E402 (after the device count is set)
from jax.sharding import AxisType  # noqa: E402 (after the device count is set)
from jax.sharding import NamedSharding  # noqa: E402 (after the device count is set)
from jax.sharding import PartitionSpec as P  # noqa: E402 (after the device count is set)

import ivon_optax  # noqa: E402 (after the device count is set)
import ivon_optax.checkpoint  # noqa: E402 (after the device count is set)


def make_optimizer(total_steps: int, num_train: int):
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=1.0, warmup_steps=total_steps // 10, decay_steps=total_steps
  )
  return ivon_optax.ivon(schedule, ess=float(num_train), hess_init=0.5, weight_decay=1e-3)


def batch_indices(loader, num_train: int, batch_size: int, seed: int):
  """The example indices at the loader position; each epoch is a fresh shuffle."""
  order = np.random.default_rng([seed, int(loader["epoch"])]).permutation(num_train)
  start = int(loader["index"]) * batch_size
  return order[start : start + batch_size]


def advance(loader, num_train: int, batch_size: int):
  batches_per_epoch = num_train // batch_size
  index = int(loader["index"]) + 1
  if index == batches_per_epoch:
    return {"epoch": int(loader["epoch"]) + 1, "index": 0}
  return {"epoch": int(loader["epoch"]), "index": index}


def make_mesh(num_devices: int):
  fsdp = 2 if num_devices % 2 == 0 else 1
  return jax.make_mesh(
    (num_devices // fsdp, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2
  )


def initial_state(model, tx, mesh, seed: int):
  """Step 0's train state, laid out on ``mesh``."""
  params = model.init(jax.random.key(seed), jnp.zeros((1, 64)))["params"]
  params = jax.device_put(
    params,
    jax.tree.map(lambda p: NamedSharding(mesh, models.fsdp_spec(p, mesh.shape["fsdp"])), params),
  )
  opt_state = jax.jit(
    tx.init,
    out_shardings=ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params),
  )(params)
  replicated = NamedSharding(mesh, P())
  return {
    "params": params,
    "opt_state": opt_state,
    "step": jax.device_put(jnp.zeros([], jnp.int32), replicated),
    "loader": {"epoch": 0, "index": 0},
  }


def make_train_step(model, tx, base_key):
  """Step ``t`` takes the gradient at the weight sample of ``fold_in(base_key, t)``."""
  loss_fn = lambda params, x, y: models.cross_entropy(model.apply({"params": params}, x), y)
  step_fn = models.train_step(tx, loss_fn)

  @jax.jit
  def train_step(params, opt_state, step, inputs, labels):
    key = jax.random.fold_in(base_key, step)
    params, opt_state, loss = step_fn(key, params, opt_state, inputs, labels)
    return params, opt_state, step + 1, loss

  return train_step


def train(args) -> dict:
  """Trains to ``args.stop_at`` (default: the end), resuming from the checkpoint directory."""
  digits = data.digits(num_train=1500, num_test=297)
  (train_x, train_y), (test_x, test_y) = digits.train, digits.test
  model = models.MLP((128,))
  tx = make_optimizer(args.total_steps, len(train_x))
  stop_at = args.total_steps if args.stop_at is None else min(args.stop_at, args.total_steps)
  mesh = make_mesh(jax.device_count())
  batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
  manager = ocp.CheckpointManager(
    os.path.abspath(args.checkpoint_dir),
    item_handlers=ocp.StandardCheckpointHandler(),
    options=ocp.CheckpointManagerOptions(max_to_keep=3, save_interval_steps=args.save_every),
  )
  state = initial_state(model, tx, mesh, args.seed)
  if manager.latest_step() is not None:
    state = ivon_optax.checkpoint.restore(manager, state)
    # Restored into this run's layout, whatever layout wrote it.
    ivon_optax.sharding.check_state_sharding(state["opt_state"], state["params"])
    print(
      f"resumed at step {int(state['step'])} (epoch {state['loader']['epoch']}, "
      f"batch {state['loader']['index']}) on {jax.device_count()} device(s)"
    )
  train_step = make_train_step(model, tx, jax.random.key(args.seed))
  start, losses = time.perf_counter(), []
  while int(state["step"]) < stop_at:
    indices = batch_indices(state["loader"], len(train_x), args.batch_size, args.seed)
    batch = jax.device_put((train_x[indices], train_y[indices]), batch_sharding)
    params, opt_state, step, loss = train_step(
      state["params"], state["opt_state"], state["step"], *batch
    )
    state = {
      "params": params,
      "opt_state": opt_state,
      "step": step,
      "loader": advance(state["loader"], len(train_x), args.batch_size),
    }
    losses.append(float(loss))
    # Saves every `save_every` steps, and where this run stops.
    manager.save(int(step), args=ocp.args.StandardSave(state), force=int(step) == stop_at)
  manager.wait_until_finished()
  manager.close()
  logits = model.apply({"params": state["params"]}, test_x)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_y))
  ivon_state = ivon_optax.find_ivon_state(state["opt_state"])
  print(
    f"step {int(state['step'])}: IVON count {int(ivon_state.count)}, "
    f"mean train loss of this run's last 50 steps "
    f"{np.mean(losses[-50:]) if losses else float('nan'):.4f}, "
    f"test accuracy at the mean {accuracy:.3f}, "
    f"{time.perf_counter() - start:.1f}s for {len(losses)} steps"
  )
  models.report_diagnostics(*jax.device_get((state["opt_state"], state["params"])))
  return state


if __name__ == "__main__":
  train(ARGS)
  sys.exit(0)
