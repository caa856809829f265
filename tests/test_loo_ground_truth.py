"""Leave-one-out estimators against exact leave-one-out: ridge (closed form), logistic refits.

Everything here is float64 and small (seconds). ``benchmarks/loo_accuracy.py``
runs the same comparisons at full size, with IVON's own posterior.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ivon_optax

sensitivity = ivon_optax.sensitivity


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


# --- Ridge regression: exact LOO is r_i / (1 - H_ii) -----------------------------------


def ridge_problem(num=30, dim=4, noise_variance=0.5, prior_precision=2.0, seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(num, dim))
  targets = inputs @ rng.normal(size=dim) + rng.normal(size=num)
  precision = inputs.T @ inputs / noise_variance + prior_precision * np.eye(dim)
  weights = np.linalg.solve(precision, inputs.T @ targets / noise_variance)
  return inputs, targets, weights, np.linalg.inv(precision), noise_variance


def ridge_changes(method, **problem):
  inputs, targets, weights, covariance, noise_variance = ridge_problem(**problem)
  outputs = inputs @ weights
  blocks = np.einsum("na,ab,nb->n", inputs, covariance, inputs)[:, None, None]
  error = ((outputs - targets) / noise_variance)[:, None]
  curvature = np.full_like(blocks, 1.0 / noise_variance)
  change = sensitivity.loo_change(
    jnp.asarray(blocks), jnp.asarray(error), jnp.asarray(curvature), method=method
  )
  return np.asarray(change)[:, 0], outputs, targets, blocks[:, 0, 0] / noise_variance


def test_leverage_is_exact_leave_one_out_for_ridge():
  change, outputs, targets, leverage = ridge_changes("leverage")
  exact_residual = (targets - outputs) / (1.0 - leverage)
  np.testing.assert_allclose(targets - (outputs + change), exact_residual, rtol=1e-9)


def test_ridge_closed_form_matches_refits():
  # The closed form the test above relies on, checked against explicit refits.
  inputs, targets, weights, _, noise_variance = ridge_problem()
  _, outputs, _, leverage = ridge_changes("leverage")
  for i in range(5):
    keep = np.arange(len(targets)) != i
    x, y = inputs[keep], targets[keep]
    refit = np.linalg.solve(x.T @ x / noise_variance + 2.0 * np.eye(4), x.T @ y / noise_variance)
    np.testing.assert_allclose(
      targets[i] - inputs[i] @ refit, (targets[i] - outputs[i]) / (1 - leverage[i]), rtol=1e-9
    )


def test_block_and_diagonal_miss_the_leverage_factor_for_ridge():
  leverage_change, *_ = ridge_changes("leverage")
  _, _, _, leverage = ridge_changes("block")
  for method in ("block", "diagonal"):  # one output: the two coincide
    change, *_ = ridge_changes(method)
    np.testing.assert_allclose(change, leverage_change * (1.0 - leverage), rtol=1e-9)
  assert leverage.max() > 0.1  # the factor is visible on this problem


# --- Logistic regression: exact LOO by refits ---------------------------------------------

NUM, DIM, CLASSES, WEIGHT_DECAY = 60, 4, 3, 1e-2


def logistic_problem(seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(CLASSES, DIM)) * 1.5
  labels = np.arange(NUM) % CLASSES
  inputs = centers[labels] + rng.normal(size=(NUM, DIM))
  return jnp.asarray(inputs), jnp.asarray(labels)


def apply_fn(params, inputs):
  return inputs @ params["w"] + params["b"]


def objective(params, inputs, labels, keep):
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(apply_fn(params, inputs), labels)
  squares = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(params))
  return jnp.sum(keep * nll) + 0.5 * NUM * WEIGHT_DECAY * squares


@jax.jit
def newton_fit(params, inputs, labels, keep):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  loss = lambda f: objective(unravel(f), inputs, labels, keep)
  step = lambda f, _: (f - jnp.linalg.solve(jax.hessian(loss)(f), jax.grad(loss)(f)), None)
  flat = jax.lax.scan(step, flat, None, length=20)[0]
  return unravel(flat), jax.hessian(loss)(flat)


@pytest.fixture(scope="module")
def logistic_truth():
  with jax.enable_x64(True):
    inputs, labels = logistic_problem()
    zeros = {"w": jnp.zeros((DIM, CLASSES)), "b": jnp.zeros(CLASSES)}
    params, hessian = newton_fit(zeros, inputs, labels, jnp.ones(NUM))
    loo_nll = []
    for i in range(NUM):
      refit, _ = newton_fit(params, inputs, labels, jnp.ones(NUM).at[i].set(0.0))
      logits = apply_fn(refit, inputs[i : i + 1])
      loo_nll.append(
        float(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels[i : i + 1])[0])
      )
    return inputs, labels, params, hessian, float(np.mean(loo_nll))


def full_covariance_nll(params, hessian, inputs, labels, method):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jacobian = jax.vmap(jax.jacrev(lambda f, x: apply_fn(unravel(f), x)), in_axes=(None, 0))(
    flat, inputs
  )
  blocks = jnp.einsum("nkp,pq,nlq->nkl", jacobian, jnp.linalg.inv(hessian), jacobian)
  logits = apply_fn(params, inputs)
  error, curvature = sensitivity.softmax_error_and_curvature(logits, labels)
  change = sensitivity.loo_change(blocks, error, curvature, method=method)
  return float(sensitivity.loo_from_change(logits, labels, change).nll)


def test_leverage_with_the_full_covariance_matches_refits(logistic_truth):
  inputs, labels, params, hessian, truth = logistic_truth
  estimates = {
    method: full_covariance_nll(params, hessian, inputs, labels, method)
    for method in ("leverage", "block", "diagonal")
  }
  print(f"exact LOO NLL {truth:.4f}; full-covariance estimates {estimates}")
  assert abs(estimates["leverage"] / truth - 1) < 0.05
  # Without the leverage correction the step is too short: block undershoots.
  assert estimates["block"] < estimates["leverage"]
  assert abs(estimates["leverage"] - truth) < abs(estimates["block"] - truth)


def test_leave_one_out_with_an_exact_diagonal_posterior(logistic_truth):
  # leave_one_out reads sigma from the IVON state: give it h = diag(H) / N, the
  # exact diagonal of the data Hessian that IVON's h estimates.
  inputs, labels, params, hessian, truth = logistic_truth
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  data_diagonal = jnp.diag(hessian) - NUM * WEIGHT_DECAY
  state = ivon_optax.scale_by_ivon(float(NUM), weight_decay=WEIGHT_DECAY).init(params)
  state = state._replace(hess=unravel(data_diagonal / NUM))
  std = ivon_optax.posterior_std(state, params)
  np.testing.assert_allclose(
    jax.flatten_util.ravel_pytree(std)[0] ** -2, jnp.diag(hessian), rtol=1e-9
  )
  estimates = {
    method: float(
      sensitivity.leave_one_out(apply_fn, state, params, inputs, labels, method=method).nll
    )
    for method in ("leverage", "block", "diagonal")
  }
  print(f"exact LOO NLL {truth:.4f}; diagonal-posterior estimates {estimates}")
  # A linear softmax model with a diagonal posterior has diagonal A_i: block = diagonal.
  np.testing.assert_allclose(estimates["block"], estimates["diagonal"], rtol=1e-9)
  train_nll = float(
    optax.losses.softmax_cross_entropy_with_integer_labels(apply_fn(params, inputs), labels).mean()
  )
  for estimate in estimates.values():
    assert train_nll < estimate < 5 * truth


def test_benchmark_refits_reach_the_minimizer_without_each_example(logistic_truth):
  # benchmarks/loo_accuracy.py computes its truth by a preconditioned fixed-point
  # iteration per example: it must agree with the Newton refits of the fixture.
  from benchmarks import loo_accuracy

  inputs, labels, params, _, truth = logistic_truth
  inputs = loo_accuracy.augment(inputs)
  weights = jnp.concatenate([params["w"], params["b"][None]])
  hessian = loo_accuracy.data_hessian(weights, inputs, labels, jnp.ones(NUM))
  loo_nll, gradient_norm = loo_accuracy.refit_without_each(
    weights, inputs, labels, WEIGHT_DECAY, hessian
  )
  assert float(gradient_norm.max()) < 1e-8
  np.testing.assert_allclose(float(loo_nll.mean()), truth, rtol=1e-6)
