r"""Validation without held-out data: the leave-one-out estimate from IVON's posterior.

Removing training example $i$ moves its logits by about
$v_i \odot e_i$ (see `ivon_optax._src.sensitivity`). Evaluating each
example at its own perturbed logits estimates leave-one-out
cross-validation from one pass over the training data:

$$
\begin{aligned}
\mathrm{LOO}_{\mathrm{NLL}} &\approx \frac1N \sum_{i=1}^N
  -\log \max\!\big(\mathrm{softmax}(f_i + v_i \odot e_i)_{y_i},\ 10^{-10}\big) \\
\mathrm{LOO}_{\mathrm{err}} &\approx \frac1N \sum_{i=1}^N
  \big[\arg\max_k\, (f_i + v_i \odot e_i)_k \neq y_i\big]
\end{aligned}
$$

This is the MPE-based leave-one-out estimate that Nickl et al. (2023) use to
predict generalization during training, as the official code computes it
(``lib/utils.py`` ``get_estimated_nll`` and ``examples/1_loo_iterations.py``
of ``team-approx-bayes/memory-perturbation``: perturbed logits
``logits + residuals * vars``, probabilities clamped at $10^{-10}$).
The error rate is an extension: the papers report NLL.

**Pitfall: the scale of** $\sigma^2$. $v_i$ is linear in
$\sigma^2 = 1/(\lambda (h + \delta))$, so the estimate is only as
good as IVON's $h$. With the default ``beta2=0.99999``, $h$
moves from ``hess_init`` $h_0$ by about $10^{-5}$ of the way per
step: for the first tens of thousands of steps $\sigma^2$ is set by
$h_0$ and ``ess``, not by the data. Too small an $h_0$ (or
``ess`` below the training-set size) inflates $v_i$ and the estimate
overshoots the test NLL; too large an $h_0$ shrinks it to the training
NLL. The MPE authors picked $h_0 \in \{0.01, 0.05, 0.1, 0.5\}$ per
task. Use ``ess`` = the training-set size, and a ``beta2`` (e.g. 0.999)
that lets $h$ reach the data's curvature within the run, or check
the estimate against a held-out set once before relying on it. A third
remedy keeps the trained mean: run a few hundred IVON steps with
``learning_rate=0`` and ``beta2=0.99`` (full batches if affordable), which
refresh $h$ at the mean without moving it. [`ivon_optax.diagnostics`][]
shows whether $h$ has left ``hess_init``.

**Three estimators of the change.** [`loo_change`][ivon_optax.sensitivity.loo_change] offers the
paper's ``"diagonal"`` $v_i \odot e_i$, the full $K \times K$ block
$A_i e_i$, and the ``"leverage"`` correction
$(I - A_i \Lambda_i)^{-1} A_i e_i$, exact for ridge regression with the
exact covariance. They cost the same Jacobians.
[`leave_one_out`][ivon_optax.sensitivity.leave_one_out] documents their measured accuracy.

References:
  Nickl, Xu, Tailor, Möllenhoff, Khan, [The Memory-Perturbation Equation:
  Understanding Model's Sensitivity to Data](https://arxiv.org/abs/2310.19273),
  NeurIPS 2023.
"""

import warnings
from typing import Any
from typing import Literal
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import require
from ivon_optax._src.metrics import check_class_axis
from ivon_optax._src.metrics import check_eps
from ivon_optax._src.metrics import check_label_shape
from ivon_optax._src.metrics import check_labels
from ivon_optax._src.metrics import label_log_probs
from ivon_optax._src.metrics import predicts_label
from ivon_optax._src.posterior import posterior_std
from ivon_optax._src.prediction_variance import ApplyFn
from ivon_optax._src.prediction_variance import check_classifier_labels
from ivon_optax._src.prediction_variance import prediction_covariance
from ivon_optax._src.prediction_variance import prediction_variance

LOOMethod = Literal["diagonal", "block", "leverage"]
LOO_METHODS = ("diagonal", "block", "leverage")


class LOOEstimate(NamedTuple):
  """Leave-one-out estimates and, for comparison, the training metrics at the mean."""

  nll: chex.Array  # shape=(), float: estimated leave-one-out NLL; NaN if impossible.
  error: chex.Array  # shape=(), float: estimated leave-one-out error rate; NaN if impossible.
  train_nll: chex.Array  # shape=(), float: NLL of the training data at the mean.
  train_error: chex.Array  # shape=(), float: training error rate at the mean.
  num_below_train: chex.Array  # shape=(), int32: examples whose estimate is below their train NLL.


def _example_nlls(logits: chex.Array, labels: chex.Array, eps: chex.Numeric) -> chex.Array:
  r"""$-\log \max(\mathrm{softmax}(f_i)_{y_i}, \epsilon)$ of each example."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.maximum(label_log_probs(log_probs, labels), jnp.log(eps).astype(log_probs.dtype))


def _error_rate(logits: chex.Array, labels: chex.Array, dtype) -> chex.Array:
  return 1.0 - jnp.mean(predicts_label(logits, labels), dtype=dtype)


def below_train(loo_nlls: chex.Array, train_nlls: chex.Array) -> chex.Array:
  r"""Which examples' estimated left-out NLL is below their NLL at the mean.

  Exact leave-one-out never is: with $\theta$ the minimizer of the
  objective with example $i$ and $\theta_{\setminus i}$ that without it,
  $\ell_i(\theta_{\setminus i}) \ge \ell_i(\theta)$. The ``"diagonal"``
  and ``"block"`` changes $\Delta f_i = A_i e_i$ respect this for any
  positive semi-definite $A_i$ (the NLL is convex in the logits and
  $e_i^\top \Delta f_i \ge 0$); ``"leverage"`` breaks it where an
  eigenvalue of $A_i \Lambda_i$ reaches 1. A margin of
  $\sqrt{\epsilon_{\text{machine}}}$ keeps round-off from counting.
  """
  margin = jnp.sqrt(jnp.finfo(train_nlls.dtype).eps) * (1.0 + train_nlls)
  return loo_nlls < train_nlls - margin


def loo_from_change(
  logits: chex.Array, labels: chex.Array, change: chex.Array, *, eps: float = 1e-10
) -> LOOEstimate:
  r"""Leave-one-out NLL and error from logits $f_i$ and their estimated change.

  $$
  \mathrm{LOO}_{\mathrm{NLL}}
    = \frac1N \sum_i -\log \max(\mathrm{softmax}(f_i + \Delta f_i)_{y_i}, \epsilon)
  $$

  **Impossible estimates are flagged.** Leaving an example out never makes
  the model fit it better, so an estimated left-out NLL below the NLL at the
  mean is impossible, for one example or for their mean. The ``"leverage"``
  change gives such examples where an eigenvalue of $A_i \Lambda_i$
  reaches 1 (a diagonal posterior overstates $A_i$). ``num_below_train``
  counts them and, on concrete values, a ``UserWarning`` says so. Where the
  mean itself falls below ``train_nll``, the estimate is impossible and
  ``nll`` and ``error`` are NaN, so that, e.g., early stopping on it never
  picks it.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> logits = jnp.array([[2.0, 0.0]])
    >>> change = jnp.array([[-2.0, 1.0]])
    >>> estimate = ivon_optax.sensitivity.loo_from_change(logits, jnp.array([0]), change)
    >>> float(estimate.error), float(estimate.train_error)  # flips only when left out
    (1.0, 0.0)

  Args:
    logits: ``(n, k)`` logits at the mean, at least one example.
    labels: ``(n,)`` integer labels in ``[0, k)``.
    change: ``(n, k)`` estimated change $\Delta f_i = v_i \odot e_i$
      ([`ivon_optax.sensitivity.Sensitivity.change`][]).
    eps: the floor on the probabilities inside the log, in ``[0, 1)``.

  Returns:
    A [`LOOEstimate`][ivon_optax.sensitivity.LOOEstimate]. An invalid label or ``eps``, or a
    NaN logit or change, raises a ``ValueError``; under ``jit`` it makes every field but
    ``num_below_train`` NaN.
  """
  if jnp.ndim(logits) != 2 or jnp.shape(change) != jnp.shape(logits):
    raise ValueError(
      f"`logits` must have shape (n, classes) and `change` the same shape; got "
      f"{jnp.shape(logits)} and {jnp.shape(change)}."
    )
  check_class_axis(logits, "logits")
  check_label_shape(labels, jnp.shape(logits)[0])
  if jnp.shape(logits)[0] == 0:
    raise ValueError("`logits` and `labels` hold no example: leave-one-out needs at least one.")
  valid = jnp.all(check_labels(labels, jnp.shape(logits)[-1])) & check_eps(eps, 1.0)
  for name, values in (("logits", logits), ("change", change)):
    values = jnp.asarray(values)
    valid &= jnp.all(require(~jnp.isnan(values), values, f"`{name}` must not be NaN; found {{}}."))
  loo_nlls = _example_nlls(logits + change, labels, eps)
  train_nlls = _example_nlls(logits, labels, eps)
  num_below = jnp.sum(below_train(loo_nlls, train_nlls), dtype=jnp.int32)
  loo_nll, train_nll = jnp.mean(loo_nlls), jnp.mean(train_nlls)
  possible = valid & ~below_train(loo_nll, train_nll)
  estimate = LOOEstimate(
    nll=nan_unless(possible, loo_nll),
    error=nan_unless(possible, _error_rate(logits + change, labels, loo_nlls.dtype)),
    train_nll=nan_unless(valid, train_nll),
    train_error=nan_unless(valid, _error_rate(logits, labels, loo_nlls.dtype)),
    num_below_train=num_below,
  )
  _warn_if_below(estimate)
  return estimate


def _warn_if_below(estimate: LOOEstimate) -> None:
  num_below = estimate.num_below_train
  if isinstance(num_below, jax.core.Tracer) or int(num_below) == 0:
    return
  verdict = (
    "the mean too, so `nll` and `error` are NaN"
    if bool(jnp.isnan(estimate.nll))
    else "their estimates are wrong, and so may the mean be"
  )
  warnings.warn(
    f"The leave-one-out estimate is below the training NLL for {int(num_below)} "
    f"examples, which exact leave-one-out never is: {verdict}. With method='leverage' and "
    "IVON's diagonal posterior, an eigenvalue of A_i Lambda_i reached 1; use "
    "method='diagonal' (the default), or 'leverage' with a full covariance in loo_change.",
    UserWarning,
    stacklevel=3,
  )


def _check_method(method: Any) -> None:
  if method not in LOO_METHODS:
    raise ValueError(
      f"`method` must be one of {LOO_METHODS}; got {method!r}. Use 'diagonal' with "
      "IVON's diagonal posterior, 'leverage' with a full covariance."
    )


def loo_change(
  covariance: chex.Array,
  error: chex.Array,
  curvature: chex.Array,
  *,
  method: LOOMethod = "leverage",
) -> chex.Array:
  r"""Estimated change of each example's outputs when it is left out, $\Delta f_i$.

  From the prediction covariance $A_i = J_i \Sigma J_i^\top$, the
  prediction error $e_i = \nabla_f \ell_i$ and the loss curvature
  $\Lambda_i = \nabla_f^2 \ell_i$ at the mean:

  $$
  \begin{aligned}
  \texttt{"diagonal"}:&\quad \Delta f_i = \operatorname{diag}(A_i) \odot e_i \\
  \texttt{"block"}:&\quad \Delta f_i = A_i\, e_i \\
  \texttt{"leverage"}:&\quad \Delta f_i = (I - A_i \Lambda_i)^{-1} A_i\, e_i
  \end{aligned}
  $$

  ``"block"`` is the Newton step of the training objective without example
  $i$, taken with the posterior covariance $\Sigma$ of the
  objective *with* it; ``"leverage"`` corrects $\Sigma$ for the removal
  (Woodbury: $J_i (\Sigma^{-1} - J_i^\top \Lambda_i J_i)^{-1} J_i^\top
  = (I - A_i \Lambda_i)^{-1} A_i$). For a Gaussian likelihood and the exact
  posterior covariance, ``"leverage"`` is exact leave-one-out
  ($r_i / (1 - H_{ii})$ of ridge regression). ``"diagonal"`` is the
  memory-perturbation paper's estimate (Nickl et al., 2023).

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> covariance = jnp.array([[[0.5]]])  # ridge: H_ii = A_i / s^2 = 0.5 with s^2 = 1
    >>> error, curvature = jnp.array([[1.0]]), jnp.array([[[1.0]]])  # f_i - y_i = 1
    >>> ivon_optax.sensitivity.loo_change(covariance, error, curvature)  # 0.5 / (1 - 0.5)
    Array([[1.]], dtype=float32)

  Args:
    covariance: ``(n, k, k)`` prediction covariances $A_i$
      ([`ivon_optax.sensitivity.prediction_covariance`][], or
      $J_i \Sigma J_i^\top$ for any posterior covariance $\Sigma$).
    error: ``(n, k)`` prediction errors $e_i$.
    curvature: ``(n, k, k)`` loss Hessians $\Lambda_i$ in the outputs
      (only ``"leverage"`` reads them).
    method: ``"diagonal"``, ``"block"`` or ``"leverage"``.

  Returns:
    ``(n, k)`` changes $\Delta f_i$. A block with a negative or NaN variance
    on its diagonal raises a ``ValueError``; under ``jit`` its row is NaN.
  """
  _check_method(method)
  if jnp.ndim(error) != 2 or jnp.shape(covariance) != (*jnp.shape(error), jnp.shape(error)[-1]):
    raise ValueError(
      f"`error` must have shape (n, k) and `covariance` (n, k, k); got {jnp.shape(error)} "
      f"and {jnp.shape(covariance)}."
    )
  if jnp.shape(curvature) != jnp.shape(covariance):
    raise ValueError(
      f"`curvature` must have the shape of `covariance` {jnp.shape(covariance)}; got "
      f"{jnp.shape(curvature)}."
    )
  variances = jnp.diagonal(covariance, axis1=-2, axis2=-1)
  valid = require(
    variances >= 0,
    variances,
    "`covariance` must hold positive semi-definite blocks A_i = J_i Sigma J_i^T; found "
    "diagonal entries (variances) {}, below 0 or NaN.",
  )
  error = nan_unless(jnp.all(valid, axis=-1, keepdims=True), error)
  if method == "diagonal":
    return variances * error
  step = jnp.einsum("nkl,nl->nk", covariance, error)
  if method == "block":
    return step
  identity = jnp.eye(jnp.shape(error)[-1], dtype=step.dtype)
  removal = identity - jnp.einsum("nkl,nlm->nkm", covariance, curvature)
  return jnp.linalg.solve(removal, step[..., None])[..., 0]


def softmax_error_and_curvature(logits: chex.Array, labels: chex.Array) -> tuple:
  r"""The softmax cross-entropy's gradient and Hessian in the logits.

  $$
  e_i = p_i - \mathrm{onehot}(y_i), \qquad
  \Lambda_i = \operatorname{diag}(p_i) - p_i p_i^\top,
  \qquad p_i = \mathrm{softmax}(f_i)
  $$

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> error, curvature = ivon_optax.sensitivity.softmax_error_and_curvature(
    ...     jnp.zeros((1, 2)), jnp.array([0]))
    >>> error, curvature[0]
    (Array([[-0.5,  0.5]], dtype=float32), Array([[ 0.25, -0.25],
           [-0.25,  0.25]], dtype=float32))

  Args:
    logits: ``(n, k)`` logits $f_i$.
    labels: ``(n,)`` integer labels in ``[0, k)``.

  Returns:
    ``(error, curvature)`` of shapes ``(n, k)`` and ``(n, k, k)``, the inputs
    of [`loo_change`][ivon_optax.sensitivity.loo_change]. Under ``jit`` the
    rows of an invalid label are NaN.
  """
  if jnp.ndim(logits) != 2:
    raise ValueError(f"`logits` must have shape (n, classes); got {jnp.shape(logits)}.")
  check_class_axis(logits, "logits")
  check_label_shape(labels, jnp.shape(logits)[0])
  valid = check_labels(labels, jnp.shape(logits)[-1])[:, None]
  probs = jax.nn.softmax(logits, axis=-1)
  curvature = jax.vmap(jnp.diag)(probs) - probs[:, :, None] * probs[:, None, :]
  return nan_unless(valid, _softmax_error(probs, labels)), nan_unless(valid[..., None], curvature)


def _softmax_error(probs: chex.Array, labels: chex.Array) -> chex.Array:
  return probs - jax.nn.one_hot(labels, jnp.shape(probs)[-1], dtype=probs.dtype)


def leave_one_out(
  apply_fn: ApplyFn,
  state: optax.OptState,
  params: optax.Params,
  inputs: Any,
  labels: chex.Array,
  *,
  method: LOOMethod = "diagonal",
  chunk_size: int = 32,
  eps: float = 1e-10,
) -> LOOEstimate:
  r"""Leave-one-out NLL and error of a classifier, from its IVON posterior and training data.

  One jitted pass over the training data computes the logits $f_i$,
  their covariance $A_i = J_i \operatorname{diag}(\sigma^2) J_i^\top$
  under IVON's diagonal posterior, the change $\Delta f_i$ of
  [`loo_change`][ivon_optax.sensitivity.loo_change] for ``method``, and then
  [`loo_from_change`][ivon_optax.sensitivity.loo_from_change]. Call it after every epoch to track
  generalization or to stop early; the pass compiles once for a given ``apply_fn`` object and input
  shapes.

  *Accuracy* against exact leave-one-out (300 refits) of convex logistic
  regression on 300 digits, exact LOO NLL 0.2145 (``python
  benchmarks/loo_accuracy.py``; ratios estimate / truth):

  ============================  ==========  =======  ==========
  posterior                     diagonal    block    leverage
  ============================  ==========  =======  ==========
  exact diagonal precision      1.70x       1.70x    2.66x
  exact full covariance         1.97x       0.63x    1.01x
  IVON, ``beta2=0.999``         1.60x       1.60x    1.22x
  IVON + refreshed $h$    0.92x       0.92x    3.12x
  ============================  ==========  =======  ==========

  (IVON rows: mean of 5 seeds; the seed spread is large, see the docs.)
  With IVON's diagonal posterior, ``"diagonal"`` (the default, and the
  memory-perturbation paper's estimate) is the most accurate and the most
  stable; ``"block"`` equals it for a model linear in its params and differs
  little otherwise. ``"leverage"`` needs the full covariance: a diagonal
  $\sigma^2$ overstates $A_i$ for correlated inputs, the correction
  $(I - A_i \Lambda_i)^{-1}$ then amplifies the error and, where an
  eigenvalue of $A_i \Lambda_i$ reaches 1, flips its sign: such examples
  are counted in ``num_below_train``, with a warning, and an estimate whose
  mean falls below the training NLL is NaN
  ([`loo_from_change`][ivon_optax.sensitivity.loo_from_change]). Use it with
  [`loo_change`][ivon_optax.sensitivity.loo_change] and $A_i = J_i \Sigma J_i^\top$ from a full
  covariance, where it is within 1% of exact leave-one-out. On a digits MLP
  that fits its training set (train NLL 0.003) every method stays far below
  10-fold cross-validation (0.04x to 0.3x): the estimate is first order in
  $e_i$, which vanishes once the data are memorized.

  All three are only as good as IVON's $h$ ($\sigma^2 = 1/(\lambda
  (h + \delta))$): while $h$ is still near ``hess_init``
  ([`ivon_optax.diagnostics`][], ``hess_at_init``), the estimate is set by
  ``hess_init``, not by the data.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros((4, 3))}
    >>> state = ivon_optax.ivon(0.1, ess=30.0).init(params)
    >>> inputs = jax.random.normal(jax.random.key(0), (30, 4))
    >>> labels = jnp.arange(30) % 3
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> estimate = ivon_optax.sensitivity.leave_one_out(apply_fn, state, params, inputs, labels)
    >>> bool(estimate.nll > estimate.train_nll)  # leaving out never helps here
    True

    During training, e.g. to stop early on the estimate (measured against a
    held-out set, it stopped late in every overfitting run of the docs'
    selection study, so prefer a held-out set where there is one):

    ```python
    best = float("inf")
    for epoch in range(num_epochs):
      params, state = train_one_epoch(params, state)
      estimate = ivon_optax.sensitivity.leave_one_out(apply_fn, state, params, x_train, y_train)
      if estimate.nll < best:
        best, best_params = estimate.nll, params
    ```

  Args:
    apply_fn: ``apply_fn(params, inputs) -> logits`` on a batch (a static
      argument: pass the same function object each epoch).
    state: an optax state containing the [`ivon_optax.IVONState`][].
    params: the mean $m$.
    inputs: training inputs with a leading batch axis.
    labels: ``(n,)`` integer labels in ``[0, classes)``.
    method: ``"diagonal"`` (default), ``"block"`` or ``"leverage"``
      ([`loo_change`][ivon_optax.sensitivity.loo_change]). The last two hold ``(n, classes,
      classes)`` covariance blocks in memory.
    chunk_size: examples per vectorized Jacobian chunk (memory bound).
    eps: the floor on the probabilities inside the log.

  Returns:
    A [`LOOEstimate`][ivon_optax.sensitivity.LOOEstimate] of scalars; ``num_below_train``
    counts impossible per-example estimates.
  """
  _check_method(method)
  std = posterior_std(state, params)  # first: a state that does not fit raises here
  if check_classifier_labels(apply_fn, params, inputs, labels) == 0:
    raise ValueError("`inputs` and `labels` hold no example: leave-one-out needs at least one.")
  check_eps(eps, 1.0)
  if method == "diagonal":
    # Only the diagonal of A_i is needed: no (n, k, k) blocks, as many classes
    # would make them large.
    logits, variance = prediction_variance(apply_fn, params, std, inputs, chunk_size=chunk_size)
    error = _softmax_error(jax.nn.softmax(logits, axis=-1), labels)
    return loo_from_change(logits, labels, variance * error, eps=eps)
  logits, covariance = prediction_covariance(apply_fn, params, std, inputs, chunk_size=chunk_size)
  error, curvature = softmax_error_and_curvature(logits, labels)
  change = loo_change(covariance, error, curvature, method=method)
  return loo_from_change(logits, labels, change, eps=eps)
