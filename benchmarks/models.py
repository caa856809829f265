"""The benchmark models in Flax (Linen), with their synthetic data and losses.

Three workloads, each a :class:`Workload` (model, batch and loss):

* ``mlp``: a 784-1024-1024-10 ReLU MLP (1.86M params), batch 128; sized for CPU.
* ``resnet20``: the CIFAR ResNet-20 (0.27M params, BatchNorm), 32x32x3 images, batch 128.
* ``gpt2s``: GPT-2 small (12 layers, d=768, 12 heads, vocab 50304, seq 1024, 124M params),
  batch 8, bfloat16 compute with float32 params. :func:`gpt2_config` shrinks it on CPU
  (4 layers, d=256, vocab 8192, batch 4 of 128 tokens: 5.3M params).

The data are fixed random tensors: the timings do not depend on their values, and nothing is
downloaded. :mod:`benchmarks.torch_models` builds the same models in PyTorch.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

MODELS = ("mlp", "resnet20", "gpt2s")


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model with a synthetic batch and its loss.

  ``loss(params, model_state, batch) -> (loss, new_model_state)``; ``model_state`` holds
  non-trainable collections (BatchNorm statistics) and is ``{}`` when there are none.
  """

  name: str
  description: str
  module: nn.Module
  batch: Any
  loss: Callable[[Any, Any, Any], tuple[jax.Array, Any]]
  init_input: Any

  def init(self, seed: int = 0):
    """``(params, model_state)`` from a fixed seed."""
    variables = self.module.init(jax.random.key(seed), self.init_input)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


# --- MLP --------------------------------------------------------------------------------


class MLP(nn.Module):
  """A ReLU MLP ``in -> hidden... -> num_outputs``, as in :mod:`benchmarks.torch_models`."""

  hidden: tuple[int, ...]
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x):
    widths = (*self.hidden, self.num_outputs)
    for layer, width in enumerate(widths):
      x = nn.Dense(width)(x)
      x = nn.relu(x) if layer < len(self.hidden) else x
    return x


# --- ResNet-20 ----------------------------------------------------------------------------


class ResidualBlock(nn.Module):
  """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

  channels: int
  stride: int

  @nn.compact
  def __call__(self, inputs, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    features = nn.Conv(self.channels, (3, 3), self.stride, use_bias=False)(inputs)
    features = nn.relu(norm()(features))
    features = nn.Conv(self.channels, (3, 3), 1, use_bias=False)(features)
    features = norm()(features)
    shortcut = inputs
    if self.stride != 1 or inputs.shape[-1] != self.channels:
      shortcut = nn.Conv(self.channels, (1, 1), self.stride, use_bias=False)(inputs)
      shortcut = norm()(shortcut)
    return nn.relu(features + shortcut)


class ResNet20(nn.Module):
  """The CIFAR ResNet-20 of He et al. (2016): 3 stages of 3 blocks, 16/32/64 channels."""

  classes: int = 10
  blocks_per_stage: int = 3

  @nn.compact
  def __call__(self, images, train: bool = True):
    features = nn.Conv(16, (3, 3), use_bias=False)(images)
    features = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(features))
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        features = ResidualBlock(channels, stride)(features, train)
    features = jnp.mean(features, axis=(1, 2))
    return nn.Dense(self.classes)(features)


# --- GPT-2 --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """GPT-2's shape; the defaults are GPT-2 small (124M params)."""

  layers: int = 12
  width: int = 768
  heads: int = 12
  vocab: int = 50304
  seq_len: int = 1024
  batch: int = 8
  dtype: Any = jnp.bfloat16


def gpt2_config(platform: str, tiny: bool = False) -> GPT2Config:
  """GPT-2 small on accelerators; on CPU 4 layers, d=256, vocab 8192, 4x128 tokens (5.3M params)."""
  if tiny:
    return GPT2Config(layers=1, width=32, heads=2, vocab=128, seq_len=16, batch=2)
  if platform == "cpu":
    return GPT2Config(layers=4, width=256, heads=4, vocab=8192, seq_len=128, batch=4)
  return GPT2Config()


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention (``jax.nn.dot_product_attention``)."""

  config: GPT2Config

  @nn.compact
  def __call__(self, features):
    config = self.config
    batch, length, width = features.shape
    head_dim = width // config.heads
    init = nn.initializers.normal(0.02)
    qkv = nn.Dense(3 * width, dtype=config.dtype, kernel_init=init)(features)
    query, key, value = jnp.split(qkv.reshape(batch, length, 3 * config.heads, head_dim), 3, axis=2)
    attended = jax.nn.dot_product_attention(query, key, value, is_causal=True)
    out_init = nn.initializers.normal(0.02 / (2 * config.layers) ** 0.5)
    return nn.Dense(width, dtype=config.dtype, kernel_init=out_init)(
      attended.reshape(batch, length, width)
    )


class TransformerBlock(nn.Module):
  """Pre-LayerNorm block: attention and a 4x GELU MLP, each with a residual."""

  config: GPT2Config

  @nn.compact
  def __call__(self, features):
    config = self.config
    features = features + CausalSelfAttention(config)(nn.LayerNorm(dtype=config.dtype)(features))
    hidden = nn.LayerNorm(dtype=config.dtype)(features)
    hidden = nn.Dense(
      4 * config.width, dtype=config.dtype, kernel_init=nn.initializers.normal(0.02)
    )(hidden)
    hidden = nn.gelu(hidden)
    out_init = nn.initializers.normal(0.02 / (2 * config.layers) ** 0.5)
    return features + nn.Dense(config.width, dtype=config.dtype, kernel_init=out_init)(hidden)


class GPT2(nn.Module):
  """GPT-2 language model with tied input/output embeddings."""

  config: GPT2Config

  @nn.compact
  def __call__(self, tokens):
    config = self.config
    embed = nn.Embed(
      config.vocab, config.width, dtype=config.dtype, embedding_init=nn.initializers.normal(0.02)
    )
    positions = self.param(
      "positions", nn.initializers.normal(0.01), (config.seq_len, config.width)
    )
    features = embed(tokens) + positions[: tokens.shape[1]].astype(config.dtype)
    for _ in range(config.layers):
      features = TransformerBlock(config)(features)
    features = nn.LayerNorm(dtype=config.dtype)(features)
    return embed.attend(features)


# --- Workloads ----------------------------------------------------------------------------


def _classification_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def mlp_workload(tiny: bool = False) -> Workload:
  """The MLP on a batch of 128 random 784-vectors (tiny: 64-32-10, batch 8)."""
  inputs, hidden, batch = (64, (32,), 8) if tiny else (784, (1024, 1024), 128)
  module = MLP(hidden=hidden)
  data_key, label_key = jax.random.split(jax.random.key(1))
  images = jax.random.normal(data_key, (batch, inputs), jnp.float32)
  labels = jax.random.randint(label_key, (batch,), 0, 10)

  def loss(params, model_state, data):
    del model_state
    return _classification_loss(module.apply({"params": params}, data[0]), data[1]), {}

  return Workload(
    "mlp",
    f"MLP {inputs}-{'-'.join(map(str, hidden))}-10, batch {batch}",
    module,
    (images, labels),
    loss,
    images,
  )


def resnet20_workload(tiny: bool = False) -> Workload:
  """ResNet-20 on a batch of 128 random 32x32x3 images (tiny: 1 block/stage, 8 8x8 images)."""
  blocks, size, batch = (1, 8, 8) if tiny else (3, 32, 128)
  module = ResNet20(blocks_per_stage=blocks)
  data_key, label_key = jax.random.split(jax.random.key(2))
  images = jax.random.normal(data_key, (batch, size, size, 3), jnp.float32)
  labels = jax.random.randint(label_key, (batch,), 0, 10)

  def loss(params, model_state, data):
    logits, updated = module.apply(
      {"params": params, **model_state}, data[0], train=True, mutable=["batch_stats"]
    )
    return _classification_loss(logits, data[1]), updated

  name = "ResNet-20" if not tiny else "ResNet-8"
  return Workload(
    "resnet20",
    f"{name} (BatchNorm), {size}x{size}x3, batch {batch}",
    module,
    (images, labels),
    loss,
    images,
  )


def gpt2s_workload(platform: str, tiny: bool = False) -> Workload:
  """GPT-2 (see :func:`gpt2_config`) on random tokens, next-token cross-entropy."""
  config = gpt2_config(platform, tiny)
  module = GPT2(config)
  tokens = jax.random.randint(
    jax.random.key(3), (config.batch, config.seq_len + 1), 0, config.vocab
  )

  def loss(params, model_state, data):
    del model_state
    logits = module.apply({"params": params}, data[:, :-1])
    return _classification_loss(logits, data[:, 1:]), {}

  description = (
    f"GPT-2 {config.layers}L d={config.width} h={config.heads} "
    f"vocab {config.vocab}, {config.batch}x{config.seq_len} tokens, "
    f"{jnp.dtype(config.dtype).name} compute"
  )
  return Workload("gpt2s", description, module, tokens, loss, tokens[:, :-1])


def make_workload(name: str, platform: str, tiny: bool = False) -> Workload:
  """The workload called ``name`` (one of :data:`MODELS`)."""
  if name == "mlp":
    return mlp_workload(tiny)
  if name == "resnet20":
    return resnet20_workload(tiny)
  if name == "gpt2s":
    return gpt2s_workload(platform, tiny)
  raise ValueError(f"Unknown model {name!r}: use one of {MODELS}.")
