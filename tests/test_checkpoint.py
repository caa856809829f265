"""Tests of ivon_optax/checkpoint.py and of exact resume with examples/checkpoint_resume.py.

The training runs are fresh processes of the example, sharing a persistent
compilation cache so that only the first one compiles the train step.
"""

import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import ivon_optax
import ivon_optax.checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = "examples/checkpoint_resume.py"
TOTAL_STEPS, HALF, SAVE_EVERY = 24, 12, 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    # Compiling dominates these runs' time: LLVM's optimizations are not
    # needed, and the runs share the compiled train step through a cache.
    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0",
    JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )


def start_example(env, checkpoint_dir, *args, code=None):
  """Starts the example (or ``code`` that runs it) with the test's run length."""
  argv = [
    EXAMPLE,
    "--total-steps",
    str(TOTAL_STEPS),
    "--save-every",
    str(SAVE_EVERY),
    "--checkpoint-dir",
    str(checkpoint_dir),
    *args,
  ]
  command = [sys.executable, "-c", code, *argv] if code else [sys.executable, *argv]
  return subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def finish(process, expected_returncode=0) -> str:
  output = process.communicate(timeout=300)[0]
  assert process.returncode == expected_returncode, output[-4000:]
  return output


def saved(checkpoint_dir, step):
  """The train state saved at ``step``, as plain arrays."""
  manager = ocp.CheckpointManager(checkpoint_dir, item_handlers=ocp.StandardCheckpointHandler())
  return manager.restore(step)


def assert_bitwise_equal(tree, expected):
  flat, expected_flat = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (tree, expected))
  assert [path for path, _ in flat] == [path for path, _ in expected_flat]
  for (path, leaf), (_, expected_leaf) in zip(flat, expected_flat, strict=True):
    np.testing.assert_array_equal(
      np.asarray(leaf), np.asarray(expected_leaf), err_msg=jax.tree_util.keystr(path)
    )


# The example under a patched Orbax: the process kills itself once all of step
# 18's files are written to their temporary directory, before the commit.
CRASH_BEFORE_COMMIT = """
import os, runpy, signal, sys
import orbax.checkpoint as ocp
temporary_path = ocp.path.atomicity.AtomicRenameTemporaryPath
finalize = temporary_path.finalize
async def crash_before_commit(self):
  if self.get_final().name == "18":
    os.kill(os.getpid(), signal.SIGKILL)
  return await finalize(self)
temporary_path.finalize = crash_before_commit
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python examples/...` would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.study
def test_interrupted_runs(env, tmp_path):
  """Resume, crash mid-save, and 8 devices -> 1, against 2k = 24 uninterrupted steps.

  One test, so that the reference run is made once whatever pytest-xdist does.
  """
  dirs = {name: tmp_path / name for name in ("straight", "resumed", "eight_devices", "crashed")}
  # The reference first, so that the other runs find its compiled step in the cache.
  output = finish(start_example(env, dirs["straight"]))
  assert f"step {TOTAL_STEPS}: IVON count {TOTAL_STEPS}" in output, output
  processes = {
    "resumed": start_example(env, dirs["resumed"], "--stop-at", str(HALF)),
    "eight_devices": start_example(
      env, dirs["eight_devices"], "--stop-at", str(HALF), "--devices", "8"
    ),
    "crashed": start_example(env, dirs["crashed"], code=CRASH_BEFORE_COMMIT),
  }
  outputs = {
    name: finish(process, -signal.SIGKILL if name == "crashed" else 0)
    for name, process in processes.items()
  }
  check_resume_is_bit_identical(env, dirs, outputs["resumed"])
  check_crash_mid_save_leaves_no_loadable_checkpoint(dirs)
  check_checkpoint_from_8_devices_restores_on_1(dirs, outputs["eight_devices"])


def check_resume_is_bit_identical(env, dirs, first_half_output):
  """k steps, save, restore in a fresh process, k more: bit-identical to 2k straight."""
  assert f"step {HALF}: IVON count {HALF}" in first_half_output, first_half_output
  output = finish(start_example(env, dirs["resumed"]))
  # 1500 examples / batch 64 = 23 batches per epoch: step 12 is epoch 0, batch 12.
  assert f"resumed at step {HALF} (epoch 0, batch {HALF})" in output, output
  assert f"step {TOTAL_STEPS}: IVON count {TOTAL_STEPS}" in output, output
  resumed = saved(dirs["resumed"], TOTAL_STEPS)
  assert_bitwise_equal(resumed, saved(dirs["straight"], TOTAL_STEPS))
  # The whole state came back: IVON's count, the schedule's count, the loader.
  assert int(resumed["opt_state"][0]["count"]) == TOTAL_STEPS
  assert int(resumed["opt_state"][1]["count"]) == TOTAL_STEPS
  assert resumed["loader"] == {"epoch": 1, "index": 1}


def check_crash_mid_save_leaves_no_loadable_checkpoint(dirs):
  crashed = dirs["crashed"]
  partial = [path.name for path in crashed.iterdir() if path.name.startswith("18.")]
  assert partial and "orbax-checkpoint-tmp" in partial[0], sorted(crashed.iterdir())
  manager = ocp.CheckpointManager(crashed, item_handlers=ocp.StandardCheckpointHandler())
  assert 18 not in manager.all_steps()
  assert manager.latest_step() == 12
  # Resuming picks the last complete step: the straight run's step 12, bit for bit.
  assert_bitwise_equal(manager.restore(manager.latest_step()), saved(dirs["straight"], 12))


def check_checkpoint_from_8_devices_restores_on_1(dirs, output):
  assert f"step {HALF}: IVON count {HALF}" in output, output
  manager = ocp.CheckpointManager(
    dirs["eight_devices"], item_handlers=ocp.StandardCheckpointHandler()
  )
  device = jax.devices()[0]
  on_8_devices = manager.item_metadata(HALF).tree
  # Saved from an 8-device mesh, the params and IVON buffers FSDP-sharded on it.
  meshes = [leaf.sharding for leaf in jax.tree.leaves(on_8_devices) if leaf.sharding]
  assert meshes and all(int(np.prod(mesh.shape)) == 8 for mesh in meshes)
  assert any("fsdp" in str(mesh.partition_spec) for mesh in meshes)
  target = jax.tree.map(
    lambda leaf: jax.ShapeDtypeStruct(
      leaf.shape, leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
    ),
    on_8_devices,
  )
  restored = ivon_optax.checkpoint.restore(manager, target)
  for leaf in jax.tree.leaves(restored):
    if isinstance(leaf, jax.Array):
      assert leaf.sharding.device_set == {device}
  # The 8-device steps equal the 1-device steps up to float32 reduction order.
  jax.tree.map(
    lambda got, expected: np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6),
    restored["params"],
    saved(dirs["straight"], HALF)["params"],
  )
  assert int(restored["opt_state"][0]["count"]) == HALF


def train_state(params):
  tx = ivon_optax.ivon(optax.linear_schedule(0.1, 0.0, 10), ess=100.0)
  return {
    "params": params,
    "opt_state": tx.init(params),
    "step": jnp.asarray(3),
    "loader": {"epoch": 0, "index": 3},
  }


def test_resume_from_a_checkpoint_continues_the_run(tmp_path):
  """k steps, save, restore into a fresh state, k more: the 2k-step run, in-process."""
  tx = ivon_optax.ivon(optax.linear_schedule(0.1, 0.0, 10), ess=100.0)
  inputs = jax.random.normal(jax.random.key(0), (32, 4))
  targets = inputs @ jnp.arange(1.0, 5.0)
  loss_fn = lambda p: jnp.mean((inputs @ p["w"] + p["b"] - targets) ** 2)
  grad_fn = ivon_optax.value_and_grad_at_sample(loss_fn)

  @jax.jit
  def step(state, key):
    _, grads, noise = grad_fn(key, state["opt_state"], state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"], noise=noise)
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}

  def run(state, steps):
    for k in steps:
      state = step(state, jax.random.fold_in(jax.random.key(1), k))
    return state

  params = {"w": jnp.zeros(4), "b": jnp.zeros(())}
  start = {"params": params, "opt_state": tx.init(params)}
  straight = run(start, range(8))
  manager = ocp.CheckpointManager(tmp_path)
  manager.save(4, args=ocp.args.StandardSave(run(start, range(4))))
  manager.wait_until_finished()
  resumed = run(ivon_optax.checkpoint.restore(ocp.CheckpointManager(tmp_path), start), range(4, 8))
  assert int(ivon_optax.find_ivon_state(resumed["opt_state"]).count) == 8
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  jax.tree.map(chex_close, resumed, straight)
  moved = float(jnp.abs(straight["params"]["w"]).max())
  assert moved > 0.1, "the run must move the params for the comparison to mean anything"


def test_checkpoint_of_another_model_is_named(tmp_path):
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  manager = ocp.CheckpointManager(tmp_path)
  manager.save(3, args=ocp.args.StandardSave(train_state(params)))
  manager.wait_until_finished()
  wider = {
    "dense": {"kernel": jnp.ones((4, 5)), "bias": jnp.zeros(5)},
    "head": {"kernel": jnp.ones((5, 2))},
  }
  fresh = ocp.CheckpointManager(tmp_path)
  with pytest.raises(ValueError) as error:
    ivon_optax.checkpoint.restore(fresh, train_state(wider))
  message = str(error.value)
  assert "at step 3" in message
  assert (
    "['params']['dense']['kernel']: shape (4, 3) in the checkpoint, (4, 5) in the target" in message
  )
  assert "['params']['head']['kernel']: in the target but not in the checkpoint" in message
  assert "[0].hess['dense']['bias']: shape (3,) in the checkpoint, (5,) in the target" in message
  # The same model restores, with its step count.
  restored = ivon_optax.checkpoint.restore(fresh, train_state(params))
  assert int(ivon_optax.find_ivon_state(restored["opt_state"]).count) == 0
  assert restored["loader"] == {"epoch": 0, "index": 3}


def test_restore_from_an_empty_directory_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="No complete checkpoint in"):
    ivon_optax.checkpoint.restore(ocp.CheckpointManager(tmp_path), train_state({"w": jnp.ones(2)}))


def test_importing_ivon_optax_needs_no_orbax():
  code = (
    "import sys, ivon_optax; "
    "assert not {'orbax', 'flax'} & {name.split('.')[0] for name in sys.modules}"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stderr
