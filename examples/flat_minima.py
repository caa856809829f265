r"""Flat minima: on a 2-D loss with a sharp and a flat minimum, where do SGD, Adam and IVON end?

The loss has a narrow, slightly deeper minimum and a wide, shallower one,

.. math::
  L(w) = c\,\lVert w \rVert^2 - d_s\, e^{-\lVert w - a \rVert^2 / 2 r_s^2}
       - d_f\, e^{-\lVert w - b \rVert^2 / 2 r_f^2}.

SGD (with momentum) and Adam, their learning rates decayed to 0, follow the
gradient of :math:`L`. IVON follows the gradient at a weight sample
:math:`w \sim \mathcal{N}(m, \sigma^2)`, so its mean descends the expected
loss :math:`\mathbb{E}_q[L]`, for which a minimum narrower than
:math:`\sigma` is no minimum. Its effective sample size :math:`\lambda` sets
:math:`\sigma` (the posterior is :math:`\propto e^{-\lambda L}`). The three
start from the same points; the plot shows their trajectories on the contour
map, with IVON's posterior as :math:`1\sigma` ellipses along the way, and the
JSON counts, over a grid of starts, how often each ends in each basin.

    python examples/flat_minima.py
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import models
import numpy as np
import optax

import ivon_optax

SHARP = np.array([-1.0, 0.8])  # a: the sharp minimum
FLAT = np.array([1.0, -0.6])  # b: the flat minimum
SHARP_RADIUS, FLAT_RADIUS = 0.3, 0.7
SHARP_DEPTH, FLAT_DEPTH = 1.5, 1.0
BOWL = 0.1
BOX = 2.5  # starts lie in [-BOX, BOX]^2


def loss(w: jax.Array) -> jax.Array:
  """The 2-D loss: a wide bowl holding a sharp and a flat Gaussian well."""
  sharp = SHARP_DEPTH * jnp.exp(-jnp.sum(jnp.square(w - SHARP)) / (2 * SHARP_RADIUS**2))
  flat = FLAT_DEPTH * jnp.exp(-jnp.sum(jnp.square(w - FLAT)) / (2 * FLAT_RADIUS**2))
  return BOWL * jnp.sum(jnp.square(w)) - sharp - flat


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--grid", type=int, default=20, help="starts: a grid x grid lattice")
  parser.add_argument("--ess", type=float, default=4.0, help="IVON's lambda: sets sigma")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="outputs")
  return parser.parse_args(argv)


def optimizers(ess: float, num_steps: int) -> dict:
  """The three optimizers, each with a cosine decay of its learning rate to 0."""
  decay = lambda peak: optax.cosine_decay_schedule(peak, num_steps)
  # hess_init 1/ess: a first sigma of 1, as wide as the picture's features;
  # beta2 0.99: h follows the local curvature within a hundred steps.
  return {
    "SGD": optax.sgd(decay(0.05), momentum=0.9),
    "Adam": optax.adam(decay(0.02)),
    "IVON": ivon_optax.ivon(
      decay(0.05), ess=ess, hess_init=1.0 / ess, beta2=0.99, weight_decay=0.0
    ),
  }


def run(tx, start, key, num_steps: int):
  """One trajectory: the mean (or iterate) at every step, IVON's sigma (zeros otherwise), the state.

  IVON's gradient is taken at a weight sample (``models.train_step``), the others' at ``w``.
  """
  train_step = models.train_step(tx, loss)

  def step(carry, step_key):
    w, state, _ = train_step(step_key, *carry)
    if models.holds_ivon(state):
      sigma = ivon_optax.posterior_std(state, w)
    else:
      sigma = jnp.zeros_like(w)
    return (w, state), (w, sigma)

  keys = jax.random.split(key, num_steps)
  (_, state), (path, sigmas) = jax.lax.scan(step, (start, tx.init(start)), keys)
  return jnp.concatenate([start[None], path]), sigmas, state


def basin(w: np.ndarray) -> np.ndarray:
  """'sharp', 'flat' or 'neither' for each final point ``(n, 2)``."""
  near_sharp = np.linalg.norm(w - SHARP, axis=-1) < 2 * SHARP_RADIUS
  near_flat = np.linalg.norm(w - FLAT, axis=-1) < FLAT_RADIUS
  return np.where(near_sharp, "sharp", np.where(near_flat, "flat", "neither"))


def grid_starts(grid: int) -> jax.Array:
  """``grid x grid`` starts on a lattice over ``[-BOX, BOX]^2``: ``(grid², 2)``."""
  axis = np.linspace(-BOX, BOX, grid, dtype=np.float32)
  return jnp.asarray(np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2))


def run_all(starts, *, ess: float, steps: int, seed: int) -> tuple[dict, dict, dict, dict]:
  """Every optimizer from every start: ``(paths, sigmas, basin frequencies, IVON's states)``."""
  keys = jax.random.split(jax.random.key(seed), len(starts))
  paths, sigmas, frequencies = {}, {}, {}
  for name, tx in optimizers(ess, steps).items():
    all_runs = jax.jit(jax.vmap(lambda w, k, tx=tx: run(tx, w, k, steps)))
    path, sigma, state = all_runs(starts, keys)
    paths[name], sigmas[name] = np.asarray(path), np.asarray(sigma)
    ends = basin(paths[name][:, -1])
    frequencies[name] = {b: float(np.mean(ends == b)) for b in ("sharp", "flat", "neither")}
    if name == "IVON":
      ivon_state = state
  return paths, sigmas, frequencies, ivon_state


def main(argv=None) -> dict:
  args = parse_args(argv)
  starts = grid_starts(args.grid)
  paths, sigmas, frequencies, ivon_state = run_all(
    starts, ess=args.ess, steps=args.steps, seed=args.seed
  )

  final_sigma = sigmas["IVON"][:, -1]
  ivon_ends = basin(paths["IVON"][:, -1])
  summary = {
    "args": vars(args),
    "num_starts": len(starts),
    "basin_frequency": frequencies,
    "loss_at_minimum": {"sharp": float(loss(SHARP)), "flat": float(loss(FLAT))},
    "ivon_final_sigma_in_flat": final_sigma[ivon_ends == "flat"].mean(0).tolist()
    if np.any(ivon_ends == "flat")
    else None,
  }
  print(
    f"{len(starts)} starts on a {args.grid}x{args.grid} grid in [-{BOX}, {BOX}]^2, "
    f"{args.steps} steps; loss at the sharp minimum {summary['loss_at_minimum']['sharp']:.3f}, "
    f"at the flat one {summary['loss_at_minimum']['flat']:.3f}\n"
  )
  print("| optimizer | ends in the sharp basin | in the flat basin | neither |\n|---|---|---|---|")
  for name, f in frequencies.items():
    print(f"| {name} | {f['sharp']:.0%} | {f['flat']:.0%} | {f['neither']:.0%} |")
  ends = jnp.asarray(paths["IVON"][:, -1])
  summary["ivon_diagnostics"] = models.report_diagnostics(ivon_state, ends, "IVON, one per start,")

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "flat_minima.png")
  shown = pick_starts(np.asarray(starts))
  plot({n: p[shown] for n, p in paths.items()}, sigmas["IVON"][shown], frequencies, path)
  summary["plot"] = path
  print(f"\nPlot: {path}")
  with open(os.path.join(args.out, "flat_minima.json"), "w") as file:
    json.dump(summary, file, indent=1)
  return summary


def pick_starts(starts: np.ndarray) -> np.ndarray:
  """Indices of four starts for the picture: the grid points nearest four chosen places."""
  wanted = np.array([[-2.0, 2.0], [-2.0, -0.6], [0.0, 2.0], [-0.3, 0.3]])
  return np.argmin(np.linalg.norm(starts[None] - wanted[:, None], axis=-1), axis=1)


def plot(paths: dict, ivon_sigmas: np.ndarray, frequencies: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Ellipse

  axis = np.linspace(-BOX - 0.3, BOX + 0.3, 300)
  grid = np.stack(np.meshgrid(axis, axis), -1)
  surface = np.asarray(jax.vmap(jax.vmap(loss))(jnp.asarray(grid)))
  fig, panels = plt.subplots(1, 3, figsize=(13, 4.6), sharey=True)
  colors = plt.cm.tab10(np.arange(len(next(iter(paths.values())))))
  for panel, (name, trajectories) in zip(panels, paths.items(), strict=True):
    panel.contourf(axis, axis, surface, levels=30, cmap="Greys_r", alpha=0.8)
    panel.contour(axis, axis, surface, levels=15, colors="k", linewidths=0.3)
    for run, color in enumerate(colors):
      xy = trajectories[run]
      panel.plot(xy[:, 0], xy[:, 1], color=color, lw=1.2)
      panel.plot(*xy[0], "o", color=color, ms=5)
      panel.plot(*xy[-1], "*", color=color, ms=11, mec="k")
      if name == "IVON":
        for step in np.unique(np.geomspace(1, len(xy) - 1, 8).astype(int)):
          sx, sy = ivon_sigmas[run, step - 1]
          panel.add_patch(
            Ellipse(xy[step], 2 * sx, 2 * sy, fill=False, color=color, lw=0.9, alpha=0.9)
          )
    f = frequencies[name]
    panel.set_title(f"{name}: sharp {f['sharp']:.0%}, flat {f['flat']:.0%}", fontsize=10)
    panel.set(xlim=(axis[0], axis[-1]), ylim=(axis[0], axis[-1]), aspect="equal", xlabel="$w_1$")
  panels[0].set_ylabel("$w_2$")
  panels[0].annotate("sharp", SHARP + [0.15, 0.15], color="w", fontsize=8)
  panels[0].annotate("flat", FLAT + [0.15, 0.15], color="w", fontsize=8)
  fig.suptitle("Same starts (o), ends (*); IVON's posterior as 1σ ellipses along the way")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
