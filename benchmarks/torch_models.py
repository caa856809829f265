"""The benchmark models of :mod:`benchmarks.models`, in PyTorch, for the reference ``ivon-opt``.

Same architectures, sizes, batch shapes and losses as the Flax versions; the data are random
tensors of the same shapes. GPT-2 runs under ``torch.autocast`` in bfloat16, as the Flax model
computes in bfloat16 with float32 params. Imported only when ``torch`` is installed.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.models import GPT2Config
from benchmarks.models import gpt2_config


@dataclasses.dataclass
class TorchWorkload:
  """A PyTorch model with a synthetic batch; ``loss(model) -> scalar tensor``."""

  name: str
  model: nn.Module
  loss: Callable[[nn.Module], torch.Tensor]
  autocast_dtype: Any = None


class MLP(nn.Sequential):
  """ReLU MLP ``in -> hidden... -> classes``."""

  def __init__(self, inputs: int, hidden: tuple[int, ...], classes: int = 10):
    layers, width = [], inputs
    for size in hidden:
      layers += [nn.Linear(width, size), nn.ReLU()]
      width = size
    super().__init__(*layers, nn.Linear(width, classes))


class ResidualBlock(nn.Module):
  """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

  def __init__(self, inputs: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(inputs, channels, 3, stride, 1, bias=False)
    self.norm1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(channels)
    self.shortcut = nn.Identity()
    if stride != 1 or inputs != channels:
      self.shortcut = nn.Sequential(
        nn.Conv2d(inputs, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
      )

  def forward(self, images):
    features = F.relu(self.norm1(self.conv1(images)))
    features = self.norm2(self.conv2(features))
    return F.relu(features + self.shortcut(images))


class ResNet20(nn.Module):
  """The CIFAR ResNet-20: 3 stages of ``blocks_per_stage`` blocks, 16/32/64 channels."""

  def __init__(self, classes: int = 10, blocks_per_stage: int = 3):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    blocks, width = [], 16
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(ResidualBlock(width, channels, stride))
        width = channels
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, classes)

  def forward(self, images):
    features = self.blocks(self.stem(images))
    return self.head(features.mean(dim=(2, 3)))


class TransformerBlock(nn.Module):
  """Pre-LayerNorm block: causal attention and a 4x GELU MLP, each with a residual."""

  def __init__(self, config: GPT2Config):
    super().__init__()
    self.heads = config.heads
    self.norm1 = nn.LayerNorm(config.width)
    self.qkv = nn.Linear(config.width, 3 * config.width)
    self.out = nn.Linear(config.width, config.width)
    self.norm2 = nn.LayerNorm(config.width)
    self.up = nn.Linear(config.width, 4 * config.width)
    self.down = nn.Linear(4 * config.width, config.width)

  def forward(self, features):
    batch, length, width = features.shape
    qkv = self.qkv(self.norm1(features)).view(batch, length, 3, self.heads, width // self.heads)
    query, key, value = qkv.permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    features = features + self.out(attended.transpose(1, 2).reshape(batch, length, width))
    return features + self.down(F.gelu(self.up(self.norm2(features)), approximate="tanh"))


class GPT2(nn.Module):
  """GPT-2 language model with tied input/output embeddings."""

  def __init__(self, config: GPT2Config):
    super().__init__()
    self.embed = nn.Embedding(config.vocab, config.width)
    self.positions = nn.Parameter(torch.randn(config.seq_len, config.width) * 0.01)
    self.blocks = nn.Sequential(*[TransformerBlock(config) for _ in range(config.layers)])
    self.norm = nn.LayerNorm(config.width)
    nn.init.normal_(self.embed.weight, std=0.02)
    for block in self.blocks:
      for layer in (block.qkv, block.up):
        nn.init.normal_(layer.weight, std=0.02)
      for layer in (block.out, block.down):
        nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * config.layers))

  def forward(self, tokens):
    features = self.embed(tokens) + self.positions[: tokens.shape[1]]
    features = self.norm(self.blocks(features))
    return features @ self.embed.weight.T


def make_torch_workload(name: str, device: str, tiny: bool = False) -> TorchWorkload:
  """The PyTorch twin of :func:`benchmarks.models.make_workload` on ``device``."""
  generator = torch.Generator().manual_seed(0)
  if name == "mlp":
    inputs, hidden, batch = (64, (32,), 8) if tiny else (784, (1024, 1024), 128)
    model = MLP(inputs, hidden)
    data = torch.randn(batch, inputs, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    autocast_dtype = None
  elif name == "resnet20":
    blocks, size, batch = (1, 8, 8) if tiny else (3, 32, 128)
    model = ResNet20(blocks_per_stage=blocks)
    data = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    autocast_dtype = None
  elif name == "gpt2s":
    config = gpt2_config("cpu" if device == "cpu" else "gpu", tiny)
    model = GPT2(config)
    tokens = torch.randint(0, config.vocab, (config.batch, config.seq_len + 1), generator=generator)
    data, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    autocast_dtype = torch.bfloat16
  else:
    raise ValueError(f"Unknown model {name!r}.")
  model = model.to(device).train()
  data, labels = data.to(device), labels.to(device)

  def loss(module):
    with torch.autocast(
      device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None
    ):
      logits = module(data)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

  return TorchWorkload(name, model, loss, autocast_dtype)
