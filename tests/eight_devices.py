"""IVON on 8 simulated CPU devices: mesh data parallelism (1) and per-device noise (2).

Not collected with the rest of the suite, which keeps one device:
``tests/test_sharding.py::test_eight_device_suite`` runs this file in its
own process with ``--xla_force_host_platform_device_count=8``. To run it by
hand: ``XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=.
python -m pytest tests/eight_devices.py``.
"""

import functools
import re

import chex
import data_parallel_steps as dp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ivon_optax

NUM_DEVICES = 8
COLLECTIVES = re.compile(
  r"\b(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\b"
)

if jax.device_count() != NUM_DEVICES:
  # Also reached when pytest imports every module for doctests.
  pytest.skip(
    f"needs {NUM_DEVICES} devices, found {jax.device_count()}: "
    "tests/test_sharding.py::test_eight_device_suite runs it with 8.",
    allow_module_level=True,
  )


# Compiling is most of this file's run time: the tests share jitted functions.
SINGLE_TX = dp.make_tx()
ONE_SAMPLE_STEP = jax.jit(dp.one_sample_step(SINGLE_TX))


@functools.cache
def sync_steps(hess_approx):
  """(flavour 2 on the mesh, its one-device reference with 8 samples)."""
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",))
  tx = dp.make_tx(axis_name="data", hess_approx=hess_approx)
  reference_tx = dp.make_tx(hess_approx=hess_approx)
  return tx, dp.sync_step(tx, mesh), dp.reference_sync_step(reference_tx, NUM_DEVICES, hess_approx)


def auto_mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def fsdp_spec(param):
  """Shards a param's last axis over 'fsdp' (every width here is divisible by 4)."""
  return P(*([None] * (param.ndim - 1)), "fsdp")


LAYOUTS = {
  # name: (mesh shape, mesh axes, param spec, batch spec)
  "replicated": ((8,), ("data",), lambda p: P(), P("data")),
  "fsdp": ((2, 4), ("data", "fsdp"), fsdp_spec, P(("data", "fsdp"))),
}


def placed(layout):
  """(mesh, params, IVON state, the state's shardings) laid out as ``layout`` says."""
  shape, names, param_spec, _ = LAYOUTS[layout]
  mesh = auto_mesh(shape, names)
  params = dp.make_params()
  params = jax.device_put(
    params, jax.tree.map(lambda p: NamedSharding(mesh, param_spec(p)), params)
  )
  state_sharding = ivon_optax.sharding.state_sharding(
    jax.eval_shape(SINGLE_TX.init, params), params
  )
  state = jax.jit(SINGLE_TX.init, out_shardings=state_sharding)(params)
  return mesh, params, state, state_sharding


def shardings_of(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def assert_same_shardings(tree, expected):
  def check(x, sharding):
    assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)

  jax.tree.map(check, tree, expected)


def data_sharded(mesh, *arrays):
  return [dp.global_array(x, NamedSharding(mesh, P("data"))) for x in arrays]


# --- Flavour 1: jit over a mesh --------------------------------------------------


@pytest.mark.parametrize("layout", ["replicated", "fsdp"])
def test_mesh_steps_equal_one_device_steps_and_keep_shardings(layout):
  mesh, params, state, state_sharding = placed(layout)
  batch_sharding = NamedSharding(mesh, LAYOUTS[layout][3])
  param_sharding = shardings_of(params)
  host_params, host_state = jax.device_get((params, state))
  for index in range(3):
    inputs, labels = dp.make_batch(index)
    params, state = ONE_SAMPLE_STEP(
      params, state, np.int32(index), *jax.device_put((inputs, labels), batch_sharding)
    )
    host_params, host_state = ONE_SAMPLE_STEP(
      host_params, host_state, np.int32(index), inputs, labels
    )
    # The weight sample is bitwise the same whatever the layout (threefry is
    # partitionable); only the order of the batch-mean reduction differs.
    chex.assert_trees_all_close((params, state), (host_params, host_state), rtol=1e-5, atol=1e-7)
    assert_same_shardings(state, state_sharding)
    assert_same_shardings(params, param_sharding)
  assert int(ivon_optax.find_ivon_state(state).count) == 3
  ivon_optax.sharding.check_state_sharding(state, params)


def test_fsdp_optimizer_work_is_local_and_noise_follows_params():
  """Sampling, the update and applying it are elementwise: no device gathers any buffer."""
  _, params, state, _ = placed("fsdp")
  grads = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def optimizer_work(params, state, grads, step):
    sampled, noise = ivon_optax.sample_params(dp.step_key(step), state, params)
    updates, state = SINGLE_TX.update(grads, state, params, noise=noise)
    return sampled, noise, optax.apply_updates(params, updates), state

  compiled = optimizer_work.lower(params, state, grads, np.int32(0)).compile()
  assert COLLECTIVES.findall(compiled.as_text()) == []
  # Whereas the whole train step gathers params for the forward pass and
  # reduces the gradients over the batch.
  mesh = placed("fsdp")[0]
  batch = jax.device_put(dp.make_batch(0), NamedSharding(mesh, LAYOUTS["fsdp"][3]))
  train_hlo = ONE_SAMPLE_STEP.lower(params, state, np.int32(0), *batch).compile().as_text()
  assert {"all-gather", "all-reduce"} <= set(COLLECTIVES.findall(train_hlo))
  sampled, noise, new_params, _ = compiled(params, state, grads, np.int32(0))
  for tree in (sampled, noise, new_params):
    assert_same_shardings(tree, shardings_of(params))


def test_init_and_sampling_keep_param_layout_with_explicit_axes():
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    params = dp.make_params()
    params = jax.device_put(
      params, jax.tree.map(lambda p: NamedSharding(mesh, fsdp_spec(p)), params)
    )
    for state in (SINGLE_TX.init(params), jax.jit(SINGLE_TX.init)(params)):
      ivon_optax.sharding.check_state_sharding(state, params)
    traced_specs = {}

    @jax.jit
    def draw_noise(state, params):
      _, noise = ivon_optax.sample_params(dp.step_key(0), state, params)
      traced_specs.update(jax.tree.map(lambda n: jax.typeof(n).sharding.spec, noise))
      return noise

    noise = draw_noise(state, params)
  assert traced_specs == jax.tree.map(lambda p: p.sharding.spec, params)
  assert_same_shardings(noise, shardings_of(params))


def test_eager_init_lays_state_out_like_params():
  _, params, _, state_sharding = placed("fsdp")
  state = SINGLE_TX.init(params)
  ivon_optax.sharding.check_state_sharding(state, params)
  assert_same_shardings(ivon_optax.find_ivon_state(state).hess, shardings_of(params))
  assert_same_shardings(
    ivon_optax.find_ivon_state(state).momentum, ivon_optax.find_ivon_state(state_sharding).momentum
  )


def test_state_sharding_through_wrappers():
  """inject_hyperparams and MultiSteps: param-like buffers follow params, the rest is replicated."""
  _, params, _, _ = placed("fsdp")
  tx = optax.MultiSteps(
    optax.inject_hyperparams(ivon_optax.ivon, hyperparam_dtype=jnp.float32)(
      learning_rate=0.1, ess=100.0
    ),
    every_k_schedule=2,
  )
  sharding = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params)
  state = jax.jit(tx.init, out_shardings=sharding)(params)
  ivon_optax.sharding.check_state_sharding(state, params)
  assert state.acc_grads["dense_1"]["kernel"].sharding.spec == P(None, "fsdp")
  ivon_state = ivon_optax.find_ivon_state(state)
  assert ivon_state.hess["dense_2"]["bias"].sharding.spec == P("fsdp")
  assert state.inner_opt_state.hyperparams["beta2"].sharding.spec == P()
  assert ivon_state.count.sharding.spec == P()


# --- Flavour 2: each device draws its own weight sample --------------------------


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
def test_sync_step_equals_one_device_step_with_eight_samples(hess_approx):
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",))
  tx, step, reference = sync_steps(hess_approx)
  params = dp.make_params()
  state = tx.init(params)
  placed_params, placed_state = dp.replicated((params, state), mesh)
  for index in range(3):
    inputs, labels = dp.make_batch(index)
    placed_params, placed_state = step(
      placed_params, placed_state, np.int32(index), *data_sharded(mesh, inputs, labels)
    )
    params, state = reference(params, state, np.int32(index), inputs, labels)
    chex.assert_trees_all_close(
      (placed_params, placed_state), (params, state), rtol=1e-5, atol=1e-7
    )
  assert all(
    x.sharding.is_fully_replicated and len(x.sharding.device_set) == NUM_DEVICES
    for x in jax.tree.leaves((placed_params, placed_state))
  )


def test_sync_step_differs_from_a_shared_sample():
  """The devices' samples are independent: one sample shared by all gives another step."""
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",))
  tx, step, _ = sync_steps("price")
  params = dp.make_params()
  state = tx.init(params)
  inputs, labels = dp.make_batch(0)
  _, synced_state = step(
    *dp.replicated((params, state), mesh), np.int32(0), *data_sharded(mesh, inputs, labels)
  )
  _, shared_state = ONE_SAMPLE_STEP(params, state, np.int32(0), inputs, labels)
  hess_gaps = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))),
    ivon_optax.find_ivon_state(synced_state).hess,
    ivon_optax.find_ivon_state(shared_state).hess,
  )
  assert min(jax.tree.leaves(hess_gaps)) > 1e-6


# --- Bad input -----------------------------------------------------------------------


def test_unknown_axis_name_is_named():
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",))
  tx = dp.make_tx(axis_name="batch")
  params = dp.make_params()
  state = tx.init(params)
  step = jax.jit(
    jax.shard_map(
      dp.one_sample_step(tx),
      mesh=mesh,
      in_specs=(P(), P(), P(), P("data"), P("data")),
      out_specs=(P(), P()),
    )
  )
  with pytest.raises(ValueError, match=r"`axis_name`='batch' is not a mapped axis"):
    step(*dp.replicated((params, state), mesh), np.int32(0), *data_sharded(mesh, *dp.make_batch(0)))


def test_state_sharded_unlike_params_is_named():
  mesh, params, state, _ = placed("fsdp")
  ivon_state = ivon_optax.find_ivon_state(state)
  replicated_hess = jax.device_put(ivon_state.hess, NamedSharding(mesh, P()))
  state = (ivon_state._replace(hess=replicated_hess),) + tuple(state[1:])
  with pytest.raises(
    ValueError,
    match=r"\.hess\['dense_1'\]\['bias'\] is sharded as "
    r"P\(\) .* param \['dense_1'\]\['bias'\] is sharded as "
    r"P\('fsdp',\)",
  ):
    ivon_optax.sharding.check_state_sharding(state, params)
