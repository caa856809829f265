"""Fine-tuning with a prior centred at the pretrained weights, on MNIST-1D.

An MLP is pretrained with IVON on MNIST-1D, then fine-tuned with IVON on a
little data (``--shots`` examples) from MNIST-1D made with other generation
parameters (more correlated noise, more shear, other templates' scale). Every
fine-tuning run starts from the pretrained weights; they differ in the prior:

* ``zero``: the usual ``N(0, 1/(ess * delta))`` (``weight_decay=delta``);
* ``pretrained``: ``GaussianPrior(mean=pretrained, precision=delta)``;
* ``posterior``: ``posterior_as_prior(pretraining state, pretrained, ess)``,
  the pretraining posterior itself (no delta to choose).

``delta`` is chosen from ``--deltas`` by validation accuracy on a held-out part
of the shifted data, the same way for ``zero`` and ``pretrained``. We report
accuracy and NLL of the posterior predictive on the shifted test set, and on
the original test set (what fine-tuning forgot).

Run: ``python examples/finetune_prior.py --out outputs/finetune_prior``
"""

import argparse
import functools
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import models
import numpy as np
import optax

import ivon_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANTS = ("zero", "pretrained", "posterior")
# The shifted task: MNIST-1D's generator with these arguments changed.
SHIFT = {"corr_noise_scale": 0.6, "shear_scale": 1.5, "scale_coeff": 0.6, "seed": 7}

# --- Data: MNIST-1D, generated locally ----------------------------------------------


class Split(NamedTuple):
  """Float32 inputs ``(n, 40)`` and int32 labels ``(n,)``."""

  inputs: np.ndarray
  labels: np.ndarray


def load_mnist1d(**changes):
  """MNIST-1D from ``mnist1d.data.make_dataset`` (never downloads), with generator ``changes``.

  Returns:
    ``(train, test)`` :class:`Split` s.
  """
  from mnist1d.data import get_dataset_args
  from mnist1d.data import make_dataset

  args = get_dataset_args()
  for name, value in changes.items():
    setattr(args, name, value)
  data = make_dataset(args)
  return (
    Split(data["x"].astype(np.float32), data["y"].astype(np.int32)),
    Split(data["x_test"].astype(np.float32), data["y_test"].astype(np.int32)),
  )


def few_shot_splits(shots: int, num_val: int, seed: int = 0):
  """``shots`` training and ``num_val`` validation examples of the shifted data; its test set."""
  train, test = load_mnist1d(**SHIFT)
  order = np.random.default_rng(seed).permutation(len(train.labels))
  pick = lambda index: Split(train.inputs[index], train.labels[index])
  return pick(order[:shots]), pick(order[shots : shots + num_val]), test


# --- Training -----------------------------------------------------------------------------


class Config(NamedTuple):
  """Settings (hashable: a static argument of ``jit``)."""

  hidden: int = 128
  pretrain_epochs: int = 20
  finetune_steps: int = 300
  batch_size: int = 32
  learning_rate: float = 0.2  # Newton-scaled (rescale_lr=False)
  weight_decay: float = 1e-3  # pretraining's delta
  hess_init: float = 0.3
  beta2: float = 0.999
  eval_samples: int = 8


def ivon_optimizer(config, ess, steps, **prior_or_decay):
  schedule = optax.cosine_decay_schedule(config.learning_rate, steps)
  # Newton-scaled steps: rescale_lr would multiply each weight's step by h0 + delta,
  # and the pretraining posterior as prior has a delta far above h0.
  return ivon_optax.ivon(
    schedule,
    ess=float(ess),
    hess_init=config.hess_init,
    beta2=config.beta2,
    rescale_lr=False,
    **prior_or_decay,
  )


def train(key, tx, params, split, *, steps, batch_size):
  """``steps`` IVON steps of ``tx`` from ``params``; returns ``(params, opt_state)``."""

  def step(carry, step_key):
    params, opt_state = carry
    batch_key, sample_key = jax.random.split(step_key)
    batch = jax.random.choice(batch_key, split.labels.shape[0], (batch_size,), replace=False)
    sampled, noise = ivon_optax.sample_params(sample_key, opt_state, params)
    grads = jax.grad(models.mean_nll)(sampled, split.inputs[batch], split.labels[batch])
    updates, opt_state = tx.update(grads, opt_state, params, noise=noise)
    return (optax.apply_updates(params, updates), opt_state), None

  carry = (params, tx.init(params))
  return jax.lax.scan(step, carry, jax.random.split(key, steps))[0]


def evaluate(key, params, opt_state, split, num_samples):
  """Accuracy and mean NLL of the posterior predictive."""
  logits = ivon_optax.predict.sample_outputs(
    key, models.mlp_apply, opt_state, params, split.inputs, num_samples=num_samples
  )
  log_probs = ivon_optax.predict.predictive_log_probs(logits)
  nll = -jnp.take_along_axis(log_probs, split.labels[:, None], axis=1).mean()
  return jnp.mean(jnp.argmax(log_probs, -1) == split.labels), nll


@functools.partial(jax.jit, static_argnames="config")
def pretrain(keys, split, *, config):
  """IVON on the original data, one run per key: ``(params, opt_state)`` batched over keys."""
  num_train = split.labels.shape[0]
  steps = config.pretrain_epochs * num_train // config.batch_size

  def one_seed(key):
    init_key, train_key = jax.random.split(key)
    params = models.init_mlp(init_key, (split.inputs.shape[1], config.hidden, config.hidden, 10))
    tx = ivon_optimizer(config, num_train, steps, weight_decay=config.weight_decay)
    return train(train_key, tx, params, split, steps=steps, batch_size=config.batch_size)

  return jax.vmap(one_seed)(keys)


@functools.partial(jax.jit, static_argnames=("variant", "config"))
def finetune(keys, pretrained, delta, data, *, variant, config):
  """Fine-tunes each seed's pretrained model; returns ``{split: (accuracy, nll)}`` per seed."""
  shots = data["train"].labels.shape[0]
  batch_size = min(config.batch_size, shots)

  def one_seed(key, params, opt_state):
    if variant == "zero":
      options = {"weight_decay": delta}
    elif variant == "pretrained":
      options = {"prior": ivon_optax.GaussianPrior(mean=params, precision=delta)}
    else:
      options = {"prior": ivon_optax.posterior_as_prior(opt_state, params, float(shots))}
    tx = ivon_optimizer(config, shots, config.finetune_steps, **options)
    train_key, eval_key = jax.random.split(key)
    params, opt_state = train(
      train_key, tx, params, data["train"], steps=config.finetune_steps, batch_size=batch_size
    )
    return {
      name: evaluate(eval_key, params, opt_state, split, config.eval_samples)
      for name, split in data.items()
      if name != "train"
    }

  return jax.vmap(one_seed)(keys, *pretrained)


# --- Main ---------------------------------------------------------------------------------


def parse_args(argv=None):
  defaults = Config._field_defaults
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--shots", type=int, default=100)
  parser.add_argument("--val", type=int, default=500)
  parser.add_argument("--deltas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
  parser.add_argument("--hidden", type=int, default=defaults["hidden"])
  parser.add_argument("--pretrain-epochs", type=int, default=defaults["pretrain_epochs"])
  parser.add_argument("--finetune-steps", type=int, default=defaults["finetune_steps"])
  parser.add_argument("--out", default="outputs/finetune_prior")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  config = Config(
    hidden=args.hidden,
    pretrain_epochs=args.pretrain_epochs,
    finetune_steps=args.finetune_steps,
  )
  original_train, original_test = load_mnist1d()
  shifted_train, shifted_val, shifted_test = few_shot_splits(args.shots, args.val)
  data = {
    "train": shifted_train,
    "val": shifted_val,
    "shifted_test": shifted_test,
    "original_test": original_test,
  }
  data = jax.tree.map(jnp.asarray, data)
  keys = jax.vmap(jax.random.key)(jnp.asarray(args.seeds))

  start = time.perf_counter()
  split_keys = jax.vmap(lambda key: jax.random.split(key, 3))(keys)
  pre_keys, eval_keys, tune_keys = (split_keys[:, i] for i in range(3))
  pretrained = pretrain(pre_keys, jax.tree.map(jnp.asarray, original_train), config=config)
  before = {
    name: jax.vmap(evaluate, (0, 0, 0, None, None))(
      eval_keys, *pretrained, data[name], config.eval_samples
    )
    for name in ("shifted_test", "original_test")
  }
  print(f"pretrained ({time.perf_counter() - start:.0f} s)")

  results = {"pretrained only": {name: _summary(value) for name, value in before.items()}}
  for variant in VARIANTS:
    deltas = [None] if variant == "posterior" else args.deltas
    runs = {}
    for delta in deltas:
      runs[delta] = jax.device_get(
        finetune(
          tune_keys,
          pretrained,
          0.0 if delta is None else delta,
          data,
          variant=variant,
          config=config,
        )
      )
      print(f"{variant} delta={delta}: val accuracy {np.mean(runs[delta]['val'][0]):.4f}")
    best = max(runs, key=lambda delta: np.mean(runs[delta]["val"][0]))
    results[variant] = {"delta": best}
    results[variant].update(
      {name: _summary(runs[best][name]) for name in ("shifted_test", "original_test")}
    )

  os.makedirs(args.out, exist_ok=True)
  summary = {
    "config": config._asdict(),
    "shift": SHIFT,
    "shots": args.shots,
    "seeds": args.seeds,
    "results": results,
  }
  with open(os.path.join(args.out, "finetune_prior.json"), "w") as file:
    json.dump(summary, file, indent=1)
  print_table(results)
  plot(results, os.path.join(args.out, "finetune_prior.png"))
  return summary


def _summary(accuracy_and_nll):
  """Per-seed values of accuracy and NLL, as lists."""
  accuracy, nll = (np.asarray(x).tolist() for x in accuracy_and_nll)
  return {"accuracy": accuracy, "nll": nll}


def _cell(values):
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def print_table(results):
  print(
    "\n| prior | delta | shifted test acc. | shifted test NLL "
    "| original test acc. | original test NLL |"
  )
  print("|---|---|---|---|---|---|")
  for name, result in results.items():
    delta = result.get("delta")
    cells = " | ".join(
      _cell(result[split][metric])
      for split in ("shifted_test", "original_test")
      for metric in ("accuracy", "nll")
    )
    print(f"| {name} | {'-' if delta is None else f'{delta:g}'} | {cells} |")


def plot(results, path):
  figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  names = list(results)
  for axis, split in zip(axes, ("shifted_test", "original_test"), strict=True):
    values = [results[name][split]["accuracy"] for name in names]
    axis.bar(
      range(len(names)), [np.mean(v) for v in values], yerr=[np.std(v) for v in values], capsize=3
    )
    axis.set_xticks(range(len(names)), names, rotation=15)
    axis.set_ylabel(f"{split.replace('_', ' ')} accuracy")
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


if __name__ == "__main__":
  main()
