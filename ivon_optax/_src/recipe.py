r"""IVON's posterior hyperparameters from what a user knows about the run.

With the training-set size $N$, the number of steps $T$, the initial weight
scale $s$ and a temperature $k$ chosen on validation data:

$$
\lambda = k N, \qquad
\delta = \frac{1}{\lambda (\rho s)^2}, \qquad
h_0 = \frac{1}{\lambda (r s)^2} - \delta, \qquad
\beta_2 = 1 - \frac{1}{m T}.
$$

* The prior's standard deviation $1/\sqrt{\lambda\delta}$ is $\rho s$ (twice
  the init scale), not whatever ``ess`` and a weight decay chosen apart give.
* Training starts with $\sigma_0 = 1/\sqrt{\lambda (h_0 + \delta)} = r s$
  (half the init scale), and the step factor $(h_0 + \delta)/(h + \delta)$
  of ``rescale_lr`` stays below $(\rho / r)^2 = 16$ wherever $h \ge 0$. The
  Price estimate can take $h$ below zero, and weights masked out of the prior
  have $\delta = 0$, so a few weights can exceed it (``step_factor_max`` of
  [`diagnostics`][ivon_optax.diagnostics] reports the largest).
* $h$ remembers $m T$ steps (a third of the run): the initial value keeps a
  weight $e^{-1/m} \approx 5\%$ at the end, and the data set the rest.
* $k$ tempers the posterior. A diagonal Gaussian over many weights with
  $\lambda = N$ is too wide to predict well; $k$ from a geometric grid
  (4, 16, 64, 128) chosen on validation data, like any other hyperparameter,
  makes it the width that predicts best, so that no posterior scale needs
  fitting afterwards.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ivon_optax._src.checks import concrete_number


def init_scale(params: Any) -> float:
  """The root-mean-square entry of the weight matrices and kernels (leaves with two or more axes).

  Biases and normalization scales are left out: their initial values are
  constants, not the scale of the weights.

  Examples:
    >>> import jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.full((4, 3), 0.5), "b": jnp.zeros(3)}
    >>> ivon_optax.init_scale(params)
    0.5
  """
  leaves = [
    np.asarray(leaf, np.float64)
    for leaf in jax.tree.leaves(params)
    if jnp.ndim(leaf) >= 2 and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
  ]
  if not leaves or sum(leaf.size for leaf in leaves) == 0:
    raise ValueError(
      "`params` holds no floating weight matrix or kernel (a leaf with two or more axes) to "
      "take the init scale from: pass init_scale as a number."
    )
  squares = sum(float(np.sum(np.square(leaf))) for leaf in leaves)
  return float(np.sqrt(squares / sum(leaf.size for leaf in leaves)))


_params_init_scale = init_scale  # `recipe`'s argument of the same name shadows it


def _positive(name: str, value: Any, fix: str, *, below: float | None = None) -> float:
  number = concrete_number(name, value)
  if number is None:
    raise TypeError(f"`{name}` must be a concrete number, not a traced value. {fix}")
  if not (np.isfinite(number) and number > 0 and (below is None or number < below)):
    bound = f" and < {below}" if below is not None else ""
    raise ValueError(f"Invalid `{name}`={number!r}: it must be finite, > 0{bound}. {fix}")
  return number


def recipe(
  init_scale: chex.Numeric | Any,
  *,
  num_train: int,
  num_steps: int,
  temper: float = 16.0,
  prior_scale: float = 2.0,
  init_spread: float = 0.5,
  memory: float = 1 / 3,
) -> dict[str, float]:
  r"""``ess``, ``weight_decay``, ``hess_init`` and ``beta2`` for [`ivon`][ivon_optax.ivon].

  $$
  \lambda = k N,\quad \delta = \frac{1}{\lambda (\rho s)^2},\quad
  h_0 = \frac{1}{\lambda (r s)^2} - \delta,\quad \beta_2 = 1 - \frac{1}{m T}
  $$

  See the module's description for why. Choose ``temper`` ($k$) and the
  learning rate on validation data; the rest follows from the run.

  Examples:
    >>> import ivon_optax
    >>> hp = ivon_optax.recipe(0.1, num_train=4000, num_steps=1200, temper=16.0)
    >>> {name: round(value, 6) for name, value in hp.items()}
    {'ess': 64000.0, 'weight_decay': 0.000391, 'hess_init': 0.005859, 'beta2': 0.9975}
    >>> tx = ivon_optax.ivon(learning_rate=2.0, **hp)

  Args:
    init_scale: $s$, the root-mean-square initial weight, or the initial
      params to take it from ([`init_scale`][ivon_optax.init_scale]).
    num_train: $N$, the number of training examples.
    num_steps: $T$, the optimizer steps of the whole run.
    temper: $k = \lambda / N$ (> 0), the posterior's temperature; choose it
      on validation data from 4, 16, 64, 128.
    prior_scale: $\rho$, the prior's standard deviation in units of $s$.
    init_spread: $r < \rho$, the initial posterior standard deviation in
      units of $s$.
    memory: $m$, how much of the run $h$ remembers, in (0, 1].

  Returns:
    A dict of keyword arguments for [`ivon`][ivon_optax.ivon] and
    [`scale_by_ivon`][ivon_optax.scale_by_ivon].

  Raises:
    ValueError, TypeError: for a non-positive or non-finite argument, or
      ``init_spread >= prior_scale`` (then $h_0 \le 0$).
  """
  if not isinstance(init_scale, (int, float, np.number)) and not (
    hasattr(init_scale, "ndim") and init_scale.ndim == 0
  ):
    init_scale = _params_init_scale(init_scale)
  scale = _positive("init_scale", init_scale, "Pass the init scale, e.g. 1/sqrt(fan_in).")
  num_train = _positive("num_train", num_train, "Pass the training-set size.")
  num_steps = _positive("num_steps", num_steps, "Pass the optimizer steps of the whole run.")
  temper = _positive("temper", temper, "Choose it on validation data, e.g. 16.")
  prior_scale = _positive("prior_scale", prior_scale, "The default is 2.")
  init_spread = _positive(
    "init_spread",
    init_spread,
    "The initial spread must be below the prior's (the default is 0.5).",
    below=prior_scale,
  )
  memory = _positive("memory", memory, "The default is 1/3.", below=1.0 + 1e-12)
  ess = temper * num_train
  weight_decay = 1.0 / (ess * (prior_scale * scale) ** 2)
  hess_init = 1.0 / (ess * (init_spread * scale) ** 2) - weight_decay
  beta2 = 1.0 - 1.0 / max(memory * num_steps, 1.0)
  return {"ess": ess, "weight_decay": weight_decay, "hess_init": hess_init, "beta2": beta2}
