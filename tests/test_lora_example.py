"""Tests of ``examples/lora_finetune.py`` on tiny sizes, in-process through its functions."""

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import data  # noqa: E402
import lora_finetune  # noqa: E402
import models  # noqa: E402

TINY = [
  *("--dim", "16", "--heads", "2", "--depth", "1", "--rank", "2", "--pretrain-epochs", "5"),
  *("--pretrain-batch", "32"),
  *("--epochs", "40", "--batch-size", "16", "--num-train", "64", "--num-val", "64"),
  *("--num-test", "64", "--seeds", "0", "1"),
]


def test_grid_points_are_the_product_of_the_grid():
  points = lora_finetune.grid_points({"a": (1, 2), "b": (3,)})
  assert points == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_select_picks_the_lowest_mean_validation_nll_and_skips_nan():
  points = [{"lr": 1}, {"lr": 2}, {"lr": 3}]
  runs = [(p, s) for p in points for s in (0, 1)]
  val = {"mean": {"nll": [0.5, 0.7, float("nan"), 0.1, 0.4, 0.4]}}
  test = {"mean": {"nll": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}}
  best, chosen, grid = lora_finetune.select(points, runs, val, test, [0, 1])
  assert best == {"lr": 3} and chosen == {"mean": {"nll": [5.0, 6.0]}}
  assert grid[1]["val_nll"] == math.inf


@pytest.mark.study
def test_lora_model_starts_as_the_restored_base_and_ivon_tunes_its_adapters(tmp_path):
  args = lora_finetune.parse_args([*TINY, "--out", str(tmp_path)])
  source = data.mnist1d(num_train=1000, num_val=0, num_test=200)
  mean, std = source.train.inputs.mean(), source.train.inputs.std()
  source = lora_finetune.standardize(source, mean, std)
  target = lora_finetune.target_task(args.num_train, args.num_val, args.num_test)
  target = lora_finetune.standardize(target, mean, std)
  base = lora_finetune.pretrain(args, source)
  log_probs = jax.nn.log_softmax(base(source.test.inputs))
  assert np.mean(np.argmax(log_probs, -1) == source.test.labels) > 0.2  # chance is 0.1
  checkpoint = tmp_path / "base"
  lora_finetune.save_pretrained(base, checkpoint)
  # Restored into the LoRA model, whose adapters start at zero: the base's function exactly.
  lora = lora_finetune.restore_into(
    lora_finetune.make_model(args, 2, jax.random.key(5)), checkpoint
  )
  np.testing.assert_allclose(lora(target.val.inputs), base(target.val.inputs), atol=1e-5)
  base_nll = lora_finetune.scores(jax.nn.log_softmax(base(target.val.inputs)), target.val.labels)
  # The point the full run selects (docs/lora.md): lr 0.1, ess 10^4 N.
  grid = {"learning_rate": (0.1,), "ess_per_example": (1e4,), "hess_init": (1e-3,)}
  points, runs, val, test = lora_finetune.finetune(args, "ivon", grid, target, checkpoint)
  assert len(runs) == 2 and set(val) == {"mean", "diagnostics", *map(str, lora_finetune.SAMPLES)}
  # clip_radius 1e-3 bounds each step: 160 steps move the adapters, not far from the base.
  nll = np.asarray(val["mean"]["nll"])
  assert np.all(np.abs(nll - float(base_nll["nll"])) < 0.1) and np.all(
    nll != float(base_nll["nll"])
  )
  facts = val["diagnostics"]
  assert set(facts) == set(models.KEY_FACTS) and len(facts["hess_data_share"]) == 2
  print(models.describe_facts(facts, "IVON-LoRA"))


@pytest.mark.study
def test_lora_finetune_program(tmp_path):
  output = lora_finetune.main([*TINY, "--tiny-grid", "--out", str(tmp_path)])
  assert list(output["metrics"]) == [
    "AdamW-LoRA",
    "IVON-LoRA (mean)",
    *(f"IVON-LoRA ({k})" for k in lora_finetune.SAMPLES),
  ]
  assert set(output["chosen"]) == {"AdamW-LoRA", "IVON-LoRA"}
  assert (tmp_path / "lora_finetune.png").stat().st_size > 0
  assert (tmp_path / "lora_pretrained").is_dir()
  assert jnp.isfinite(jnp.asarray(output["metrics"]["IVON-LoRA (16)"]["nll"])).all()
