"""IVON on LoRA adapters: only the adapters are trained and sampled, the base stays bitwise frozen.

NNX selects the adapters with ``nnx.Optimizer(..., wrt=nnx.LoRAParam)``;
Linen and plain optax with ``optax.partition`` and ``optax.set_to_zero`` on
the frozen part (prefix labels).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ivon_optax
import ivon_optax.flax as ivon_flax

INPUTS = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)
LABELS = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
HYPER = dict(ess=1e4, hess_init=1e-3, clip_radius=1e-3, rescale_lr=False, weight_decay=0.0)


def _ivon():
  return ivon_optax.ivon(0.05, **HYPER)


# --- NNX -----------------------------------------------------------------------


class LoRANet(nnx.Module):
  """LoRA layers around the three kinds of state a base model holds: params, statistics, RNGs."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.LoRALinear(4, 6, lora_rank=2, rngs=rngs)
    self.norm = nnx.BatchNorm(6, momentum=0.5, rngs=rngs)
    self.scale = nnx.LayerNorm(6, rngs=rngs)
    self.dropout = nnx.Dropout(0.25, rngs=rngs)
    self.out = nnx.LoRALinear(6, 3, lora_rank=2, rngs=rngs)

  def __call__(self, x):
    x = self.dropout(self.scale(self.norm(jax.nn.relu(self.hidden(x)))))
    return self.out(x)


def _nnx_loss(model):
  return optax.softmax_cross_entropy_with_integer_labels(model(INPUTS), LABELS).mean()


@nnx.jit
def _nnx_step(model, optimizer, key):
  sampled_model, noise = ivon_flax.sample_nnx_model(key, optimizer, model)
  grads = nnx.grad(_nnx_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(sampled_model)
  optimizer.update(model, grads, noise=noise)


def _nnx_setup():
  model = LoRANet(nnx.Rngs(0, dropout=1))
  # LoRA's B starts at zero; a non-zero start makes the base's gradient non-zero too.
  for layer in (model.hidden, model.out):
    layer.lora.lora_b[...] = 0.1 * jnp.ones_like(layer.lora.lora_b[...])
  return model, nnx.Optimizer(model, _ivon(), wrt=nnx.LoRAParam)


def _frozen_state(model):
  """Every variable but the adapters, the BatchNorm statistics and the dropout RNG count."""
  frozen = nnx.All(nnx.Not(nnx.LoRAParam), nnx.Not(nnx.BatchStat), nnx.Not(nnx.RngCount))
  return jax.tree.map(_numpy, nnx.as_pure(nnx.state(model, frozen)))


def _numpy(leaf):
  if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return np.array(leaf)


def _assert_trees_equal(actual, expected):
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_nnx_lora_steps_leave_every_non_adapter_variable_bitwise_unchanged():
  model, optimizer = _nnx_setup()
  frozen = _frozen_state(model)
  adapters = jax.tree.map(np.array, nnx.as_pure(nnx.state(model, nnx.LoRAParam)))
  counts = int(model.dropout.rngs.count[...])
  stats = np.array(model.norm.mean[...])
  for step in range(3):
    _nnx_step(model, optimizer, jax.random.key(step))

  _assert_trees_equal(_frozen_state(model), frozen)
  moved = jax.tree.map(
    lambda new, old: not np.array_equal(new, old),
    nnx.as_pure(nnx.state(model, nnx.LoRAParam)),
    adapters,
  )
  assert all(jax.tree.leaves(moved))
  # Statistics and RNG counts change only through their own mechanism, once per forward pass.
  assert int(model.dropout.rngs.count[...]) == counts + 3
  assert not np.array_equal(model.norm.mean[...], stats)


def test_nnx_lora_samples_perturb_only_the_adapters():
  model, optimizer = _nnx_setup()
  _nnx_step(model, optimizer, jax.random.key(0))
  sampled, noise = ivon_flax.sample_nnx_params(jax.random.key(1), optimizer, model)
  paths = jax.tree_util.tree_flatten_with_path(noise)[0]
  assert {tuple(entry.key for entry in path) for path, _ in paths} == {
    ("hidden", "lora", "lora_a"),
    ("hidden", "lora", "lora_b"),
    ("out", "lora", "lora_a"),
    ("out", "lora", "lora_b"),
  }
  assert all(np.all(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(noise))

  sampled_model, _ = ivon_flax.sample_nnx_model(jax.random.key(1), optimizer, model)
  _assert_trees_equal(_frozen_state(sampled_model), _frozen_state(model))
  _assert_trees_equal(nnx.as_pure(nnx.state(sampled_model, nnx.LoRAParam)), sampled)

  eval_model = nnx.view(model, use_running_average=True, deterministic=True)
  outputs = ivon_flax.sample_nnx_outputs(
    jax.random.key(1), optimizer, eval_model, INPUTS, num_samples=2
  )
  graphdef, _, rest = nnx.split(eval_model, nnx.LoRAParam, ...)
  for output, key in zip(outputs, jax.random.split(jax.random.key(1), 2), strict=True):
    sampled, _ = ivon_flax.sample_nnx_params(key, optimizer, eval_model)
    expected = nnx.merge(graphdef, sampled, rest)(INPUTS)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)


def test_nnx_lora_step_equals_the_plain_optax_step_on_the_same_adapters():
  model, optimizer = _nnx_setup()
  key = jax.random.key(7)
  graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
  adapters, rest = nnx.as_pure(adapters), nnx.clone(rest)
  tx = _ivon()
  opt_state = tx.init(adapters)

  # The plain path: the adapters as a pytree, the rest of the model closed over.
  sampled, noise = ivon_optax.sample_params(key, opt_state, adapters)
  loss = lambda lora: _nnx_loss(nnx.merge(graphdef, lora, nnx.clone(rest)))
  updates, opt_state = tx.update(jax.grad(loss)(sampled), opt_state, adapters, noise=noise)
  expected = optax.apply_updates(adapters, updates)

  _nnx_step(model, optimizer, key)
  new_adapters, new_opt_state = ivon_flax.nnx_params_and_state(optimizer, model)
  assert jax.tree.structure(new_adapters) == jax.tree.structure(expected)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_adapters, expected
  )
  mean, std = ivon_optax.posterior(new_opt_state, new_adapters)
  _, expected_std = ivon_optax.posterior(opt_state, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), std, expected_std)


# --- Linen and plain optax -------------------------------------------------------


class LinenLoRADense(nn.Module):
  """A frozen ``Dense`` base plus a rank-``rank`` update ``x A B`` (B starts non-zero here)."""

  features: int
  rank: int = 2

  @nn.compact
  def __call__(self, x):
    a = self.param("lora_a", nn.initializers.normal(0.5), (x.shape[-1], self.rank))
    b = self.param("lora_b", nn.initializers.constant(0.1), (self.rank, self.features))
    return nn.Dense(self.features, name="base")(x) + x @ a @ b


class LinenLoRANet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(LinenLoRADense(6, name="hidden")(x))
    return LinenLoRADense(3, name="out")(x)


def _linen_labels():
  """Prefix labels: a whole ``base`` subtree is one label."""
  layer = {"base": "frozen", "lora_a": "lora", "lora_b": "lora"}
  return {"hidden": layer, "out": layer}


def test_linen_partition_trains_and_samples_only_the_adapters():
  model = LinenLoRANet()
  params = model.init(jax.random.key(0), INPUTS)["params"]
  tx = optax.partition({"lora": _ivon(), "frozen": optax.set_to_zero()}, _linen_labels())
  opt_state = tx.init(params)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
    model.apply({"params": p}, INPUTS), LABELS
  ).mean()

  @jax.jit
  def step(params, opt_state, key):
    sampled, noise = ivon_optax.sample_params(key, opt_state, params)
    updates, opt_state = tx.update(jax.grad(loss)(sampled), opt_state, params, noise=noise)
    return optax.apply_updates(params, updates), opt_state

  new_params = params
  for i in range(3):
    new_params, opt_state = step(new_params, opt_state, jax.random.key(i))
  for layer in ("hidden", "out"):
    _assert_trees_equal(new_params[layer]["base"], params[layer]["base"])
    for name in ("lora_a", "lora_b"):
      assert not np.array_equal(new_params[layer][name], params[layer][name])

  sampled, noise = ivon_optax.sample_params(jax.random.key(9), opt_state, new_params)
  _, std = ivon_optax.posterior(opt_state, new_params)
  for layer in ("hidden", "out"):
    _assert_trees_equal(sampled[layer]["base"], new_params[layer]["base"])
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(noise[layer]["base"]))
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(std[layer]["base"]))
    for name in ("lora_a", "lora_b"):
      assert np.all(np.asarray(noise[layer][name]) != 0)


def test_linen_partition_step_on_the_adapters_is_the_ivon_step_on_the_adapters_alone():
  model = LinenLoRANet()
  params = model.init(jax.random.key(0), INPUTS)["params"]
  partitioned = optax.partition({"lora": _ivon(), "frozen": optax.set_to_zero()}, _linen_labels())
  part_state = partitioned.init(params)
  adapters = {layer: {k: v for k, v in p.items() if k != "base"} for layer, p in params.items()}
  alone = _ivon()
  alone_state = alone.init(adapters)

  grads = jax.grad(
    lambda p: jnp.sum(model.apply({"params": p}, INPUTS) ** 2)  # any gradient will do
  )(params)
  noise = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  part_noise = {
    layer: {**n, "base": jax.tree.map(jnp.zeros_like, n["base"])} for layer, n in noise.items()
  }
  updates, _ = partitioned.update(grads, part_state, params, noise=part_noise)
  expected, _ = alone.update(
    {layer: {k: v for k, v in g.items() if k != "base"} for layer, g in grads.items()},
    alone_state,
    adapters,
    noise={layer: {k: v for k, v in n.items() if k != "base"} for layer, n in noise.items()},
  )
  for layer in ("hidden", "out"):
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(updates[layer]["base"]))
    for name in ("lora_a", "lora_b"):
      np.testing.assert_allclose(updates[layer][name], expected[layer][name], rtol=1e-6)
