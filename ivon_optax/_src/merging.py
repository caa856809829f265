r"""Merging models fine-tuned from a common base, weighted by IVON's posterior precision.

With a base $\theta_0$ and models $\theta_t$, $t = 1..T$,
fine-tuned from it on different data, uncertainty-based gradient matching
(Daheim et al., 2024) merges them elementwise as

$$
\begin{aligned}
\theta_{\text{merged}} &= \theta_0 + \sum_{t=1}^T \alpha_t\,
  \frac{H_0 + H_t}{\bar H}\, (\theta_t - \theta_0), \\
\bar H &= H_0 + \sum_{s=1}^T \alpha_s H_s,
\end{aligned}
$$

where $H_t$ is model $t$'s (diagonal) precision, $H_0$ the
base's, and $\alpha_t$ are task scales. It reduces the mismatch of the
tasks' gradients that plain weighted averaging ignores. IVON gives
$H_t = \lambda_t (h_t + \delta_t) = 1/\sigma_t^2$ for free
([`ivon_optax.posterior_precision`][]). Special cases:

* one task with $\alpha_1 = 1$ returns $\theta_1$;
* $H_0 \gg H_t$: task arithmetic,
  $\theta_0 + \sum_t \alpha_t (\theta_t - \theta_0)$;
* $H_0 \to 0$, any shared $\alpha$: the precision-weighted
  (Fisher-style) average $\sum_t H_t \theta_t / \sum_s H_s$, and with
  equal $H_t$ the plain average.

References:
  Daheim, Möllenhoff, Ponti, Gurevych, Khan, [Model Merging by
  Uncertainty-Based Gradient Matching](https://arxiv.org/abs/2310.12808),
  ICLR 2024 (the uncertainty-based gradient-matching merge; checked against
  the official code, ``code/uncertainty_based_gradient_matching.py`` of
  ``UKPLab/iclr2024-model-merging``, which computes the same rule with one
  shared scale, ``delta_0`` added to $H_0$, and optional per-task
  factors inside $\bar H$).

  Shen et al., [Variational Learning is Effective for Large Deep
  Networks](https://arxiv.org/abs/2402.17641), ICML 2024 (merging with IVON's Hessian).
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import concrete_number
from ivon_optax._src.checks import nan_unless
from ivon_optax._src.checks import real_array
from ivon_optax._src.checks import require
from ivon_optax._src.posterior import posterior_precision

TaskScales = chex.Numeric | Sequence[chex.Numeric]


def _task_scales(task_scales: TaskScales, num_tasks: int) -> list:
  if isinstance(task_scales, (list, tuple)):
    if len(task_scales) != num_tasks:
      raise ValueError(
        f"`task_scales` has {len(task_scales)} entries for {num_tasks} tasks; pass one "
        "scale per task or a single shared scale."
      )
    for t, scale in enumerate(task_scales):
      concrete_number(f"task_scales[{t}]", scale)
    return list(task_scales)
  task_scales = real_array("task_scales", task_scales)
  if jnp.ndim(task_scales) == 1:
    if jnp.shape(task_scales)[0] != num_tasks:
      raise ValueError(
        f"`task_scales` has {jnp.shape(task_scales)[0]} entries for {num_tasks} tasks."
      )
    return [task_scales[t] for t in range(num_tasks)]
  if jnp.ndim(task_scales) != 0:
    raise ValueError(
      f"`task_scales` must be a scalar or one scalar per task; got shape {jnp.shape(task_scales)}."
    )
  return [task_scales] * num_tasks


def _nonnegative(name: str, values, why: str) -> chex.Array:
  """Whether all of ``values`` (scalars or trees) are >= 0, a scalar; raises when concrete."""
  signs = jnp.stack([jnp.all(jnp.asarray(leaf) >= 0) for leaf in jax.tree.leaves(values)])
  return jnp.all(require(signs, signs, f"`{name}` must be >= 0 (no NaN): {why}"))


def _check_trees(base_params, trees, name: str) -> None:
  for t, tree in enumerate(trees):
    _trees.check_like_params(
      f"{name}[{t}]", tree, base_params, "All models must share the base model's architecture."
    )


def merge_with_precisions(
  base_params: optax.Params,
  finetuned_params: Sequence[optax.Params],
  precisions: Sequence[optax.Params],
  *,
  task_scales: TaskScales = 1.0,
  base_precision: chex.Numeric | optax.Params = 0.0,
  delta_0: chex.Numeric = 1e-12,
) -> optax.Params:
  r"""Uncertainty-based merge from explicit precisions $H_t$.

  $$
  \theta_{\text{merged}} = \theta_0 + \sum_t \alpha_t
    \frac{H_0 + H_t}{H_0 + \sum_s \alpha_s H_s} (\theta_t - \theta_0),
  \qquad H_0 = \text{base\_precision} + \delta_0
  $$

  (Daheim et al., 2024, the uncertainty-based merge.) Use it with precisions that are not IVON's,
  e.g. squared gradients (a diagonal Fisher) after AdamW; with IVON models
  use [`merge_models`][ivon_optax.merging.merge_models].

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> base = {"w": jnp.zeros(2)}
    >>> models = [{"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([3.0, 3.0])}]
    >>> precisions = [{"w": jnp.array([1.0, 3.0])}, {"w": jnp.array([1.0, 1.0])}]
    >>> ivon_optax.merging.merge_with_precisions(base, models, precisions)["w"]  # H-weighted mean
    Array([2. , 1.5], dtype=float32)

  Args:
    base_params: $\theta_0$, the common starting point.
    finetuned_params: the $T$ fine-tuned models $\theta_t$.
    precisions: their diagonal precisions $H_t$ (>= 0), like the params.
    task_scales: $\alpha_t \ge 0$: one shared scale (the official
      code's choice) or one per task. Typical: 0.5 to 1. Negative scales are
      refused: they can make $\bar H$ zero or negative, where the rule
      gives infinities or flips signs (subtract a task with
      [`task_arithmetic`][ivon_optax.merging.task_arithmetic]).
    base_precision: the base's precision (>= 0), a scalar or a pytree like
      the params (0 when unknown).
    delta_0: $\delta_0$ (>= 0; > 0 keeps the ratio defined where every
      precision is 0), added to $H_0$.

  Returns:
    The merged params, in ``base_params``' dtypes. Under ``jit``, a negative
    or NaN scale, precision or $\delta_0$ makes every entry NaN.
  """
  if len(finetuned_params) == 0 or len(finetuned_params) != len(precisions):
    raise ValueError(
      f"Pass one precision per fine-tuned model, and at least one model; got "
      f"{len(finetuned_params)} models and {len(precisions)} precisions."
    )
  _check_trees(base_params, finetuned_params, "finetuned_params")
  _check_trees(base_params, precisions, "precisions")
  scales = _task_scales(task_scales, len(finetuned_params))
  concrete_number("delta_0", delta_0)
  if jax.tree.structure(base_precision) == jax.tree.structure(0.0) and (
    jnp.ndim(base_precision) == 0 or jax.tree.structure(base_params) != jax.tree.structure(0.0)
  ):
    concrete_number("base_precision", base_precision)  # one scalar for every element
    base_precision = jax.tree.map(lambda _: base_precision, base_params)
  else:
    _check_trees(base_params, [base_precision], "base_precision")
  valid = (
    _nonnegative(
      "task_scales",
      scales,
      "a negative scale can make the denominator H_0 + sum_s alpha_s H_s zero or "
      "negative. To subtract a task, use task_arithmetic.",
    )
    & _nonnegative("precisions", precisions, "pass diagonal precisions, e.g. squared gradients.")
    & _nonnegative("base_precision", base_precision, "pass the base's precision, or 0.")
    & _nonnegative("delta_0", delta_0, "it is added to the base precision; use e.g. 1e-12.")
  )
  base_total = jax.tree.map(lambda h0: h0 + delta_0, base_precision)

  def scaled_sum(terms):
    return jax.tree.map(lambda *leaves: sum(leaves), *terms)

  total = scaled_sum(
    [base_total]
    + [
      jax.tree.map(lambda h, a=alpha: a * h, precision)
      for alpha, precision in zip(scales, precisions, strict=True)
    ]
  )
  step = scaled_sum(
    [
      jax.tree.map(
        lambda theta, theta0, h, h0, bar, a=alpha: a * (h0 + h) / bar * (theta - theta0),
        model,
        base_params,
        precision,
        base_total,
        total,
      )
      for alpha, model, precision in zip(scales, finetuned_params, precisions, strict=True)
    ]
  )
  return jax.tree.map(
    lambda theta0, delta: nan_unless(valid, theta0 + delta).astype(jnp.result_type(theta0)),
    base_params,
    step,
  )


def merge_models(
  base_params: optax.Params,
  finetuned: Sequence[tuple[optax.Params, optax.OptState]],
  *,
  task_scales: TaskScales = 1.0,
  base_state: optax.OptState | None = None,
  base_precision: chex.Numeric | optax.Params | None = None,
  delta_0: chex.Numeric = 1e-12,
) -> optax.Params:
  r"""Merges IVON-trained models fine-tuned from ``base_params``, weighted by their precision.

  $$
  \theta_{\text{merged}} = \theta_0 + \sum_t \alpha_t
    \frac{H_0 + H_t}{H_0 + \sum_s \alpha_s H_s} (\theta_t - \theta_0),
  \qquad H_t = \lambda_t (h_t + \delta_t)
  $$

  (Daheim et al., 2024, with IVON's precision as in Shen et al., 2024.)
  $H_t$ is read from each model's optimizer state
  ([`ivon_optax.posterior_precision`][]); $H_0$ is the base's IVON precision when
  ``base_state`` is given, else ``base_precision``, else 0, plus
  $\delta_0$.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> base = {"w": jnp.zeros(2)}
    >>> tx = ivon_optax.ivon(0.1, ess=10.0, hess_init=1.0, weight_decay=0.0)
    >>> model = {"w": jnp.array([1.0, -1.0])}
    >>> merged = ivon_optax.merging.merge_models(base, [(model, tx.init(model))])
    >>> merged["w"]  # one task, alpha = 1: the model itself
    Array([ 1., -1.], dtype=float32)

  Args:
    base_params: $\theta_0$.
    finetuned: ``(params, opt_state)`` per task; each ``opt_state`` must
      contain the IVON state of that fine-tuning run.
    task_scales: $\alpha_t \ge 0$: one shared scale or one per task
      (see [`merge_with_precisions`][ivon_optax.merging.merge_with_precisions]).
    base_state: the base model's IVON optimizer state, if it was trained
      with IVON; gives $H_0$.
    base_precision: $H_0$ as a scalar or pytree, when there is no
      ``base_state`` (e.g. a prior precision). Not both.
    delta_0: $\delta_0 > 0$ added to $H_0$ (the official code's
      ``delta_0``).

  Returns:
    The merged params.
  """
  if base_state is not None and base_precision is not None:
    raise ValueError("Pass `base_state` or `base_precision`, not both.")
  if not finetuned or any(
    not isinstance(task, (tuple, list)) or len(task) != 2 for task in finetuned
  ):
    raise ValueError(
      "`finetuned` must be a non-empty list of (params, opt_state) pairs, one per task."
    )
  if base_state is not None:
    base_precision = posterior_precision(base_state, base_params)
  params = [model for model, _ in finetuned]
  precisions = [posterior_precision(state, model) for model, state in finetuned]
  return merge_with_precisions(
    base_params,
    params,
    precisions,
    task_scales=task_scales,
    base_precision=0.0 if base_precision is None else base_precision,
    delta_0=delta_0,
  )


def task_arithmetic(
  base_params: optax.Params,
  finetuned_params: Sequence[optax.Params],
  *,
  task_scales: TaskScales = 1.0,
) -> optax.Params:
  r"""Task arithmetic $\theta_0 + \sum_t \alpha_t (\theta_t - \theta_0)$.

  The baseline the uncertainty-based merge improves on; with
  $\alpha_t = 1/T$ it is the plain average of the models.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> base = {"w": jnp.zeros(1)}
    >>> models = [{"w": jnp.ones(1)}, {"w": 3 * jnp.ones(1)}]
    >>> ivon_optax.merging.task_arithmetic(base, models, task_scales=0.5)["w"]  # the average
    Array([2.], dtype=float32)

  Args:
    base_params: $\theta_0$.
    finetuned_params: the fine-tuned models $\theta_t$.
    task_scales: $\alpha_t$, shared or one per task; negative scales
      subtract a task.

  Returns:
    The merged params.
  """
  if len(finetuned_params) == 0:
    raise ValueError("`finetuned_params` must hold at least one model.")
  _check_trees(base_params, finetuned_params, "finetuned_params")
  scales = _task_scales(task_scales, len(finetuned_params))

  def merge_leaf(theta0, *thetas):
    delta = sum(alpha * (theta - theta0) for alpha, theta in zip(scales, thetas, strict=True))
    return (theta0 + delta).astype(jnp.result_type(theta0))

  return jax.tree.map(merge_leaf, base_params, *finetuned_params)
