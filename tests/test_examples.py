"""Tests of the examples on tiny budgets, in-process through their functions.

``train_classifier.py`` and ``sweep_classifier.py`` run as scripts; the other
examples are imported (``examples/`` on ``sys.path``, as ``python
examples/NAME.py`` has it) and their functions called with tiny sizes.
``data_parallel.py`` and ``checkpoint_resume.py`` are run by
``test_sharding.py`` and ``test_checkpoint.py``.
"""

import math
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_json
from helpers import run_example

import ivon_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import data  # noqa: E402
import loo_validation  # noqa: E402
import merging  # noqa: E402
import models  # noqa: E402
import ood_detection  # noqa: E402
import regression_1d  # noqa: E402
import sensitivity  # noqa: E402


def check_classification(metrics: dict, num_seeds: int) -> None:
  for name, values in metrics.items():
    assert len(values) == num_seeds and all(math.isfinite(v) for v in values), name
  assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"] + metrics["ece"])
  assert all(0.0 < v < 10.0 for v in metrics["nll"])
  assert all(0.0 <= v <= 2.0 for v in metrics["brier"])


@pytest.mark.study
def test_main_job(tmp_path):
  stdout = run_example(
    "train_classifier",
    tmp_path,
    *("--dataset", "digits", "--epochs", "5", "--hidden", "32", "--samples", "4"),
    *("--seeds", "0", "1", "--no-progress"),
  )
  assert "Mean ± std over 2 seeds." in stdout
  assert "IVON (Bayes, 4) vs AdamW: accuracy " in stdout
  result = load_json(tmp_path, "results_digits.json")
  assert list(result["metrics"]) == ["SGD", "AdamW", "IVON (mean)", "IVON (Bayes, 4)"]
  for method, metrics in result["metrics"].items():
    check_classification(metrics, num_seeds=2)
    # Five epochs on digits already beat chance (0.1) by far.
    assert min(metrics["accuracy"]) > 0.5, method
  assert len(result["comparisons"]) == 4
  assert "IVON diagnostics (mean over seeds): hess_data_share" in stdout
  diagnostics = result["ivon_diagnostics"]
  # 5 epochs of full batches of 128 from the 1150 training examples left beside validation.
  assert diagnostics["step"] == [5 * (1150 // 128)] * 2
  # The recipe's h is set by the data, not hess_init decayed (diagnostics' own threshold).
  assert all(diagnostics["learned"]), diagnostics["hess_data_share"]
  assert os.path.getsize(result["reliability_diagram"]) > 10_000


def test_mnist1d_is_generated_without_downloading(monkeypatch, tmp_path):
  import mnist1d.data

  def no_download(*args, **kwargs):
    raise AssertionError("mnist1d tried to download")

  monkeypatch.setattr(mnist1d.data.requests, "get", no_download)
  monkeypatch.chdir(tmp_path)
  dataset = data.mnist1d(num_train=120, num_val=40, num_test=50)
  assert dataset.train.inputs.shape == (120, 40) and dataset.val.inputs.shape == (40, 40)
  assert dataset.test.inputs.shape == (50, 40)
  assert set(np.unique(dataset.train.labels)) <= set(range(10))
  assert not os.listdir(tmp_path)  # nothing cached to disk either
  with pytest.raises(ValueError, match="training pool"):
    data.mnist1d(num_train=4000, num_val=1)
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.load("mnist")
  with pytest.raises(ValueError, match="Unknown MNIST-1D generator arguments"):
    data.mnist1d_arrays(100, shear=2.0)
  # The same generator arguments give the same data; a shift gives other data.
  (a, _), (b, _), (c, _) = (data.mnist1d_arrays(100, **kw) for kw in ({}, {}, {"shear_scale": 1.5}))
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert not np.allclose(a.inputs, c.inputs)


@pytest.mark.study
def test_sweep_applies_the_stability_rule(tmp_path):
  run_example(
    "sweep_classifier",
    tmp_path,
    *("--dataset", "digits", "--optimizers", "sgd", "--epochs", "2", "--hidden", "8"),
    *("--seeds", "0", "1", "--num-val", "200", "--no-progress"),
  )
  result = load_json(tmp_path, "sweep_digits.json")
  rows = result["rows"]["sgd"]
  rates = sorted({row["config"]["learning_rate"] for row in rows})
  for row in rows:
    assert row["config"]["name"] == "sgd" and math.isfinite(row["nll_std"])
    # The grid's ends lack a neighbour, so they are never eligible.
    if row["config"]["learning_rate"] in (rates[0], rates[-1]):
      assert not row["eligible"]
  for row in rows:
    np.testing.assert_allclose(row["criterion"], row["nll"] + row["ece"], rtol=1e-6)
  # The choice: the eligible configuration with the lowest validation NLL + ECE.
  eligible = [row for row in rows if row["eligible"]] or [row for row in rows if row["finite"]]
  best = min(eligible, key=lambda row: row["criterion"])
  assert result["chosen"]["sgd"] == best["config"]
  assert "**(chosen)**" in (tmp_path / "sweep_digits.md").read_text()


# --- The shared training step --------------------------------------------------------


def test_train_step_takes_ivons_gradient_at_the_sample_and_others_at_the_weights():
  params = {"w": jnp.array([0.5, -1.0, 2.0])}
  loss_fn = lambda p, x: jnp.sum((p["w"] * x) ** 2)
  x, key = jnp.array([1.0, 2.0, 3.0]), jax.random.key(3)
  tx = ivon_optax.ivon(0.1, ess=50.0, hess_init=0.2)
  state = tx.init(params)
  new_params, _, loss = jax.jit(models.train_step(tx, loss_fn))(key, params, state, x)

  @jax.jit
  def by_hand(key, params, state, x):
    sampled, noise = ivon_optax.sample_params(key, state, params)
    updates, _ = tx.update(jax.grad(loss_fn)(sampled, x), state, params, noise=noise)
    return sampled, updates

  sampled, updates = by_hand(key, params, state, x)
  np.testing.assert_allclose(new_params["w"], params["w"] + updates["w"], rtol=1e-6)
  np.testing.assert_allclose(loss, loss_fn(sampled, x), rtol=1e-6)
  sgd = optax.sgd(0.1)
  new_params, _, loss = jax.jit(models.train_step(sgd, loss_fn))(key, params, sgd.init(params), x)
  np.testing.assert_allclose(new_params["w"], params["w"] * (1 - 0.2 * x**2), rtol=1e-6)


# --- 1-D regression ---------------------------------------------------------------


def test_regression_data_and_regions_are_where_the_docs_say():
  train = data.regression_1d(200, seed=3)
  assert train.inputs.shape == (200, 1) and train.labels.shape == (200,)
  regions = data.regression_regions(train.inputs[:, 0])
  assert regions["data"].all() and not regions["gap"].any() and not regions["outside"].any()
  residual = train.labels - data.true_function(train.inputs[:, 0])
  assert abs(residual.std() - data.REGRESSION_NOISE_STD) < 0.02  # 200 draws of N(0, 0.1²)


@pytest.mark.study
def test_regression_band_widens_in_the_gap_and_outside():
  # A short run needs a faster Hessian decay (beta2) for the posterior to adapt.
  hidden = (32, 32)
  fits = models.fit_regression(
    data.regression_1d(500), hidden=hidden, seeds=[0], epochs=30, beta2=0.99
  )
  moments = regression_1d.band(hidden, fits["ivon"], regression_1d.GRID, 32)
  summary = regression_1d.summarize(moments, regression_1d.GRID)
  on_data = np.mean(summary["data"]["std"])
  assert np.mean(summary["gap"]["std"]) > 1.25 * on_data
  assert np.mean(summary["outside"]["std"]) > on_data
  assert np.mean(summary["gap"]["epistemic_std"]) > np.mean(summary["data"]["epistemic_std"])
  # On the data the predictive mean follows the true function to well within its range (±3).
  on_data = data.regression_regions(regression_1d.GRID)["data"]
  error = np.asarray(moments.mean)[0] - data.true_function(regression_1d.GRID)
  assert np.sqrt(np.mean(error[on_data] ** 2)) < 0.3, np.sqrt(np.mean(error[on_data] ** 2))
  facts = models.report_diagnostics(fits["ivon"].opt_state, fits["ivon"].params)
  assert facts["learned"] == [True]


# --- Out-of-distribution detection ---------------------------------------------------


def test_entropy_aurocs_separate_sure_from_unsure_predictions():
  sure = jnp.log(jnp.full((1, 20, 10), 1e-6).at[:, :, 0].set(1.0 - 9e-6))
  unsure = jnp.log(jnp.full((1, 20, 10), 0.1))
  aurocs = models.entropy_aurocs({"digits": sure, "noise": unsure, "same": sure}, "digits")
  assert aurocs == {"noise": [1.0], "same": [0.5]}


@pytest.mark.study
def test_ood_detection_ivon_is_less_sure_on_noise_than_on_digits():
  dataset = data.digits()
  test = dataset.test.inputs
  inputs = {"digits": test, **ood_detection.out_of_distribution_sets(test)}
  log_probs, ivon_runs = ood_detection.predictions(
    dataset, inputs, hidden=(32,), seeds=[0], epochs=10, samples=4, progress=False
  )
  assert set(log_probs) == {"SGD", "AdamW", "IVON (mean)", "IVON (Bayes, 4)"}
  aurocs = {method: models.entropy_aurocs(lp, "digits") for method, lp in log_probs.items()}
  assert all(v > 0.6 for values in aurocs["IVON (Bayes, 4)"].values() for v in values), aurocs
  # Trained, every method is far better than chance on the digits themselves.
  for method, by_set in log_probs.items():
    accuracy = np.mean(np.argmax(by_set["digits"][0], -1) == dataset.test.labels)
    assert accuracy > 0.8, (method, accuracy)


# --- Sensitivity, leave-one-out, merging ---------------------------------------------


def check_png(path):
  plt = pytest.importorskip("matplotlib.pyplot")
  image = plt.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
  assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.study
def test_sensitivity_ranks_uncertain_digits_first(tmp_path):
  args = sensitivity.parse_args(
    ["--num-train", "200", "--epochs", "30", "--show", "8", "--mc-samples", "16"]
    + ["--out", str(tmp_path)]
  )
  result = sensitivity.score_seed(args, 0, show=True)
  check_png(tmp_path / "sensitivity_digits.png")
  assert not set(result["top"]) & set(result["bottom"])
  # The most influential digits are those the model is least sure of.
  assert result["mean_p_label_top"] < result["mean_p_label_bottom"] - 0.2
  # The Jacobian's variances rank the digits as the sampled ones do.
  assert result["spearman_jacobian_vs_sampled"] > 0.5
  assert result["test_accuracy"] > 0.7


@pytest.mark.study
def test_loo_validation_learns_h_only_with_a_short_memory(tmp_path):
  args = loo_validation.parse_args(["--num-train", "150", "--out", str(tmp_path)])
  # beta2 0.99 (a memory of 100 steps, 240 steps): the data set h.
  log = loo_validation.run(args, 0, hess_init=0.1, beta2=0.99, num_epochs=60, every_epoch=False)
  assert log["learned"][0] == 1.0 and log["loo_nll"][0] > log["train_nll"][0]
  # The pitfall: with beta2 0.99999, h stays at hess_init, whichever it is.
  for hess_init in (0.01, 1.0):
    log = loo_validation.run(args, 0, hess_init=hess_init, beta2=0.99999, num_epochs=10)
    assert not np.any(log["learned"]), hess_init
  loo_validation.plot(tmp_path / "loo.png", log)
  check_png(tmp_path / "loo.png")


@pytest.mark.study
def test_merged_models_know_both_tasks():
  # Base and tasks of one size and length: their IVON runs share one compiled epoch.
  args = merging.parse_args(
    [*("--base-size", "150", "--task-size", "150", "--base-epochs", "20", "--task-epochs", "20")]
    + ["--scales", "1.0"]
  )
  scores = merging.merge_seed(args, 0)
  facts = scores.pop("_diagnostics")
  assert set(facts) == set(models.KEY_FACTS) and len(facts["learned"]) == 3
  # Each task model knows only half the classes; the merges know both halves.
  single = max(scores["task 0-4 only"]["accuracy"], scores["task 5-9 only"]["accuracy"])
  for name in ("average", "uncertainty (alpha=1)"):
    assert scores[name]["accuracy"] > single + 0.1, (name, scores[name], single)
