"""Tests of ivon_optax/distributed.py and of data-parallel IVON.

The multi-device tests run in their own processes, so that this session keeps
one device: ``tests/eight_devices.py`` on 8 simulated CPU devices, and
``tests/multihost_worker.py`` as 2 processes of 4 devices over gloo.
"""

import os
import pathlib
import socket
import subprocess
import sys

import chex
import data_parallel_steps as dp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ivon_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
# Compiling dominates these runs' time; LLVM's optimizations are not needed here.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def subprocess_env(xla_flags=""):
  return dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), FAST_COMPILE, xla_flags]),
  )


def run_python(args, xla_flags="", timeout=300):
  env = subprocess_env(xla_flags)
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def test_eight_device_suite():
  """Flavours 1 and 2 on 8 simulated devices (see tests/eight_devices.py)."""
  result = run_python(
    ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/eight_devices.py"], EIGHT_DEVICES
  )
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    return probe.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
  """2 processes x 4 CPU devices (gloo), flavour 2: both end at the 8-sample one-device result."""
  num_steps, port = 3, free_port()
  env = subprocess_env()
  workers = [
    subprocess.Popen(
      [
        sys.executable,
        "tests/multihost_worker.py",
        str(process_id),
        "2",
        str(port),
        str(num_steps),
        str(tmp_path / f"params_{process_id}.npz"),
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for process_id in range(2)
  ]
  outputs = []
  for worker in workers:
    try:
      outputs.append(worker.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for other in workers:
        other.kill()
      raise
  for worker, output in zip(workers, outputs, strict=True):
    assert worker.returncode == 0, output[-4000:]

  tx = dp.make_tx()
  params = dp.make_params()
  state = tx.init(params)
  reference = dp.reference_sync_step(tx, num_devices=8)
  for index in range(num_steps):
    params, state = reference(params, state, np.int32(index), *dp.make_batch(index))
  expected = {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  first, second = (dict(np.load(tmp_path / f"params_{i}.npz")) for i in range(2))
  assert first.keys() == second.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    np.testing.assert_allclose(first[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


# --- state_sharding / check_state_sharding on one device ---------------------------


def one_device_mesh():
  return jax.make_mesh((1,), ("fsdp",))


def test_state_sharding_keeps_masked_and_empty_nodes():
  mesh = one_device_mesh()
  params = jax.device_put(dp.make_params(), NamedSharding(mesh, P()))
  mask = {"dense_1": {"kernel": True, "bias": False}, "dense_2": {"kernel": True, "bias": False}}
  tx = optax.chain(
    optax.masked(ivon_optax.ivon(0.1, ess=100.0), mask),
    optax.masked(optax.sgd(0.1), jax.tree.map(lambda m: not m, mask)),
  )
  sharding = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params)
  state = jax.jit(tx.init, out_shardings=sharding)(params)
  chex.assert_trees_all_equal_structs(state, tx.init(params))
  ivon_optax.sharding.check_state_sharding(state, params)
  hess = ivon_optax.find_ivon_state(state).hess
  assert isinstance(hess["dense_1"]["bias"], optax.MaskedNode)
  assert hess["dense_1"]["kernel"].sharding.is_equivalent_to(NamedSharding(mesh, P()), 2)


def test_state_sharding_uses_each_params_own_sharding():
  mesh = jax.make_mesh((1, 1), ("data", "fsdp"))
  params = {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}
  specs = {"kernel": P("data", "fsdp"), "bias": P("fsdp")}
  params = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
  tx = ivon_optax.ivon(optax.linear_schedule(0.1, 0.0, 10), ess=100.0)
  sharding = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params)
  ivon_sharding = ivon_optax.find_ivon_state(sharding)
  assert jax.tree.map(lambda s: s.spec, ivon_sharding.momentum) == specs
  assert jax.tree.map(lambda s: s.spec, ivon_sharding.hess) == specs
  # Per-leaf scalars, counts and the schedule's count are replicated.
  assert ivon_sharding.prior_precision["kernel"].spec == P()
  assert ivon_sharding.count.spec == P() and sharding[1].count.spec == P()


def test_state_sharding_accepts_abstract_params():
  mesh = one_device_mesh()
  params = {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))}
  tx = ivon_optax.ivon(0.1, ess=100.0)
  sharding = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params)
  assert ivon_optax.find_ivon_state(sharding).hess["w"].spec == P("fsdp")


def test_state_sharding_needs_placed_params():
  params = {"w": np.ones(3, np.float32)}
  state = ivon_optax.ivon(0.1, ess=100.0).init(params)
  with pytest.raises(TypeError, match="must carry a sharding"):
    ivon_optax.sharding.state_sharding(state, params)


# --- axis_name errors --------------------------------------------------------------


def test_axis_name_outside_a_mapped_axis_is_named():
  tx = ivon_optax.ivon(0.1, ess=100.0, axis_name="data")
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"`axis_name`='data' is not a mapped axis"):
    jax.jit(lambda g: tx.update(g, state, params, noise=g))(params)


def test_axis_name_missing_from_the_mesh_is_named():
  """Under shard_map a bare pmean fails with an empty AssertionError; IVON names the axis."""
  mesh = jax.make_mesh((1,), ("data",))
  tx = ivon_optax.ivon(0.1, ess=100.0, axis_name="batch")
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  step = jax.shard_map(
    lambda g, state: tx.update(g, state, params, noise=g)[1],
    mesh=mesh,
    in_specs=(P(), P()),
    out_specs=P(),
  )
  with pytest.raises(ValueError, match=r"`axis_name`='batch' is not a mapped axis"):
    jax.jit(step)(params, state)


# --- The example -------------------------------------------------------------------


@pytest.mark.study
def test_data_parallel_example_runs():
  result = run_python(["examples/data_parallel.py", "--devices", "2", "--steps", "6"])
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "| 2: shard_map, per-device noise | 2 |" in result.stdout, result.stdout
  gap = float(result.stdout.split("max |diff| of the params = ")[1].split()[0])
  assert gap < 1e-5
