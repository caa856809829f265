r"""How much each training example matters: memory-perturbation estimates.

IVON's posterior $\mathcal{N}(m, \sigma^2)$ is the posterior of the
*summed* training loss $\sum_i \ell_i(\theta)$ plus the prior. Removing
example $i$ perturbs it; the memory-perturbation equation (MPE) of
Nickl et al. (2023) estimates the effect without retraining. At the mean
$m$, with outputs $f_i = f(x_i; m)$ and per-example Jacobian
$J_i = \partial f_i / \partial\theta$:

$$
\begin{aligned}
e_i &= \nabla_{f}\, \ell_i = \mathrm{softmax}(f_i) - \mathrm{onehot}(y_i)
  &&\text{(prediction error)} \\
v_{ik} &= \textstyle\sum_p J_{ikp}^2\, \sigma_p^2
  &&\text{(prediction variance, the diagonal of } J_i \operatorname{diag}(\sigma^2) J_i^\top) \\
f_i(m^{\setminus i}) - f_i(m) &\approx v_i \odot e_i
  &&\text{(change of the prediction when } i \text{ is removed)} \\
s_i &= \textstyle\sum_k \left|\lambda_{ik}\, e_{ik}\, v_{ik}\right|,
  \quad \lambda_{ik} = p_{ik}(1 - p_{ik})
  &&\text{(sensitivity score)}
\end{aligned}
$$

The equation implemented is the MPE's estimate of the change of the
predictions under a Gaussian posterior, $f_i(m^{\setminus i}) - f_i(m)
\approx v_i \odot e_i$ (the GLM form, applied to the network linearized at
$m$), with the diagonal $v_i$ and the score $s_i$ as the
official code computes them: ``lib/variances.py`` ``get_pred_vars_optim``,
``lib/utils.py`` ``softmax_hessian`` and
``examples/3_validation_sensitivities.py`` of
``team-approx-bayes/memory-perturbation``. (That code also clamps
$|e_{ik}|$ into $[10^{-10}, 1 - 10^{-10}]$, which changes
nothing measurable; it is omitted here.) $\lambda_{ik}\, e_{ik}\,
v_{ik}$ is the first-order change of the class-$k$ probability, so
$s_i$ estimates the L1 change of example $i$'s predicted
probabilities. Removing a group of examples sums their terms (cross terms
are ignored).

The prediction variance comes from the diagonal posterior and per-example
Jacobians ([`prediction_variance`][ivon_optax.sensitivity.prediction_variance], the paper's choice,
$K$ backward passes per example) or from posterior samples
([`sampled_prediction_variance`][ivon_optax.sensitivity.sampled_prediction_variance], $S$ forward
passes).

References:
  Nickl, Xu, Tailor, Möllenhoff, Khan, [The Memory-Perturbation Equation:
  Understanding Model's Sensitivity to Data](https://arxiv.org/abs/2310.19273),
  NeurIPS 2023.

  Shen et al., [Variational Learning is Effective for Large Deep
  Networks](https://arxiv.org/abs/2402.17641), ICML 2024 (sensitivity to training data with IVON's
  posterior).
"""

from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import real_array
from ivon_optax._src.checks import require
from ivon_optax._src.metrics import check_class_axis
from ivon_optax._src.metrics import check_eps
from ivon_optax._src.metrics import check_label_shape
from ivon_optax._src.metrics import check_labels
from ivon_optax._src.posterior import posterior_std
from ivon_optax._src.prediction_variance import ApplyFn
from ivon_optax._src.prediction_variance import check_batch
from ivon_optax._src.prediction_variance import check_classifier_labels
from ivon_optax._src.prediction_variance import num_examples
from ivon_optax._src.prediction_variance import prediction_variance


class Sensitivity(NamedTuple):
  """Memory-perturbation quantities of each example (``n`` examples, ``k`` outputs)."""

  outputs: chex.Array  # (n, k) float: f_i, the outputs (logits) at the mean.
  error: chex.Array  # (n, k) float: e_i, the prediction error.
  variance: chex.Array  # (n, k) float: v_i, the prediction variance.
  change: chex.Array  # (n, k) float: v_i * e_i ~ f_i(without i) - f_i.
  score: chex.Array  # (n,) float: s_i, the estimated L1 change of the prediction.


def _not_nan(name: str, values: chex.Array) -> chex.Array:
  values = jnp.asarray(values)
  return require(~jnp.isnan(values), values, f"`{name}` must not be NaN; found {{}}.")


def _variances(variance: chex.Array) -> chex.Array:
  variance = jnp.asarray(variance)
  return require(
    variance >= 0,
    variance,
    "`variance` must hold prediction variances >= 0 (no NaN); found {}. Pass "
    "prediction_variance's, or sampled_prediction_variance's.",
  )


def softmax_sensitivity(
  logits: chex.Array, labels: chex.Array, variance: chex.Array, *, eps: float = 1e-10
) -> Sensitivity:
  r"""Memory-perturbation estimates of a softmax classifier from its logits and variances.

  $$
  e_i = p_i - \mathrm{onehot}(y_i), \quad
  \Delta f_i = v_i \odot e_i, \quad
  s_i = \textstyle\sum_k |\lambda_{ik} e_{ik} v_{ik}|, \quad
  \lambda_{ik} = \mathrm{clip}(p_{ik}(1 - p_{ik}), \epsilon, 1 - \epsilon)
  $$

  with $p_i = \mathrm{softmax}(f_i)$. The clip follows the official
  code's ``softmax_hessian``.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> sensitivity = ivon_optax.sensitivity.softmax_sensitivity(
    ...     jnp.zeros((1, 2)), jnp.array([0]), jnp.ones((1, 2)))
    >>> sensitivity.change  # the true class loses, the other gains
    Array([[-0.5,  0.5]], dtype=float32)
    >>> sensitivity.score  # 2 * 0.25 * 0.5 * 1
    Array([0.25], dtype=float32)

  Args:
    logits: ``(n, k)`` logits $f_i$ at the mean.
    labels: ``(n,)`` integer labels in ``[0, k)``.
    variance: ``(n, k)`` prediction variances $v_i$.
    eps: clip of the softmax curvature $\lambda$.

  Returns:
    A [`Sensitivity`][ivon_optax.sensitivity.Sensitivity]. An invalid label, a NaN logit or a
    negative or NaN variance raises a ``ValueError``; under ``jit`` it makes its row NaN (all
    fields but ``outputs`` and ``variance``).
  """
  if jnp.ndim(logits) != 2:
    raise ValueError(f"`logits` must have shape (n, classes); got {jnp.shape(logits)}.")
  check_class_axis(logits, "logits")
  check_label_shape(labels, jnp.shape(logits)[0])
  if jnp.shape(variance) != jnp.shape(logits):
    raise ValueError(
      f"`variance` must have the shape of `logits` {jnp.shape(logits)}; got {jnp.shape(variance)}."
    )
  valid = (
    check_labels(labels, logits.shape[-1])
    & check_eps(eps, 0.5)
    & jnp.all(_not_nan("logits", logits) & _variances(variance), axis=-1)
  )
  probs = jax.nn.softmax(logits, axis=-1)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
  error = nan_unless(valid[:, None], probs - one_hot)
  curvature = jnp.clip(probs * (1.0 - probs), eps, 1.0 - eps)
  change = variance * error
  score = jnp.sum(jnp.abs(curvature * change), axis=-1)
  return Sensitivity(logits, error, variance, change, score)


def gaussian_sensitivity(
  outputs: chex.Array,
  targets: chex.Array,
  variance: chex.Array,
  *,
  noise_variance: chex.Numeric = 1.0,
) -> Sensitivity:
  r"""Memory-perturbation estimates of a regression model (Gaussian likelihood).

  For the loss $\ell_i = \|y_i - f_i\|^2 / (2 s^2)$, with
  $s^2$ = ``noise_variance``:

  $$
  e_i = (f_i - y_i) / s^2, \quad
  \Delta f_i = v_i \odot e_i, \quad
  s_i = \textstyle\sum_k |v_{ik} e_{ik}|
  $$

  i.e. prediction error times prediction variance; $s_i$ is the
  estimated absolute change of the prediction when $i$ is removed
  (the MPE for a Gaussian-likelihood GLM, Nickl et al. 2023). The posterior
  must be the one of that loss: train with this $s^2$ in the loss.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> sensitivity = ivon_optax.sensitivity.gaussian_sensitivity(
    ...     jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]), jnp.array([0.5, 0.5]))
    >>> sensitivity.change  # the fitted point moves back towards its target
    Array([0.5, 0. ], dtype=float32)

  Args:
    outputs: ``(n,)`` or ``(n, k)`` predictions $f_i$ at the mean.
    targets: targets of the same shape.
    variance: prediction variances $v_i$ of the same shape.
    noise_variance: the likelihood's variance $s^2$ (> 0): a scalar, or an
      array of the shape of ``outputs`` (heteroscedastic noise).

  Returns:
    A [`Sensitivity`][ivon_optax.sensitivity.Sensitivity] whose ``score`` has shape ``(n,)``. A
    ``noise_variance`` <= 0, a NaN output or target, or a negative or NaN variance raises a
    ``ValueError``; under ``jit`` it makes ``error``, ``change`` and ``score`` NaN.
  """
  if jnp.shape(targets) != jnp.shape(outputs) or jnp.shape(variance) != jnp.shape(outputs):
    raise ValueError(
      f"`outputs`, `targets` and `variance` need the same shape; got "
      f"{jnp.shape(outputs)}, {jnp.shape(targets)} and {jnp.shape(variance)}."
    )
  if jnp.ndim(outputs) not in (1, 2):
    raise ValueError(f"`outputs` must have shape (n,) or (n, k); got {jnp.shape(outputs)}.")
  noise_variance = real_array("noise_variance", noise_variance)
  if jnp.ndim(noise_variance) != 0 and jnp.shape(noise_variance) != jnp.shape(outputs):
    raise ValueError(
      f"`noise_variance` must be a scalar s^2, or one per output of the shape of `outputs` "
      f"{jnp.shape(outputs)}; got shape {jnp.shape(noise_variance)}. (Other shapes are "
      "ambiguous: a (n,) vector against (n, k) outputs would broadcast per output column.)"
    )
  noise_variance = jnp.asarray(noise_variance)
  valid = require(
    noise_variance > 0,
    noise_variance,
    "`noise_variance` must be > 0, the variance s^2 of the Gaussian likelihood the "
    "model was trained with (loss |y - f|^2 / (2 s^2)); got {}.",
  )
  valid = valid & _not_nan("outputs", outputs) & _not_nan("targets", targets) & _variances(variance)
  error = nan_unless(valid, (outputs - targets) / noise_variance)
  change = variance * error
  score = jnp.abs(change) if jnp.ndim(change) == 1 else jnp.sum(jnp.abs(change), axis=-1)
  return Sensitivity(outputs, error, variance, change, score)


def classification_sensitivity(
  apply_fn: ApplyFn,
  state: optax.OptState,
  params: optax.Params,
  inputs: Any,
  labels: chex.Array,
  *,
  chunk_size: int = 32,
  eps: float = 1e-10,
) -> Sensitivity:
  r"""Each example's memory-perturbation sensitivity under IVON's posterior (softmax form).

  Reads $\sigma$ from the IVON state ([`ivon_optax.posterior_std`][]),
  computes $f_i$ and $v_i$ with [`prediction_variance`][ivon_optax.sensitivity.prediction_variance]
  (jitted, chunked) and the rest with
  [`softmax_sensitivity`][ivon_optax.sensitivity.softmax_sensitivity].

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros((4, 3))}
    >>> state = ivon_optax.ivon(0.1, ess=100.0).init(params)
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> inputs = jax.random.normal(jax.random.key(0), (10, 4))
    >>> labels = jnp.arange(10) % 3
    >>> sensitivity = ivon_optax.sensitivity.classification_sensitivity(
    ...     apply_fn, state, params, inputs, labels)
    >>> sensitivity.score.shape, sensitivity.change.shape
    ((10,), (10, 3))

  Args:
    apply_fn: ``apply_fn(params, inputs) -> logits`` on a batch (static for
      ``jit``: pass the same function object each time).
    state: an optax state containing the [`ivon_optax.IVONState`][].
    params: the mean $m$ (the trained params).
    inputs: training inputs with a leading batch axis.
    labels: ``(n,)`` integer labels in ``[0, classes)``.
    chunk_size: examples per vectorized Jacobian chunk (memory bound).
    eps: clip of the softmax curvature.

  Returns:
    A [`Sensitivity`][ivon_optax.sensitivity.Sensitivity] for every example; rank examples by
    ``score``.
  """
  std = posterior_std(state, params)  # first: a state that does not fit raises here
  check_classifier_labels(apply_fn, params, inputs, labels)
  check_eps(eps, 0.5)
  logits, variance = prediction_variance(apply_fn, params, std, inputs, chunk_size=chunk_size)
  return softmax_sensitivity(logits, labels, variance, eps=eps)


def regression_sensitivity(
  apply_fn: ApplyFn,
  state: optax.OptState,
  params: optax.Params,
  inputs: Any,
  targets: chex.Array,
  *,
  noise_variance: chex.Numeric = 1.0,
  chunk_size: int = 32,
) -> Sensitivity:
  r"""Each example's sensitivity under IVON's posterior (regression form).

  [`prediction_variance`][ivon_optax.sensitivity.prediction_variance] with $\sigma$ from the IVON
  state, then [`gaussian_sensitivity`][ivon_optax.sensitivity.gaussian_sensitivity]: prediction
  error times prediction variance.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.zeros(2)}
    >>> state = ivon_optax.ivon(0.1, ess=50.0).init(params)
    >>> inputs = jax.random.normal(jax.random.key(0), (6, 2))
    >>> sensitivity = ivon_optax.sensitivity.regression_sensitivity(
    ...     lambda p, x: x @ p["w"], state, params, inputs, jnp.ones(6))
    >>> sensitivity.score.shape
    (6,)

  Args:
    apply_fn: ``apply_fn(params, inputs) -> predictions`` of shape ``(n,)``
      or ``(n, k)`` (static for ``jit``).
    state: an optax state containing the [`ivon_optax.IVONState`][].
    params: the mean $m$.
    inputs: training inputs with a leading batch axis.
    targets: the regression targets, shaped like the predictions.
    noise_variance: $s^2 > 0$ of the Gaussian likelihood the model was
      trained with (the loss $\|y - f\|^2 / (2 s^2)$).
    chunk_size: examples per vectorized Jacobian chunk.

  Returns:
    A [`Sensitivity`][ivon_optax.sensitivity.Sensitivity].
  """
  std = posterior_std(state, params)
  check_batch("targets", targets, num_examples(inputs))
  outputs, variance = prediction_variance(apply_fn, params, std, inputs, chunk_size=chunk_size)
  return gaussian_sensitivity(outputs, targets, variance, noise_variance=noise_variance)
