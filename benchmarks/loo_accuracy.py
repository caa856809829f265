r"""Leave-one-out estimates against exact leave-one-out and K-fold cross-validation.

Two problems, every estimator of :func:`ivon_optax.sensitivity.leave_one_out`:

1. **Convex logistic regression** on digits (scikit-learn ``load_digits``,
   pixels / 16, 10 classes, 650 params, weight decay :math:`\delta`, ``ess`` =
   N). The truth is exact leave-one-out: the MAP refit without each training
   example (L-BFGS in float64, warm-started at the MAP). The estimators run

   * at the MAP with the exact diagonal precision :math:`\mathrm{diag}(H) +
     N\delta` (what IVON's :math:`h` estimates, :math:`h = \mathrm{diag}(H)/N`),
   * at the MAP with the exact full covariance :math:`(H + N\delta I)^{-1}`
     (:func:`ivon_optax.sensitivity.loo_change` on :math:`J_i \Sigma J_i^\top`),
   * after IVON runs with several ``hess_init``/``beta2`` settings (``--seeds``
     seeds, mean ± std), and after a final phase that refreshes :math:`h` at
     the trained mean with ``beta2=0.99`` (the mean held fixed).

   Each IVON row also reports the median of :math:`h / h_\text{true}` and
   ``ivon_optax.diagnostics``' ``hess_at_init``.
2. **A tanh MLP** on digits, trained with IVON: the estimates against 10-fold
   cross-validation of the same recipe (and the test NLL).

Run from the repository root (about 2 minutes on 2 CPU cores)::

  JAX_PLATFORMS=cpu python benchmarks/loo_accuracy.py
  JAX_PLATFORMS=cpu python benchmarks/loo_accuracy.py --json loo_accuracy.json
"""

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ivon_optax

METHODS = ("diagonal", "block", "leverage")
IVON_SETTINGS = (  # (hess_init, beta2, refresh h at the end)
  (0.1, 0.99999, False),
  (1e-3, 0.99999, False),
  (0.1, 0.999, False),
  (0.1, 0.99999, True),
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-train", type=int, default=300)
  parser.add_argument("--weight-decay", type=float, default=1e-3)
  parser.add_argument("--steps", type=int, default=6000, help="IVON steps (logistic regression)")
  parser.add_argument("--refresh-steps", type=int, default=1000)
  parser.add_argument("--learning-rate", type=float, default=0.2)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--mlp-steps", type=int, default=3000)
  parser.add_argument("--mlp-seeds", type=int, default=3)
  parser.add_argument("--folds", type=int, default=10)
  parser.add_argument("--skip-mlp", action="store_true")
  parser.add_argument("--json", default=None, help="write the results here")
  return parser.parse_args(argv)


# --- Data and models ---------------------------------------------------------------


class Split(NamedTuple):
  inputs: np.ndarray  # (n, 64) float64 in [0, 1]
  labels: np.ndarray  # (n,) int32


def load_digits(num_train: int, seed: int = 0) -> tuple[Split, Split]:
  """A random training split of ``num_train`` digits and the rest as the test split."""
  from sklearn.datasets import load_digits as sklearn_digits

  digits = sklearn_digits()
  order = np.random.default_rng(seed).permutation(len(digits.target))
  inputs, labels = digits.data[order] / 16.0, digits.target[order].astype(np.int32)
  return (
    Split(inputs[:num_train], labels[:num_train]),
    Split(inputs[num_train:], labels[num_train:]),
  )


def linear_apply(params, inputs):
  return inputs @ params["w"] + params["b"]


def init_mlp(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a), "b": jnp.zeros(b, jnp.float32)}
    for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp_apply(params, inputs):
  hidden = inputs
  for layer in params[:-1]:
    hidden = jnp.tanh(hidden @ layer["w"] + layer["b"])
  return hidden @ params[-1]["w"] + params[-1]["b"]


def example_nll(apply_fn, params, inputs, labels):
  """Per-example cross-entropy."""
  logits = apply_fn(params, inputs)
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


# --- Exact leave-one-out of the convex problem --------------------------------------


def augment(inputs):
  """Inputs with a constant 1 appended, so that the bias is the last row of the weights."""
  return jnp.concatenate([inputs, jnp.ones((inputs.shape[0], 1), inputs.dtype)], axis=1)


def as_params(weights):
  """``{"w", "b"}`` params of :func:`linear_apply` from ``(d + 1, k)`` augmented weights."""
  return {"w": weights[:-1], "b": weights[-1]}


def data_hessian(weights, inputs, labels, example_weights):
  r"""Data Hessian :math:`\sum_j w_j \tilde x_j \tilde x_j^\top \otimes \Lambda_j`, flattened."""
  probs = jax.nn.softmax(inputs @ weights, axis=-1)
  # Lambda_j = B_j B_j^T with B_j = (I - p_j 1^T) diag(sqrt(p_j)): the Hessian is one Gram matrix.
  root = jnp.sqrt(probs)
  factor = jax.vmap(jnp.diag)(root) - probs[:, :, None] * root[:, None, :]
  rows = jnp.einsum("j,ja,jkm->jmak", jnp.sqrt(example_weights), inputs, factor)
  rows = rows.reshape(-1, weights.size)
  return rows.T @ rows


@functools.partial(jax.jit, static_argnames="num_steps")
def newton_fit(weights, inputs, labels, example_weights, weight_decay, num_steps=8):
  r"""Minimizes :math:`\sum_j w_j \ell_j + \tfrac{N\delta}{2}\|W\|^2` by Newton's method."""
  prior = labels.shape[0] * weight_decay

  def objective(w):
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(inputs @ w, labels)
    return jnp.sum(example_weights * nll) + 0.5 * prior * jnp.sum(w**2)

  def step(w, _):
    precision = data_hessian(w, inputs, labels, example_weights) + prior * jnp.eye(w.size)
    direction = jnp.linalg.solve(precision, jnp.ravel(jax.grad(objective)(w)))
    return w - direction.reshape(w.shape), None

  return jax.lax.scan(step, weights, None, length=num_steps)[0]


def refit_without_each(weights, inputs, labels, weight_decay, hessian, num_steps=100):
  r"""The NLL of each example at the MAP refit without it, and the largest final gradient norm.

  Each refit iterates :math:`W \leftarrow W - (P - J_i^\top \Lambda_i J_i)^{-1} g_{\setminus i}(W)`
  from the MAP, with the precision :math:`P` and curvature :math:`\Lambda_i` of
  the MAP (Woodbury: a :math:`K \times K` solve per example). The fixed point
  is the exact minimizer of the objective without example :math:`i`; the
  returned gradient norm shows it is reached.
  """
  num, dim = inputs.shape
  classes = weights.shape[1]
  prior = num * weight_decay
  sigma = jnp.linalg.inv(hessian + prior * jnp.eye(hessian.shape[0]))
  sigma_blocks = sigma.reshape(dim, classes, dim, classes)
  one_hot = jax.nn.one_hot(labels, classes, dtype=weights.dtype)
  _, curvature = ivon_optax.sensitivity.softmax_error_and_curvature(inputs @ weights, labels)

  def refit(i):
    keep = jnp.ones(num).at[i].set(0.0)
    x = inputs[i]
    sigma_jacobian = jnp.einsum("akbl,b->akl", sigma_blocks, x)  # Sigma J_i^T, (d, k, k)
    block = jnp.einsum("a,akl->kl", x, sigma_jacobian)  # A_i
    removal = jnp.linalg.solve(jnp.eye(classes) - curvature[i] @ block, curvature[i])

    def gradient(w):
      errors = keep[:, None] * (jax.nn.softmax(inputs @ w, axis=-1) - one_hot)
      return inputs.T @ errors + prior * w

    def precondition(g):
      sigma_g = (sigma @ jnp.ravel(g)).reshape(dim, classes)
      return sigma_g + jnp.einsum("akl,l->ak", sigma_jacobian, removal @ (x @ sigma_g))

    w = jax.lax.fori_loop(0, num_steps, lambda _, w: w - precondition(gradient(w)), weights)
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(x @ w, labels[i])
    return nll, jnp.linalg.norm(gradient(w))

  return jax.jit(lambda: jax.lax.map(refit, jnp.arange(num), batch_size=25))()


def fit_map(train: Split, weight_decay: float):
  """The MAP, the exact leave-one-out NLL of every example (refits), and the data Hessian."""
  num = len(train.labels)
  inputs, labels = augment(jnp.asarray(train.inputs)), jnp.asarray(train.labels)
  weights = newton_fit(
    jnp.zeros((inputs.shape[1], 10)), inputs, labels, jnp.ones(num), weight_decay, num_steps=30
  )
  hessian = data_hessian(weights, inputs, labels, jnp.ones(num))
  loo_nll, gradient_norm = map(
    np.array, refit_without_each(weights, inputs, labels, weight_decay, hessian)
  )
  # Where the fixed preconditioner is too far from the refit's curvature to
  # converge (an example whose removal moves the fit a lot), refit by Newton.
  for i in np.flatnonzero(gradient_norm > 1e-8):
    keep = jnp.ones(num).at[i].set(0.0)
    refit = newton_fit(weights, inputs, labels, keep, weight_decay, num_steps=12)
    loo_nll[i] = optax.losses.softmax_cross_entropy_with_integer_labels(
      inputs[i] @ refit, labels[i]
    )
    errors = keep[:, None] * (jax.nn.softmax(inputs @ refit, -1) - jax.nn.one_hot(labels, 10))
    gradient_norm[i] = jnp.linalg.norm(inputs.T @ errors + num * weight_decay * refit)
  return weights, loo_nll, float(np.max(gradient_norm)), hessian


def state_with_hess(params, hess, *, ess, weight_decay):
  """An IVON state whose h is ``hess`` (a pytree like ``params``)."""
  state = ivon_optax.scale_by_ivon(ess, hess_init=1.0, weight_decay=weight_decay).init(params)
  return state._replace(hess=hess)


def full_covariance_estimates(weights, inputs, labels, covariance):
  r"""LOO NLL of each method with :math:`A_i = J_i \Sigma J_i^\top` for a full :math:`\Sigma`."""
  k = weights.shape[1]
  blocks_sigma = covariance.reshape(weights.shape[0], k, weights.shape[0], k)
  augmented = augment(inputs)
  blocks = jnp.einsum("na,akbl,nb->nkl", augmented, blocks_sigma, augmented)
  logits = augmented @ weights
  error, curvature = ivon_optax.sensitivity.softmax_error_and_curvature(logits, labels)
  return {
    method: float(
      ivon_optax.sensitivity.loo_from_change(
        logits,
        labels,
        ivon_optax.sensitivity.loo_change(blocks, error, curvature, method=method),
      ).nll
    )
    for method in METHODS
  }


def all_methods(apply_fn, state, params, inputs, labels):
  return {
    method: float(
      ivon_optax.sensitivity.leave_one_out(
        apply_fn, state, params, inputs, labels, method=method
      ).nll
    )
    for method in METHODS
  }


# --- IVON training ---------------------------------------------------------------------


def ivon_train(key, tx, apply_fn, params, state, inputs, labels, *, num_steps, batch_size):
  """``num_steps`` IVON steps on random minibatches of the mean NLL."""
  num = labels.shape[0]

  def loss(p, batch):
    return jnp.mean(example_nll(apply_fn, p, inputs[batch], labels[batch]))

  def step(carry, step_key):
    params, state = carry
    batch_key, sample_key = jax.random.split(step_key)
    batch = jax.random.choice(batch_key, num, (batch_size,), replace=False)
    sampled, noise = ivon_optax.sample_params(sample_key, state, params)
    updates, state = tx.update(jax.grad(loss)(sampled, batch), state, params, noise=noise)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(step, (params, state), jax.random.split(key, num_steps))
  return params, state


def refresh_hess(key, state, apply_fn, params, inputs, labels, *, num_steps, batch_size, **ivon):
  r"""IVON steps with ``beta2=0.99`` that update :math:`h` only: the mean stays at ``params``."""
  tx = ivon_optax.ivon(0.0, **ivon, beta2=0.99)
  _, state = ivon_train(
    key, tx, apply_fn, params, state, inputs, labels, num_steps=num_steps, batch_size=batch_size
  )
  return state


def hess_ratio_median(state, hess_true):
  """Median of h / h_true over the params whose true curvature is not 0."""
  hess = np.concatenate(
    [np.ravel(h) for h in jax.tree.leaves(ivon_optax.find_ivon_state(state).hess)]
  )
  true = np.concatenate([np.ravel(h) for h in jax.tree.leaves(hess_true)])
  informative = true > 1e-8
  return float(np.median(hess[informative] / true[informative]))


def run_ivon_setting(args, train, hess_true, hess_init, beta2, refresh):
  """IVON on the logistic regression, ``--seeds`` seeds vmapped; per-seed estimates."""
  num = len(train.labels)
  inputs = jnp.asarray(train.inputs, jnp.float32)
  labels = jnp.asarray(train.labels)
  params0 = {"w": jnp.zeros((64, 10), jnp.float32), "b": jnp.zeros(10, jnp.float32)}
  settings = {"ess": float(num), "hess_init": hess_init, "weight_decay": args.weight_decay}
  tx = ivon_optax.ivon(args.learning_rate, **settings, beta2=beta2)

  @jax.jit
  @jax.vmap
  def train_seed(key):
    params, state = ivon_train(
      key,
      tx,
      linear_apply,
      params0,
      tx.init(params0),
      inputs,
      labels,
      num_steps=args.steps,
      batch_size=args.batch_size,
    )
    if refresh:
      state = refresh_hess(
        jax.random.fold_in(key, 1),
        state,
        linear_apply,
        params,
        inputs,
        labels,
        num_steps=args.refresh_steps,
        batch_size=num,
        **settings,
      )
    return params, state

  all_params, all_states = train_seed(jax.random.split(jax.random.key(0), args.seeds))
  rows = []
  for seed in range(args.seeds):
    params, state = jax.tree.map(lambda x, s=seed: x[s], (all_params, all_states))
    row = all_methods(linear_apply, state, params, inputs, labels)
    row["hess_ratio_median"] = hess_ratio_median(state, hess_true)
    row["hess_at_init"] = float(ivon_optax.diagnostics(state, params)["hess_at_init"])
    rows.append(row)
  return rows


def summarize(rows):
  return {
    name: (float(np.mean([r[name] for r in rows])), float(np.std([r[name] for r in rows])))
    for name in rows[0]
  }


def logistic_regression(args):
  train, test = load_digits(args.num_train)
  start = time.perf_counter()
  weights, loo_nll, gradient_norm, hessian = fit_map(train, args.weight_decay)
  params = as_params(weights)
  num = len(train.labels)
  inputs, labels = jnp.asarray(train.inputs), jnp.asarray(train.labels)
  truth = float(np.mean(loo_nll))
  test_nll = float(jnp.mean(example_nll(linear_apply, params, test.inputs, test.labels)))
  train_nll = float(jnp.mean(example_nll(linear_apply, params, inputs, labels)))
  print(
    f"\n## Logistic regression, {num} digits, weight decay {args.weight_decay}: "
    f"exact LOO NLL {truth:.4f} ({num} refits, {time.perf_counter() - start:.0f} s, "
    f"largest final gradient norm {gradient_norm:.0e}), "
    f"test NLL {test_nll:.4f} ({len(test.labels)} digits), train NLL {train_nll:.4f}\n"
  )
  hess_true = np.asarray(jnp.diag(hessian) / num).reshape(weights.shape)
  rows = {}
  exact_diag = state_with_hess(
    params, as_params(jnp.asarray(hess_true)), ess=float(num), weight_decay=args.weight_decay
  )
  rows["MAP, exact diagonal precision"] = all_methods(
    linear_apply, exact_diag, params, inputs, labels
  )
  covariance = jnp.linalg.inv(hessian + num * args.weight_decay * jnp.eye(hessian.shape[0]))
  rows["MAP, exact full covariance"] = full_covariance_estimates(
    weights, inputs, labels, covariance
  )
  print("| posterior | " + " | ".join(METHODS) + " | median h / h_true | hess_at_init |")
  print("|---|" + "---|" * (len(METHODS) + 2))
  for name, row in rows.items():
    cells = " | ".join(f"{row[m]:.3f} ({row[m] / truth:.2f}x)" for m in METHODS)
    print(f"| {name} | {cells} | 1 | |")
  # Pixels that are 0 in every training digit have h_true = 0: leave them out of the ratio.
  hess_true_params = as_params(jnp.asarray(hess_true))
  ivon_rows = {}
  for hess_init, beta2, refresh in IVON_SETTINGS:
    name = f"IVON {args.steps} steps, hess_init {hess_init:g}, beta2 {beta2:g}"
    if refresh:
      name += f", then {args.refresh_steps} full-batch steps refreshing h (beta2 0.99)"
    per_seed = run_ivon_setting(args, train, hess_true_params, hess_init, beta2, refresh)
    ivon_rows[name] = summary = summarize(per_seed)
    cells = " | ".join(
      f"{summary[m][0]:.3f} ± {summary[m][1]:.3f} ({summary[m][0] / truth:.2f}x)" for m in METHODS
    )
    print(
      f"| {name} | {cells} | {summary['hess_ratio_median'][0]:.2f} | "
      f"{summary['hess_at_init'][0]:.2f} |"
    )
  return {
    "exact_loo_nll": truth,
    "test_nll": test_nll,
    "train_nll": train_nll,
    "exact_posteriors": rows,
    "ivon": ivon_rows,
  }


# --- MLP against K-fold cross-validation ----------------------------------------------


def mlp(args):
  train, test = load_digits(args.num_train)
  num, folds = len(train.labels), args.folds
  fold_size = num // folds
  inputs = jnp.asarray(train.inputs, jnp.float32)
  labels = jnp.asarray(train.labels)
  settings = {"hess_init": 0.1, "beta2": 0.999, "weight_decay": args.weight_decay}
  schedule = optax.cosine_decay_schedule(0.3, args.mlp_steps, alpha=0.05)

  def train_on(key, train_inputs, train_labels):
    tx = ivon_optax.ivon(schedule, ess=float(train_labels.shape[0]), **settings)
    params = init_mlp(jax.random.fold_in(key, 0), [64, 32, 10])
    return ivon_train(
      key,
      tx,
      mlp_apply,
      params,
      tx.init(params),
      train_inputs,
      train_labels,
      num_steps=args.mlp_steps,
      batch_size=args.batch_size,
    )

  @jax.jit
  def cross_validation(key):
    def fold(index):
      keep = jnp.roll(jnp.arange(num), -index * fold_size)
      held, kept = keep[:fold_size], keep[fold_size:]
      params, _ = train_on(key, inputs[kept], labels[kept])
      return jnp.mean(example_nll(mlp_apply, params, inputs[held], labels[held]))

    return jnp.mean(jax.vmap(fold)(jnp.arange(folds)))

  print(
    f"\n## Tanh MLP 64-32-10 on {num} digits, IVON {args.mlp_steps} steps (cosine lr 0.3, "
    f"hess_init 0.1, beta2 0.999): LOO estimates against {folds}-fold CV\n"
  )
  print("| seed | " + " | ".join(METHODS) + " | CV NLL | test NLL | train NLL | hess_at_init |")
  print("|---|" + "---|" * (len(METHODS) + 4))
  rows = []
  for seed in range(args.mlp_seeds):
    key = jax.random.key(seed)
    params, state = jax.jit(train_on)(key, inputs, labels)
    row = all_methods(mlp_apply, state, params, inputs, labels)
    row["cv_nll"] = float(cross_validation(key))
    row["test_nll"] = float(jnp.mean(example_nll(mlp_apply, params, test.inputs, test.labels)))
    row["train_nll"] = float(jnp.mean(example_nll(mlp_apply, params, inputs, labels)))
    row["hess_at_init"] = float(ivon_optax.diagnostics(state, params)["hess_at_init"])
    rows.append(row)
    cells = " | ".join(f"{row[m]:.3f} ({row[m] / row['cv_nll']:.2f}x)" for m in METHODS)
    print(
      f"| {seed} | {cells} | {row['cv_nll']:.3f} | {row['test_nll']:.3f} | "
      f"{row['train_nll']:.3f} | {row['hess_at_init']:.2f} |"
    )
  return rows


def main(argv=None):
  args = parse_args(argv)
  # Exact leave-one-out and the exact posteriors in float64; IVON runs in float32.
  jax.config.update("jax_enable_x64", True)
  results = {"args": vars(args), "logistic_regression": logistic_regression(args)}
  if not args.skip_mlp:
    results["mlp"] = mlp(args)
  if args.json:
    with open(args.json, "w") as file:
      json.dump(results, file, indent=1)
  return results


if __name__ == "__main__":
  main()
