"""One process of a 2-process IVON run (flavour 2) over CPU collectives (gloo).

``tests/test_sharding.py::test_two_processes_agree_with_one`` starts two of
these; each owns 4 CPU devices, the mesh spans all 8, and every device draws
its own weight sample. Usage::

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT NUM_STEPS OUT.npz
"""

import sys

import jax

LOCAL_DEVICES = 4


def main(process_id: int, num_processes: int, port: int, num_steps: int, out_path: str):
  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=120,
  )

  import data_parallel_steps as dp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  assert jax.device_count() == LOCAL_DEVICES * num_processes, jax.devices()
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  tx = dp.make_tx(axis_name="data")
  step = dp.sync_step(tx, mesh)
  params = dp.make_params()
  params, state = dp.replicated((params, tx.init(params)), mesh)
  for index in range(num_steps):
    batch = [dp.global_array(x, NamedSharding(mesh, P("data"))) for x in dp.make_batch(index)]
    # Waiting for each step keeps two steps' collectives from competing for
    # the few host threads that run the simulated devices.
    params, state = jax.block_until_ready(step(params, state, np.int32(index), *batch))
  # The params are replicated: this process's first shard holds all of them.
  leaves = {
    jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  np.savez(out_path, **leaves)
  jax.distributed.shutdown()


if __name__ == "__main__":
  process_id, num_processes, port, num_steps = map(int, sys.argv[1:5])
  main(process_id, num_processes, port, num_steps, sys.argv[5])
