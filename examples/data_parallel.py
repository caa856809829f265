"""Data-parallel IVON on simulated CPU devices, in JAX's two ways.

Flavour 1, ``jit`` over a mesh: the batch is sharded over a ``data`` axis and
the params and IVON's state are sharded FSDP-style over an ``fsdp`` axis. All
devices share one weight sample per step, so a step is the single-device step,
up to the order of float32 reductions.

Flavour 2, per-device samples (the reference's ``sync=True``): under
``shard_map`` each device draws its own weight sample (its key folded with
``lax.axis_index``) for its shard of the batch, and ``ivon(...,
axis_name='data')`` averages the gradients and the Hessian statistic
``noise * grad`` over the devices before the step: W devices give W Monte-Carlo
samples per step for the cost of one.

The script sets the device count before importing jax::

  python examples/data_parallel.py --devices 8 --steps 300

On real accelerators drop the flag; for several hosts call
``jax.distributed.initialize()`` first (see the README, "Scaling out").
"""

import argparse
import json
import os
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (even)")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="outputs", help="directory for the JSON of the table")
  return parser.parse_args(argv)


ARGS = parse_args()
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
from jax.sharding import AxisType  # noqa: E402 (after the device count is set)
from jax.sharding import NamedSharding  # noqa: E402 (after the device count is set)
from jax.sharding import PartitionSpec as P  # noqa: E402 (after the device count is set)

import ivon_optax  # noqa: E402 (after the device count is set)

MODEL = models.MLP((128,))


def loss_fn(params, inputs, labels):
  return models.cross_entropy(MODEL.apply({"params": params}, inputs), labels)


def make_optimizer(num_train: int, axis_name=None):
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=1.0, warmup_steps=ARGS.steps // 10, decay_steps=ARGS.steps
  )
  return ivon_optax.ivon(
    schedule, ess=float(num_train), hess_init=0.5, weight_decay=1e-3, axis_name=axis_name
  )


def batches(train_x, train_y):
  """The global batch of each step, from a fixed shuffle per epoch."""
  per_epoch = len(train_x) // ARGS.batch_size
  for step in range(ARGS.steps):
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([ARGS.seed, epoch]).permutation(len(train_x))
    chosen = order[index * ARGS.batch_size : (index + 1) * ARGS.batch_size]
    yield step, train_x[chosen], train_y[chosen]


def one_sample_step(tx, base_key):
  """One IVON step; jitted over a mesh it is flavour 1."""
  train_step = models.train_step(tx, loss_fn)

  def step_fn(params, opt_state, step, inputs, labels):
    return train_step(jax.random.fold_in(base_key, step), params, opt_state, inputs, labels)

  return step_fn


def mesh_data_parallel(params, train_x, train_y, base_key):
  """Flavour 1: the batch over 'data' x 'fsdp', params and IVON state FSDP over 'fsdp'."""
  fsdp = 2
  mesh = jax.make_mesh(
    (ARGS.devices // fsdp, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2
  )
  tx = make_optimizer(len(train_x))
  params = jax.device_put(
    params, jax.tree.map(lambda p: NamedSharding(mesh, models.fsdp_spec(p, fsdp)), params)
  )
  # Each state buffer laid out like its param; counts and scalars replicated.
  state_sharding = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params)
  opt_state = jax.jit(tx.init, out_shardings=state_sharding)(params)
  ivon_optax.sharding.check_state_sharding(opt_state, params)
  batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
  step_fn = jax.jit(one_sample_step(tx, base_key), donate_argnums=(0, 1))

  # Kept to check that the first step equals the one-device step.
  host_params, host_state = jax.device_get((params, opt_state))

  losses, start = [], None
  for step, inputs, labels in batches(train_x, train_y):
    params, opt_state, loss = step_fn(
      params, opt_state, step, *jax.device_put((inputs, labels), batch_sharding)
    )
    # Simulated devices share the host's few cores: letting steps queue up can
    # starve one step's collectives of threads, so wait for each step here.
    losses.append(float(loss))
    if step == 0:
      one_device, _, _ = jax.jit(one_sample_step(tx, base_key))(
        host_params, host_state, step, inputs, labels
      )
      gap = max(
        jax.tree.leaves(
          jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, one_device)
        )
      )
      print(
        f"flavour 1: first step on {ARGS.devices} devices vs 1 device, "
        f"max |diff| of the params = {gap:.1e}"
      )
      start = time.perf_counter()  # timing starts after compiling
  seconds_per_step = (time.perf_counter() - start) / max(ARGS.steps - 1, 1)
  kernel = params["Dense_0"]["kernel"]
  print(
    f"flavour 1: Dense_0 kernel {kernel.shape} sharded {kernel.sharding.spec}, "
    f"its Hessian {ivon_optax.find_ivon_state(opt_state).hess['Dense_0']['kernel'].sharding.spec}"
  )
  return params, opt_state, losses, seconds_per_step


def per_device_samples(params, train_x, train_y, base_key):
  """Flavour 2: each of the W devices draws its own weight sample; IVON averages over them."""
  mesh = jax.make_mesh((ARGS.devices,), ("data",))
  tx = make_optimizer(len(train_x), axis_name="data")
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)
  opt_state = jax.device_put(tx.init(params), replicated)

  train_step = models.train_step(tx, loss_fn)  # tx.update pmeans over 'data'

  def per_device(params, opt_state, step, inputs, labels):
    key = jax.random.fold_in(jax.random.fold_in(base_key, step), jax.lax.axis_index("data"))
    params, opt_state, loss = train_step(key, params, opt_state, inputs, labels)
    return params, opt_state, jax.lax.pmean(loss, "data")

  step_fn = jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(P(), P(), P(), P("data"), P("data")),
      out_specs=(P(), P(), P()),
    ),
    donate_argnums=(0, 1),
  )
  batch_sharding = NamedSharding(mesh, P("data"))
  losses, start = [], None
  for step, inputs, labels in batches(train_x, train_y):
    params, opt_state, loss = step_fn(
      params, opt_state, step, *jax.device_put((inputs, labels), batch_sharding)
    )
    losses.append(float(loss))  # waits for the step, as in flavour 1
    if step == 0:
      start = time.perf_counter()
  seconds_per_step = (time.perf_counter() - start) / max(ARGS.steps - 1, 1)
  return params, opt_state, losses, seconds_per_step


@jax.jit
def sample_log_probs(key, params, opt_state, inputs):
  """Log p(y | x, theta) at one posterior sample theta."""
  sampled, _ = ivon_optax.sample_params(key, opt_state, params)
  return jax.nn.log_softmax(MODEL.apply({"params": sampled}, inputs))


def evaluate(params, opt_state, test_x, test_y, key, num_samples: int = 16):
  """Test accuracy at the mean, and the NLL of the model average over posterior samples."""
  params, opt_state = jax.device_get((params, opt_state))
  accuracy = float(jnp.mean(jnp.argmax(MODEL.apply({"params": params}, test_x), -1) == test_y))
  log_probs = jnp.stack(
    [
      sample_log_probs(sample_key, params, opt_state, test_x)
      for sample_key in jax.random.split(key, num_samples)
    ]
  )
  averaged = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(num_samples)
  nll = float(-jnp.mean(jnp.take_along_axis(averaged, test_y[:, None], axis=-1)))
  return accuracy, nll


def main():
  if ARGS.devices < 2 or ARGS.devices % 2:
    raise SystemExit(f"--devices must be even and >= 2, got {ARGS.devices}.")
  print(f"{jax.device_count()} {jax.devices()[0].platform.upper()} devices")
  digits = data.digits(num_train=1500, num_test=297)
  (train_x, train_y), (test_x, test_y) = digits.train, digits.test
  base_key = jax.random.key(ARGS.seed)
  params = MODEL.init(jax.random.key(ARGS.seed + 1), train_x[:1])["params"]
  rows = []
  for name, samples, run in (
    ("1: mesh, FSDP", 1, mesh_data_parallel),
    ("2: shard_map, per-device noise", ARGS.devices, per_device_samples),
  ):
    final_params, opt_state, losses, seconds_per_step = run(params, train_x, train_y, base_key)
    models.report_diagnostics(*jax.device_get((opt_state, final_params)), f"IVON, flavour {name},")
    accuracy, nll = evaluate(final_params, opt_state, test_x, test_y, jax.random.key(123))
    last = float(np.mean(losses[-20:]))
    rows.append((name, samples, last, accuracy, nll, 1000 * seconds_per_step))
  print(f"\n{ARGS.steps} steps, global batch {ARGS.batch_size}, {ARGS.devices} devices")
  print(
    "| flavour | MC samples / step | train loss (last 20) | test acc. (mean) "
    "| test NLL (16-sample avg.) | ms / step |"
  )
  print("|---|---|---|---|---|---|")
  for name, samples, last, accuracy, nll, ms in rows:
    print(f"| {name} | {samples} | {last:.4f} | {accuracy:.3f} | {nll:.4f} | {ms:.1f} |")
  os.makedirs(ARGS.out, exist_ok=True)
  keys = ("flavour", "samples_per_step", "train_loss", "test_accuracy", "test_nll", "ms_per_step")
  with open(os.path.join(ARGS.out, "data_parallel.json"), "w") as file:
    json.dump(
      {"args": vars(ARGS), "rows": [dict(zip(keys, row, strict=True)) for row in rows]}, file
    )


if __name__ == "__main__":
  main()
