"""The language-model example's pieces on a tiny configuration: model, data, one step, the mask."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import language_model as lm  # noqa: E402

TINY = lm.ModelConfig(context=8, width=16, depth=1, heads=2, mlp_ratio=4)


def tiny_model(seed=0):
  return lm.Transformer(TINY, rngs=nnx.Rngs(seed))


def test_logits_shape_and_parameter_count():
  model = tiny_model()
  tokens = jnp.zeros((3, TINY.context), jnp.int32)
  assert lm.mean_log_probs(model, jnp.zeros((3, TINY.context + 1), jnp.int32)).shape == (
    3,
    TINY.context,
    lm.VOCAB,
  )
  assert nnx.jit(lambda model, tokens: model(tokens))(model, tokens).shape == (
    3,
    TINY.context,
    lm.VOCAB,
  )
  width, hidden = TINY.width, TINY.mlp_ratio * TINY.width
  embeddings = lm.VOCAB * width + TINY.context * width  # the output layer is tied: no more
  attention = 4 * (width * width + width)  # query, key, value, output: kernel and bias
  mlp = width * hidden + hidden + hidden * width + width
  norms = 2 * width * (2 * TINY.depth + 1)  # scale and bias, two per block and a final one
  assert lm.parameter_count(model) == embeddings + TINY.depth * (attention + mlp) + norms


def test_too_long_input_is_refused():
  with pytest.raises(ValueError, match="context"):
    tiny_model()(jnp.zeros((1, TINY.context + 1), jnp.int32))


def test_split_is_disjoint_by_position_and_covers_the_data():
  data = np.arange(1000)
  parts = [lm.split(data, name) for name in ("train", "validation", "test")]
  np.testing.assert_array_equal(np.concatenate(parts), data)
  assert [len(part) for part in parts] == [900, 50, 50]
  with pytest.raises(ValueError, match="split"):
    lm.split(data, "dev")


def test_corpus_is_deterministic_bytes():
  first, second = lm.corpus(("textwrap", "bisect")), lm.corpus(("textwrap", "bisect"))
  assert first.dtype == np.uint8
  np.testing.assert_array_equal(first, second)
  import textwrap

  assert bytes(first[:200]) == open(textwrap.__file__, "rb").read()[:200]


def test_windows_targets_are_the_next_bytes():
  data = np.arange(50, dtype=np.uint8)
  batch = lm.windows(data, context=8)
  assert batch.shape == (6, 9)  # (50 - 1) // 8 windows
  np.testing.assert_array_equal(batch[:, 1:], batch[:, :-1] + 1)
  np.testing.assert_array_equal(batch[1:, 0], batch[:-1, -1])  # each byte a target once
  assert lm.windows(data, context=8, limit=2).shape == (2, 9)


def test_decay_mask_spares_layernorm_and_biases():
  mask = lm.decay_mask(nnx.state(tiny_model(), nnx.Param))
  flat = {
    "/".join(str(k) for k in path): bool(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  decayed = sorted(name for name, value in flat.items() if value)
  spared = sorted(name for name, value in flat.items() if not value)
  assert all("norm" in name or "bias" in name for name in spared), spared
  assert all("norm" not in name and "bias" not in name for name in decayed), decayed
  assert any("embed" in name for name in decayed)


@pytest.mark.parametrize("optimizer", ["ivon", "adamw"])
def test_train_steps_run_and_change_every_param(optimizer):
  model = tiny_model()
  learning_rate = {"ivon": 1.0, "adamw": 1e-2}[optimizer]
  run = lm.RunConfig(optimizer, learning_rate, steps=10, warmup=1)  # step 0 has rate 0
  data = jnp.asarray((np.arange(400) % 7).astype(np.int32))
  opt = lm.make_optimizer(run, model, num_train=len(data) - 1)
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  for step in range(2):
    loss = lm.STEPS[optimizer](model, opt, jax.random.key(step), data, TINY.context, 4)
    assert np.isfinite(float(loss))
  after = nnx.state(model, nnx.Param)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed)), changed
  assert int(opt.step[...]) == 2


def test_a_position_never_sees_the_future():
  model = tiny_model()
  forward = nnx.jit(lambda model, tokens: model(tokens))
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, lm.VOCAB, (2, TINY.context))
  logits = forward(model, jnp.asarray(tokens))
  for t in range(TINY.context - 1):
    changed = tokens.copy()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + rng.integers(1, lm.VOCAB, (2, 1))) % lm.VOCAB
    other = forward(model, jnp.asarray(changed))
    np.testing.assert_allclose(other[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-5)
    assert float(jnp.max(jnp.abs(other[:, t + 1] - logits[:, t + 1]))) > 1e-3
