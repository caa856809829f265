r"""IVON's state and the formulas of its Algorithm 1, one small function a line.

IVON (Shen et al., 2024) learns a diagonal Gaussian posterior
$q = \mathcal{N}(m, \sigma^2)$ over the weights. Per element, with effective
sample size $\lambda$, prior precision per example $\delta$ and prior mean
$\mu_0$ (0 unless a prior says otherwise), one step with Monte-Carlo
samples $\theta_s = m + \sigma\odot\epsilon_s$ and their gradients $g_s$ is

$$
\begin{aligned}
\sigma &= 1/\sqrt{\lambda (h + \delta)} \\
\bar g_t &= \beta_1 \bar g_{t-1} + (1-\beta_1)\,\overline{g_s} \\
\hat h &= \lambda\,\overline{(\sigma\epsilon_s) g_s}\,(h + \delta)
  \quad\text{or}\quad \lambda\,\overline{g_s^2} \\
h &\leftarrow \beta_2 h + (1-\beta_2)\hat h
  + \tfrac12 (1-\beta_2)^2 (h - \hat h)^2 / (h + \delta) \\
m &\leftarrow m - \alpha_t (h_0 + \delta)\,
  \mathrm{clip}\!\left(\frac{\bar g_t/(1-\beta_1^t) + \delta (m - \mu_0)}{h + \delta},
  -c, c\right)
\end{aligned}
$$

Each formula is the reference's wherever the reference's float arithmetic
stays finite. Where it overflows, $\hat h$ and $h$ saturate at the dtype's
largest finite value instead of becoming inf (and NaN a step later), and
$h + \delta$ is floored at the smallest normal number, so that $\sigma$ and
the step stay finite.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax


class IVONState(NamedTuple):
  r"""IVON's state: the posterior $\mathcal{N}(m, 1/(\lambda (h + \delta)))$ and its prior.

  The state is the one home of everything that defines the posterior: the
  learned momentum and Hessian, and the effective sample size $\lambda$,
  $h_0$ and the prior $\mathcal{N}(\mu_0, 1/(\lambda\delta))$ that
  ``tx.init`` set from the transform's arguments. ``update`` reads them from
  here only, and refuses a transform whose arguments say otherwise.

  The per-parameter fields hold an `optax.MaskedNode` for each leaf IVON
  does not manage: leaves masked out by ``optax.masked``/``optax.partition``,
  and integer or boolean leaves, which IVON neither perturbs nor updates.
  """

  count: chex.Array  # shape=(), int32: steps taken.
  momentum: optax.Updates  # like params, state dtype: the gradient momentum g_bar.
  hess: optax.Updates  # like params, state dtype: the Hessian estimate h.
  ess: chex.Array  # shape=(), state dtype: the effective sample size lambda.
  hess_init: chex.Array  # shape=(), state dtype: h0, h's value at step 0.
  hess_init_weight: chex.Array  # shape=(), state dtype: prod(beta2), h0's weight left in h.
  prior_precision: optax.Updates  # per leaf: delta, a scalar or the param's shape.
  prior_mean: optax.Updates  # like params, state dtype: mu_0; () for a prior at 0.
  prior_id: chex.Array  # shape=(), int32: fingerprint of the prior's arrays (0: none).

  @property
  def weight_decay(self) -> optax.Updates:
    """Deprecated name of ``prior_precision``."""
    import warnings

    warnings.warn(
      "IVONState.weight_decay is deprecated: the field is IVONState.prior_precision.",
      DeprecationWarning,
      stacklevel=2,
    )
    return self.prior_precision


def _largest(x: chex.Array) -> chex.Array:
  return jnp.finfo(x.dtype).max


def saturate(x: chex.Array) -> chex.Array:
  """``x`` clipped to its dtype's finite range; NaN stays NaN.

  Written as a select rather than ``clip``: XLA fuses a compare-and-select into its
  producer, where it would recompute a clip's whole input in every consumer.
  """
  return jnp.where(jnp.abs(x) > _largest(x), jnp.sign(x) * _largest(x), x)


def precision_per_example(hess: chex.Array, prior_precision: chex.Array) -> chex.Array:
  r"""$h + \delta$, floored at the smallest normal number so that $\sigma$ stays finite."""
  return jnp.maximum(hess + prior_precision, jnp.finfo(hess.dtype).tiny)


def std(ess: chex.Array, precision: chex.Array) -> chex.Array:
  r"""The posterior standard deviation $\sigma = 1/\sqrt{\lambda (h + \delta)}$."""
  return jax.lax.rsqrt(ess * precision)


def new_momentum(momentum: chex.Array, grads: chex.Array, beta1: chex.Numeric) -> chex.Array:
  r"""$\bar g \leftarrow \beta_1 \bar g + (1-\beta_1)\, g$."""
  return saturate(beta1 * momentum + (1.0 - beta1) * grads)


def price_estimate(noise_grads: chex.Array, precision: chex.Array, ess: chex.Array) -> chex.Array:
  r"""Price's-theorem estimate $\hat h = \lambda\,\overline{\text{noise}\cdot g}\,(h + \delta)$.

  For one sample this is $\epsilon g / \sigma$ (the reparameterization
  trick), averaged over the Monte-Carlo samples.
  """
  return saturate(noise_grads * precision * ess)


def gradsq_estimate(grads_squared: chex.Array, ess: chex.Array) -> chex.Array:
  r"""Squared-gradient (Gauss-Newton-like) estimate $\hat h = \lambda\,\overline{g^2}$."""
  return saturate(grads_squared * ess)


def new_hess(
  hess: chex.Array, estimate: chex.Array, beta2: chex.Numeric, precision: chex.Array
) -> chex.Array:
  r"""The Riemannian-gradient update of $h$; ``precision`` is the old $h + \delta$.

  $$
  h \leftarrow \beta_2 h + (1-\beta_2)\hat h
    + \tfrac12 (1-\beta_2)^2 (h - \hat h)^2 / (h + \delta)
  $$

  The last term keeps $h + \delta > 0$ whatever $\hat h$ is. It is computed
  as $d \cdot (d / (h + \delta))$, $d = h - \hat h$, so that $d^2$ cannot
  overflow where the result itself fits; an overflow saturates.
  """
  gap = hess - estimate
  hess = (
    beta2 * hess + (1.0 - beta2) * estimate + (0.5 * (1.0 - beta2) ** 2) * gap * (gap / precision)
  )
  return jnp.where(hess > _largest(hess), _largest(hess), hess)  # a select, as in `saturate`


def debiased(momentum: chex.Array, beta1: chex.Numeric, count: chex.Array) -> chex.Array:
  r"""$\bar g / (1 - \beta_1^t)$, the correction computed in the momentum's dtype."""
  return momentum / (1.0 - jnp.asarray(beta1, momentum.dtype) ** count.astype(momentum.dtype))


def mean_step(
  momentum_hat: chex.Array,
  param: chex.Array,
  precision: chex.Array,
  prior_precision: chex.Array,
  prior_mean: chex.Numeric,
  clip_radius: chex.Numeric,
) -> chex.Array:
  r"""$\mathrm{clip}((\hat g + \delta (m - \mu_0)) / (h + \delta), -c, c)$, with the new $h$.

  ``precision`` is the new $h + \delta$.
  """
  step = (momentum_hat + prior_precision * (param - prior_mean)) / precision
  return jnp.clip(step, -clip_radius, clip_radius)


def rescaled(step: chex.Array, hess_init: chex.Array, prior_precision: chex.Array) -> chex.Array:
  r"""$(h_0 + \delta)\,u$: the step on SGD's scale (``rescale_lr``)."""
  return (hess_init + prior_precision) * step
