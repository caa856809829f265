"""Tests of ivon_optax.sensitivity: the formulas, the batching, and a retraining check.

The retraining check follows the memory-perturbation paper's protocol on
multinomial logistic regression over a digits subset: train with IVON, score
every example, then retrain without each of 30 examples (warm-started) and
compare the true change of that example's predicted probabilities with the
estimate.
"""

import chex
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

import ivon_optax


def small_mlp(key, sizes=(3, 5, 4)):
  return helpers.init_mlp(key, sizes)


def ivon_state_with_hess(params, hess_value, *, ess, weight_decay):
  """An IVON state whose Hessian is ``hess_value`` everywhere (a tree like params)."""
  tx = ivon_optax.ivon(0.1, ess=ess, weight_decay=weight_decay)
  state = tx.init(params)
  return (state[0]._replace(hess=hess_value),) + tuple(state[1:])


# --- prediction variance ------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [2, 32])
def test_prediction_variance_matches_explicit_jacobian(chunk_size):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), small_mlp(jax.random.key(0)))
    std = jax.tree.map(
      lambda p: jax.random.uniform(jax.random.key(1), p.shape, jnp.float64, 0.1, 1.0), params
    )
    inputs = jax.random.normal(jax.random.key(2), (7, 3), jnp.float64)
    outputs, variance = ivon_optax.sensitivity.prediction_variance(
      helpers.mlp_apply, params, std, inputs, chunk_size=chunk_size
    )

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    sigma_squared = jax.flatten_util.ravel_pytree(std)[0] ** 2
    jacobian = jax.jacrev(lambda theta: helpers.mlp_apply(unravel(theta), inputs))(flat)
    expected = jnp.einsum("nkp,p->nk", jacobian**2, sigma_squared)
    chex.assert_trees_all_close(variance, expected, rtol=1e-12)
    chex.assert_trees_all_close(outputs, helpers.mlp_apply(params, inputs), rtol=1e-12)


def test_prediction_variance_compiles_once():
  params = small_mlp(jax.random.key(0))
  std = jax.tree.map(jnp.ones_like, params)
  inputs = jnp.ones((6, 3))
  ivon_optax.sensitivity.prediction_variance(helpers.mlp_apply, params, std, inputs)
  before = ivon_optax.sensitivity.prediction_variance._cache_size()
  ivon_optax.sensitivity.prediction_variance(
    helpers.mlp_apply, jax.tree.map(lambda p: p + 1, params), std, inputs + 1
  )
  assert ivon_optax.sensitivity.prediction_variance._cache_size() == before


def test_prediction_variance_rejects_a_std_unlike_params():
  params = small_mlp(jax.random.key(0))
  with pytest.raises(ValueError, match="std"):
    ivon_optax.sensitivity.prediction_variance(
      helpers.mlp_apply, params, [params[0]], jnp.ones((2, 3))
    )


def test_sampled_variance_does_not_depend_on_the_chunk_size():
  params = small_mlp(jax.random.key(0))
  state = ivon_optax.ivon(0.1, ess=20.0).init(params)
  inputs = jax.random.normal(jax.random.key(1), (7, 3))
  whole, chunked = (
    ivon_optax.sensitivity.sampled_prediction_variance(
      jax.random.key(2),
      helpers.mlp_apply,
      state,
      params,
      inputs,
      num_samples=8,
      chunk_size=chunk_size,
    )
    for chunk_size in (256, 3)
  )
  chex.assert_trees_all_close(whole, chunked, rtol=1e-4)


def test_sampled_variance_is_the_epistemic_part_of_the_predictive_moments():
  # One variance convention (divide by S): the same samples give the same variance.
  params = small_mlp(jax.random.key(0))
  state = ivon_optax.ivon(0.1, ess=20.0).init(params)
  inputs = jax.random.normal(jax.random.key(1), (7, 3))
  key = jax.random.key(2)
  sampled = ivon_optax.sensitivity.sampled_prediction_variance(
    key, helpers.mlp_apply, state, params, inputs, num_samples=8
  )
  outputs = ivon_optax.predict.sample_outputs(
    key, helpers.mlp_apply, state, params, inputs, num_samples=8
  )
  moments = ivon_optax.predict.predictive_moments(outputs)
  # Different summation orders only; 1/(S-1) would be 14% off.
  chex.assert_trees_all_close(sampled, moments.epistemic, rtol=1e-3)


def test_masked_leaves_add_no_variance():
  params = small_mlp(jax.random.key(0))
  tx = optax.partition(
    {"ivon": ivon_optax.ivon(0.1, ess=10.0), "frozen": optax.set_to_zero()},
    [{"w": "ivon", "b": "frozen"}, {"w": "frozen", "b": "frozen"}],
  )
  state = tx.init(params)
  std = ivon_optax.posterior_std(state, params)
  inputs = jax.random.normal(jax.random.key(3), (4, 3))
  _, variance = ivon_optax.sensitivity.prediction_variance(helpers.mlp_apply, params, std, inputs)
  only_first = [std[0], jax.tree.map(jnp.zeros_like, params[1])]
  _, expected = ivon_optax.sensitivity.prediction_variance(
    helpers.mlp_apply, params, only_first, inputs
  )
  chex.assert_trees_all_close(variance, expected)


def test_sampled_variance_matches_the_jacobian_form_for_linear_models():
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  hess = {"w": jnp.array([[1.0, 2.0], [0.5, 1.0], [4.0, 1.0]]), "b": jnp.array([1.0, 3.0])}
  state = ivon_state_with_hess(params, hess, ess=2.0, weight_decay=0.0)
  apply_fn = lambda p, x: x @ p["w"] + p["b"]
  inputs = jax.random.normal(jax.random.key(0), (5, 3))
  std = ivon_optax.posterior_std(state, params)
  _, exact = ivon_optax.sensitivity.prediction_variance(apply_fn, params, std, inputs)
  sampled = ivon_optax.sensitivity.sampled_prediction_variance(
    jax.random.key(1), apply_fn, state, params, inputs, num_samples=4000
  )
  # relative standard error sqrt(2/4000) = 2.2%, bias 1/4000: 5 sigma
  chex.assert_trees_all_close(sampled, exact, rtol=0.12)


def test_sampled_variance_is_close_for_a_network_with_small_noise():
  params = small_mlp(jax.random.key(0))
  hess = jax.tree.map(lambda p: jnp.full(p.shape, 50.0), params)
  state = ivon_state_with_hess(params, hess, ess=100.0, weight_decay=0.0)
  inputs = jax.random.normal(jax.random.key(1), (6, 3))
  std = ivon_optax.posterior_std(state, params)
  _, linearized = ivon_optax.sensitivity.prediction_variance(helpers.mlp_apply, params, std, inputs)
  sampled = ivon_optax.sensitivity.sampled_prediction_variance(
    jax.random.key(2), helpers.mlp_apply, state, params, inputs, num_samples=2000
  )
  chex.assert_trees_all_close(sampled, linearized, rtol=0.25)


# --- softmax and Gaussian forms --------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), num_classes=st.integers(2, 6))
def test_softmax_sensitivity_formulas(seed, num_classes):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(5, num_classes)).astype(np.float32) * 3
  labels = rng.integers(0, num_classes, 5)
  variance = rng.uniform(0, 2, size=(5, num_classes)).astype(np.float32)
  result = ivon_optax.sensitivity.softmax_sensitivity(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(variance)
  )
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  error = probs - np.eye(num_classes)[labels]
  curvature = np.clip(probs * (1 - probs), 1e-10, 1 - 1e-10)
  chex.assert_trees_all_close(result.error, error, atol=1e-5)
  chex.assert_trees_all_close(result.change, variance * error, atol=1e-5)
  chex.assert_trees_all_close(result.score, np.abs(curvature * error * variance).sum(-1), atol=1e-5)
  chex.assert_shape(result.score, (5,))


def test_softmax_sensitivity_rejects_bad_shapes():
  with pytest.raises(ValueError, match="labels"):
    ivon_optax.sensitivity.softmax_sensitivity(
      jnp.zeros((3, 2)), jnp.zeros(4, int), jnp.zeros((3, 2))
    )
  with pytest.raises(ValueError, match="variance"):
    ivon_optax.sensitivity.softmax_sensitivity(
      jnp.zeros((3, 2)), jnp.zeros(3, int), jnp.zeros((3, 3))
    )


def test_classification_sensitivity_rejects_bad_input():
  params = small_mlp(jax.random.key(0))
  state = ivon_optax.ivon(0.1, ess=10.0).init(params)
  with pytest.raises(ValueError, match="labels"):
    ivon_optax.sensitivity.classification_sensitivity(
      helpers.mlp_apply, state, params, jnp.ones((5, 3)), jnp.zeros(4, int)
    )
  with pytest.raises(ValueError, match="chunk_size"):
    ivon_optax.sensitivity.classification_sensitivity(
      helpers.mlp_apply, state, params, jnp.ones((5, 3)), jnp.zeros(5, int), chunk_size=0
    )
  with pytest.raises(ValueError, match="IVON state"):
    ivon_optax.sensitivity.classification_sensitivity(
      helpers.mlp_apply, optax.adam(0.1).init(params), params, jnp.ones((5, 3)), jnp.zeros(5, int)
    )


def test_classification_sensitivity_with_a_flax_model():
  nn = pytest.importorskip("flax.linen")
  model = nn.Sequential([nn.Dense(6), nn.tanh, nn.Dense(3)])
  inputs = jax.random.normal(jax.random.key(0), (9, 4))
  params = model.init(jax.random.key(1), inputs)
  state = ivon_optax.ivon(0.1, ess=9.0).init(params)
  result = ivon_optax.sensitivity.classification_sensitivity(
    model.apply, state, params, inputs, jnp.arange(9) % 3, chunk_size=4
  )
  std = ivon_optax.posterior_std(state, params)
  _, variance = ivon_optax.sensitivity.prediction_variance(
    model.apply, params, std, inputs, chunk_size=9
  )
  chex.assert_trees_all_close(result.variance, variance, rtol=1e-5)
  assert np.all(np.asarray(result.score) > 0)


def test_regression_sensitivity_is_the_first_order_exact_loo():
  # Orthogonal inputs make the posterior of Bayesian linear regression diagonal,
  # so IVON's diagonal posterior can hold it exactly. Leaving example i out then
  # moves its prediction by v e / (1 - v / s^2) exactly: v e to first order.
  with jax.enable_x64(True):
    inputs = jnp.concatenate([2.0 * jnp.eye(4), 0.5 * jnp.eye(4), jnp.eye(4)])
    targets = jnp.arange(12.0) % 5 - 2.0
    noise_variance, prior_precision, ess = 0.5, 1.0, 12.0
    precision = jnp.sum(inputs**2, axis=0) / noise_variance + prior_precision
    mean = (inputs.T @ targets / noise_variance) / precision
    params = {"w": mean}
    weight_decay = prior_precision / ess
    state = ivon_state_with_hess(
      params, {"w": precision / ess - weight_decay}, ess=ess, weight_decay=weight_decay
    )
    apply_fn = lambda p, x: x @ p["w"]
    result = ivon_optax.sensitivity.regression_sensitivity(
      apply_fn, state, params, inputs, targets, noise_variance=noise_variance
    )

    def loo_prediction(i):
      keep = jnp.arange(12) != i
      x, y = inputs[keep], targets[keep]
      loo_precision = jnp.sum(x**2, axis=0) / noise_variance + prior_precision
      return inputs[i] @ ((x.T @ y / noise_variance) / loo_precision)

    exact_change = jnp.stack([loo_prediction(i) for i in range(12)]) - inputs @ mean
    leverage = result.variance / noise_variance
    chex.assert_trees_all_close(result.change / (1 - leverage), exact_change, rtol=1e-10)
    chex.assert_trees_all_close(result.score, jnp.abs(result.change))


def test_gaussian_sensitivity_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same shape"):
    ivon_optax.sensitivity.gaussian_sensitivity(jnp.zeros(3), jnp.zeros(4), jnp.zeros(3))


# --- retraining check ---------------------------------------------------------------


NUM_TRAIN = 300
NUM_CLASSES = 5
WEIGHT_DECAY = 1e-3
NUM_STEPS = 1500


@pytest.fixture(scope="module")
def logistic_regression():
  """IVON-trained multinomial logistic regression on 300 digits 0-4, and its sensitivities."""
  train, test = helpers.load_digits_splits([NUM_TRAIN, 500], seed=0, classes=range(NUM_CLASSES))
  params = helpers.init_mlp(jax.random.key(0), [64, NUM_CLASSES])
  tx = ivon_optax.ivon(
    0.1, ess=float(NUM_TRAIN), hess_init=0.1, beta2=0.999, weight_decay=WEIGHT_DECAY
  )
  params, state = helpers.train_ivon(
    jax.random.key(1), tx, params, train, num_steps=NUM_STEPS, batch_size=64
  )
  sensitivity = ivon_optax.sensitivity.classification_sensitivity(
    helpers.mlp_apply, state, params, jnp.asarray(train.inputs), jnp.asarray(train.labels)
  )
  return train, test, params, sensitivity


def newton_retrain(weights, start, inputs, labels, num_iterations):
  """Newton's method on sum_i w_i l_i(theta) + (ess * delta / 2) |theta|^2, in float64.

  ``theta`` stacks the weights and the bias of the logistic regression as a
  (65, classes) matrix, flattened row-major for the Hessian.
  """
  features = jnp.concatenate([inputs, jnp.ones((inputs.shape[0], 1))], axis=1)
  num_classes = start.shape[1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  prior = NUM_TRAIN * WEIGHT_DECAY
  size = features.shape[1] * num_classes

  def step(theta, _):
    probs = jax.nn.softmax(features @ theta, axis=-1)
    grad = features.T @ (weights[:, None] * (probs - onehot)) + prior * theta
    # sum_i w_i x_i x_i^T (x) (diag(p_i) - p_i p_i^T), without an (n, size, size) intermediate
    diagonal = jnp.einsum("n,na,nb,nk->akb", weights, features, features, probs)
    diagonal = jnp.einsum("akb,kl->akbl", diagonal, jnp.eye(num_classes, dtype=probs.dtype))
    outer = (features[:, :, None] * probs[:, None, :]).reshape(-1, size)
    hess = diagonal.reshape(size, size) - (outer.T * weights) @ outer + prior * jnp.eye(size)
    return theta - jnp.linalg.solve(hess, grad.ravel()).reshape(theta.shape), None

  return jax.lax.scan(step, start, None, length=num_iterations)[0]


def test_estimated_change_matches_retraining(logistic_regression):
  train, test, params, sensitivity = logistic_regression
  scores = np.asarray(sensitivity.score)
  order = np.argsort(scores)
  # 30 examples at evenly spaced ranks of the estimated score, and a top-10 group.
  probed = order[np.linspace(0, NUM_TRAIN - 1, 30).astype(int)]
  top = order[-10:]
  rng = np.random.default_rng(0)
  random_groups = [rng.choice(NUM_TRAIN, 10, replace=False) for _ in range(5)]
  removals = [[i] for i in probed] + [top] + random_groups

  with jax.enable_x64(True):
    inputs = jnp.asarray(train.inputs, jnp.float64)
    labels = jnp.asarray(train.labels)
    test_inputs = jnp.asarray(test.inputs, jnp.float64)
    trained = jnp.concatenate([params[0]["w"], params[0]["b"][None]]).astype(jnp.float64)
    weights = np.ones((len(removals), NUM_TRAIN))
    for row, removed in enumerate(removals):
      weights[row, removed] = 0.0
    true_change, group_change = retrain_and_measure(
      trained, jnp.asarray(weights), inputs, labels, jnp.asarray(probed), test_inputs
    )

  rho = spearmanr(scores[probed], np.asarray(true_change)).statistic
  print(f"Spearman(estimated, retrained L1 change of p_i) over 30 examples: {rho:.3f}")
  assert rho >= 0.7
  group_change = np.asarray(group_change)
  print(
    f"mean L1 change of test predictions: top-10 removed {group_change[0]:.4f}, "
    f"10 random removed {np.round(group_change[1:], 4)}"
  )
  assert group_change[0] > group_change[1:].max()


def _probabilities(theta, inputs):
  features = jnp.concatenate([inputs, jnp.ones((inputs.shape[0], 1))], axis=1)
  return jax.nn.softmax(features @ theta, axis=-1)


@jax.jit
def retrain_and_measure(trained, weights, inputs, labels, probed, test_inputs):
  """Retrains once per row of ``weights`` and measures how the predictions moved.

  The IVON mean is close to, not at, the minimizer: it is first refined on the
  full data, and every removal is warm-started from that refined model.

  Returns:
    The L1 change of p_i for each single removal (the first ``len(probed)``
    rows), and the mean L1 change of the test predictions for every later row.
  """
  full = newton_retrain(jnp.ones(inputs.shape[0]), trained, inputs, labels, 10)
  retrained = jax.vmap(newton_retrain, (0, None, None, None, None))(
    weights, full, inputs, labels, 3
  )
  num_probed = probed.shape[0]
  single = jax.vmap(lambda theta, x: _probabilities(theta, x[None])[0])(
    retrained[:num_probed], inputs[probed]
  )
  true_change = jnp.abs(single - _probabilities(full, inputs[probed])).sum(-1)
  full_test = _probabilities(full, test_inputs)
  group_change = jax.vmap(
    lambda theta: jnp.abs(_probabilities(theta, test_inputs) - full_test).sum(-1).mean()
  )(retrained[num_probed:])
  return true_change, group_change
