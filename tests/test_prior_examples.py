"""Tests of the prior examples (continual learning, fine-tuning with a prior) on tiny budgets.

In-process through the examples' functions; the whole programs run in the
``study`` tier.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import continual  # noqa: E402
import data  # noqa: E402
import finetune_prior  # noqa: E402
import models  # noqa: E402


def test_seen_average_is_the_mean_over_the_tasks_seen_so_far():
  table = np.array([[[0.9, 0.1, 0.2], [0.5, 0.7, 0.0], [0.3, 0.6, 0.9]]])  # (seeds, after, task)
  np.testing.assert_allclose(continual.seen_average(table), [[0.9, 0.6, 0.6]])


def test_continual_tasks_are_permutations_of_one_task():
  tasks = continual.permuted_tasks(3, num_samples=500)
  first = tasks[0]
  for task in tasks[1:]:
    np.testing.assert_array_equal(task.y_train, first.y_train)
    # The same multiset of values in each example, in another order.
    np.testing.assert_array_equal(np.sort(task.x_train, 1), np.sort(first.x_train, 1))
    assert not np.array_equal(task.x_train, first.x_train)


@pytest.mark.study
def test_continual_vcl_learns_each_task_and_hands_its_posterior_on():
  tasks = continual.permuted_tasks(2, num_samples=1000)
  # Test sets as large as the validation sets: one compiled evaluation serves both.
  tasks = [t._replace(x_test=t.x_test[:80], y_test=t.y_test[:80]) for t in tasks]
  tasks = [jax.tree.map(jnp.asarray, t) for t in tasks]
  config = continual.Config(hidden=32, epochs=5, eval_samples=4)
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  tables, params, opt_state = continual.run_sequence(
    keys, tasks, 0.1, method="ivon-vcl", config=config
  )
  accuracy = tables["test"][0]  # (seeds, tasks trained, tasks evaluated)
  assert accuracy.shape == (2, 2, 2)
  # Chance is 0.1: each task, once trained, is learned to twice that and more.
  assert np.all(accuracy[:, 0, 0] > 0.2) and np.all(accuracy[:, 1, 1] > 0.2), accuracy
  # Task 2's prior is task 1's posterior: centred away from 0, so the prior
  # sets some weights' spread (a zero-centred weight-decay prior would not).
  facts = models.report_diagnostics(opt_state, params)
  assert min(facts["prior_dominant"]) > 0.1, facts


@pytest.mark.study
def test_finetune_prior_keeps_the_pretrained_task_with_the_posterior_as_prior():
  original_train, original_test = data.mnist1d_arrays(1000)
  shifted_train, shifted_val, _ = finetune_prior.few_shot_splits(50, 100, num_samples=1000)
  config = finetune_prior.Config(hidden=32, pretrain_epochs=10, finetune_steps=50, eval_samples=4)
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  pretrained = finetune_prior.pretrain(
    keys, jax.tree.map(jnp.asarray, original_train), config=config
  )
  test = jax.tree.map(jnp.asarray, original_test)
  before, _ = finetune_prior.evaluate_seeds(keys, *pretrained, test, config.eval_samples)
  assert np.all(before > 0.3), before  # chance is 0.1
  splits = {"train": shifted_train, "val": shifted_val, "original_test": original_test}
  scores, facts = finetune_prior.finetune(
    keys, pretrained, 0.0, jax.tree.map(jnp.asarray, splits), variant="posterior", config=config
  )
  # Fifty shifted examples barely move a model held by its pretraining posterior.
  assert np.all(np.asarray(scores["original_test"][0]) > np.asarray(before) - 0.1), scores
  assert np.all(np.asarray(facts["prior_dominant"]) > 0.5), facts


@pytest.mark.study
def test_continual_program(tmp_path):
  summary = continual.main(
    [
      *("--tasks", "2", "--seeds", "0", "1", "--epochs", "1", "--hidden", "16"),
      *("--eval-samples", "2", "--ivon-lrs", "0.1", "--adamw-lrs", "1e-2"),
      *("--out", str(tmp_path)),
    ]
  )
  assert (tmp_path / "continual.png").stat().st_size > 10_000
  saved = json.loads((tmp_path / "continual.json").read_text())
  for method in continual.METHODS:
    per_task = np.asarray(saved[method]["per_task_accuracy"])
    assert np.all(per_task[:, 0, 0] > 0.15), method  # chance is 0.1
  assert summary["ivon-vcl"]["learning_rate"] == 0.1


@pytest.mark.study
def test_finetune_prior_program(tmp_path):
  finetune_prior.main(
    [
      *("--seeds", "0", "1", "--shots", "50", "--val", "100", "--deltas", "0.01", "1.0"),
      *("--hidden", "16", "--pretrain-epochs", "1", "--finetune-steps", "20"),
      *("--out", str(tmp_path)),
    ]
  )
  results = json.loads((tmp_path / "finetune_prior.json").read_text())["results"]
  assert set(results) == {"pretrained only", *finetune_prior.VARIANTS}
  assert results["posterior"]["delta"] is None
  assert results["zero"]["delta"] in (0.01, 1.0)
