"""Normal draws on 8 simulated CPU devices, saved for the statistics in ``test_random.py``.

``tests/test_random.py::test_draws_on_a_mesh`` runs it in a process of its own with
``--xla_force_host_platform_device_count=8``. Usage::

  python tests/random_on_mesh.py OUT.npz

For each generator it saves: draws of one array sharded two ways next to the same draws on
one device; the noise of ``sample_params`` on params sharded under a mesh with explicit axes
next to the same call on one device; one draw per device under ``shard_map`` with the key
folded with the device's index; and the largest ``uint32`` buffer of each compiled sharded
draw next to the size of one shard.
"""

import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ivon_optax

SAMPLERS = {"counter_normal": ivon_optax.random.counter_normal, "jax": jax.random.normal}
SHAPE = (512, 1024)
LAYOUTS = {
  # name: (mesh shape, mesh axes, spec)
  "columns": ((8,), ("x",), P(None, "x")),
  "blocks": ((2, 4), ("a", "b"), P("a", "b")),
}
# Leaves of several shapes, an odd first axis among them, sharded FSDP-style.
PARAM_SPECS = {
  "kernel": ((256, 1024), P(None, "fsdp")),
  "embedding": ((1024, 256), P("fsdp", None)),
  "odd": ((3, 1024), P(None, "fsdp")),
}
PER_DEVICE_DRAWS = 1 << 16


def largest_u32_buffer(compiled_text: str) -> int:
  """Elements of the largest ``uint32`` array in a compiled program (one device's part)."""
  shapes = re.findall(r"\bu32\[([\d,]*)\]", compiled_text)
  return max(math.prod(int(d) for d in shape.split(",") if d) for shape in shapes)


def sharded_draws(name, sampler, key, out):
  unsharded = jax.jit(lambda k: sampler(k, SHAPE, jnp.float32))(key)
  out[f"{name}/unsharded"] = np.asarray(unsharded)
  for layout, (mesh_shape, axes, spec) in LAYOUTS.items():
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AxisType.Auto,) * len(axes))
    draw = jax.jit(
      lambda k: sampler(k, SHAPE, jnp.float32), out_shardings=NamedSharding(mesh, spec)
    )
    compiled = draw.lower(key).compile()
    out[f"{name}/{layout}"] = np.asarray(compiled(key))
    out[f"{name}/{layout}/largest_u32"] = largest_u32_buffer(compiled.as_text())
    out[f"{name}/{layout}/shard_size"] = math.prod(SHAPE) // math.prod(mesh_shape)


def sampled_noise(name, sampler, key, out):
  tx = ivon_optax.ivon(0.1, ess=100.0)
  host_params = {leaf: jnp.zeros(shape) for leaf, (shape, _) in PARAM_SPECS.items()}
  sample = jax.jit(lambda k, s, p: ivon_optax.sample_params(k, s, p, sampler=sampler)[1])
  reference = sample(key, tx.init(host_params), host_params)
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    params = {
      leaf: jax.device_put(host_params[leaf], NamedSharding(mesh, spec))
      for leaf, (_, spec) in PARAM_SPECS.items()
    }
    state = jax.jit(tx.init)(params)
    compiled = sample.lower(key, state, params).compile()
    noise = compiled(key, state, params)
  out[f"{name}/explicit/largest_u32"] = largest_u32_buffer(compiled.as_text())
  out[f"{name}/explicit/shard_size"] = max(
    math.prod(shape) // (1 if spec == P(None, None) else 4) for shape, spec in PARAM_SPECS.values()
  )
  for leaf in PARAM_SPECS:
    out[f"{name}/explicit/{leaf}"] = np.asarray(noise[leaf])
    out[f"{name}/explicit/{leaf}/unsharded"] = np.asarray(reference[leaf])


def per_device_draws(name, sampler, key, out):
  mesh = jax.make_mesh((8,), ("data",))

  def draw(key):
    device_key = jax.random.fold_in(key, jax.lax.axis_index("data"))
    return sampler(device_key, (1, PER_DEVICE_DRAWS), jnp.float32)

  draws = jax.jit(jax.shard_map(draw, mesh=mesh, in_specs=P(), out_specs=P("data")))(key)
  out[f"{name}/per_device"] = np.asarray(draws)


def main(out_path: str):
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for index, (name, sampler) in enumerate(SAMPLERS.items()):
    key = jax.random.key(100 + index)
    sharded_draws(name, sampler, key, out)
    sampled_noise(name, sampler, key, out)
    per_device_draws(name, sampler, key, out)
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1])
