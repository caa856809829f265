r"""Several Monte-Carlo weight samples per step.

IVON's step needs, over the $S$ samples of a step, the mean gradient
$\tfrac1S\sum_s g_s$ and one Hessian statistic: $\tfrac1S\sum_s
\text{noise}_s \odot g_s$ (``hess_approx='price'``) or $\tfrac1S\sum_s
g_s^2$ (``'gradsq'``). A [`SampleAverage`][ivon_optax.SampleAverage] holds them. Build it

* **in parallel**, from gradients and noise stacked on a leading sample axis
  (``jax.vmap`` over keys), with [`average_samples`][ivon_optax.average_samples]; or
* **in sequence**, one sample (or micro-batch) at a time, with
  [`init_sample_average`][ivon_optax.init_sample_average] and [`add_sample`][ivon_optax.add_sample],
  holding one sample in memory at a time.

Both give the same averages; pass them as
``tx.update(average.grads, state, params, samples=average)``. A step with one
sample needs none of this: pass ``noise=`` directly.
"""

from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from ivon_optax._src import trees as _trees
from ivon_optax._src.checks import HessApprox
from ivon_optax._src.checks import check_hess_approx
from ivon_optax._src.checks import state_dtype


class SampleAverage(NamedTuple):
  """Running Monte-Carlo means of the gradient statistics of one IVON step."""

  count: chex.Array  # shape=(), dtype=jnp.int32: samples averaged so far.
  grads: optax.Updates  # like params: mean of g_s.
  noise_grads: Any  # like params: mean of noise_s * g_s ('price'), else ().
  grads_squared: Any  # like params: mean of g_s**2 ('gradsq'), else ().


def init_sample_average(
  params: optax.Params, hess_approx: HessApprox = "price", dtype: Any | None = None
) -> SampleAverage:
  """An empty [`SampleAverage`][ivon_optax.SampleAverage] for ``params``.

  Args:
    params: the model's (mean) parameters.
    hess_approx: the ``hess_approx`` given to [`ivon_optax.ivon`][]; only
      the statistic it needs is allocated.
    dtype: accumulator dtype; by default the param's dtype promoted to at
      least float32.

  Returns:
    A [`SampleAverage`][ivon_optax.SampleAverage] with ``count = 0`` and zero means.
  """
  check_hess_approx(hess_approx)
  zeros = lambda: _trees.map_unmasked(
    lambda p: jnp.zeros(jnp.shape(p), state_dtype(p, dtype)), params
  )
  return SampleAverage(
    count=jnp.zeros([], jnp.int32),
    grads=zeros(),
    noise_grads=zeros() if hess_approx == "price" else (),
    grads_squared=zeros() if hess_approx == "gradsq" else (),
  )


def add_sample(average: SampleAverage, grads: optax.Updates, noise: optax.Updates) -> SampleAverage:
  r"""Adds one sample's gradient to the running means.

  Each mean is updated as $\mu \leftarrow \mu + (x - \mu) / n$.
  Per-sample gradient transforms (e.g. clipping each micro-batch's gradient,
  as in the paper's GPT-2 runs) belong before this call.

  Args:
    average: the running [`SampleAverage`][ivon_optax.SampleAverage].
    grads: the loss gradient at ``params + noise``.
    noise: the noise returned by [`ivon_optax.sample_params`][].

  Returns:
    The updated [`SampleAverage`][ivon_optax.SampleAverage].
  """
  fix = "Pass the gradient and noise of one weight sample of these params."
  _trees.check_like_params("grads", grads, average.grads, fix)
  _trees.check_like_params("noise", noise, average.grads, fix)
  count = optax.safe_increment(average.count)

  def running_mean(mean, value):
    return mean + (value.astype(mean.dtype) - mean) / count.astype(mean.dtype)

  def update(mean, statistic):
    if isinstance(mean, tuple) and not mean:
      return mean
    values = _trees.map_unmasked(statistic, mean, grads, noise)
    return _trees.map_unmasked(running_mean, mean, values)

  return SampleAverage(
    count=count,
    grads=update(average.grads, lambda m, g, n: g),
    noise_grads=update(average.noise_grads, lambda m, g, n: n.astype(m.dtype) * g.astype(m.dtype)),
    grads_squared=update(average.grads_squared, lambda m, g, n: jnp.square(g.astype(m.dtype))),
  )


def average_samples(
  grads: optax.Updates,
  noise: optax.Updates,
  hess_approx: HessApprox = "price",
  dtype: Any | None = None,
) -> SampleAverage:
  """The [`SampleAverage`][ivon_optax.SampleAverage] of samples stacked on a leading axis.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ivon_optax
    >>> params = {"w": jnp.ones(3)}
    >>> tx = ivon_optax.ivon(learning_rate=0.1, ess=100.0)
    >>> state = tx.init(params)
    >>> def grad_at_sample(key):
    ...   sampled, noise = ivon_optax.sample_params(key, state, params)
    ...   return jax.grad(lambda p: jnp.sum(p["w"] ** 2))(sampled), noise
    >>> keys = jax.random.split(jax.random.key(0), 4)
    >>> grads, noise = jax.vmap(grad_at_sample)(keys)
    >>> average = ivon_optax.average_samples(grads, noise)
    >>> updates, state = tx.update(average.grads, state, params, samples=average)
    >>> int(average.count)
    4

  Args:
    grads: gradients with a leading sample axis of size S.
    noise: the matching noise, same structure and shapes.
    hess_approx: the ``hess_approx`` given to [`ivon_optax.ivon`][].
    dtype: accumulator dtype; by default at least float32.

  Returns:
    A [`SampleAverage`][ivon_optax.SampleAverage] with ``count = S``.
  """
  check_hess_approx(hess_approx)
  _trees.check_like_params(
    "noise", noise, grads, "Stack the noise of the same samples as the gradients."
  )
  leaves = jax.tree.leaves(grads)
  if not leaves or any(jnp.ndim(g) == 0 for g in leaves):
    raise ValueError(
      "`grads` must carry a leading sample axis (e.g. from jax.vmap over "
      "keys); for one sample pass `noise=` to tx.update instead."
    )
  sizes = {jnp.shape(g)[0] for g in leaves}
  if len(sizes) != 1:
    raise ValueError(
      f"`grads` leaves have different leading sample axes {sorted(sizes)}: stack "
      "the same S samples in every leaf (jax.vmap over S keys)."
    )
  num_samples = sizes.pop()

  def mean(statistic):
    return jax.tree.map(
      lambda g, n: jnp.mean(
        statistic(g.astype(state_dtype(g, dtype)), n.astype(state_dtype(g, dtype))), axis=0
      ),
      grads,
      noise,
    )

  return SampleAverage(
    count=jnp.asarray(num_samples, jnp.int32),
    grads=mean(lambda g, n: g),
    noise_grads=mean(lambda g, n: n * g) if hess_approx == "price" else (),
    grads_squared=mean(lambda g, n: g * g) if hess_approx == "gradsq" else (),
  )
