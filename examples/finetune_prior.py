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

import data
import jax
import jax.numpy as jnp
import matplotlib
import models
import numpy as np

import ivon_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANTS = ("zero", "pretrained", "posterior")
TESTS = ("shifted_test", "original_test")
# The shifted task: MNIST-1D's generator with these arguments changed.
SHIFT = {"corr_noise_scale": 0.6, "shear_scale": 1.5, "scale_coeff": 0.6, "seed": 7}

# --- Data: MNIST-1D, generated locally ----------------------------------------------


def few_shot_splits(shots: int, num_val: int, seed: int = 0, num_samples: int | None = None):
  """``shots`` training and ``num_val`` validation examples of the shifted data; its test set.

  ``num_samples``: the shifted MNIST-1D's size (``None``: the standard 5000).
  """
  train, test = data.mnist1d_arrays(num_samples, **SHIFT)
  order = np.random.default_rng(seed).permutation(len(train.labels))
  pick = lambda index: data.Split(train.inputs[index], train.labels[index])
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
  return models.newton_ivon(config.learning_rate, steps, ess=ess, config=config, **prior_or_decay)


def train(key, tx, params, split, *, steps, batch_size):
  """``steps`` IVON steps of ``tx`` from ``params``; returns ``(params, opt_state)``."""
  return models.fit(key, tx, params, models.mean_nll, *split, steps=steps, batch_size=batch_size)


def evaluate(key, params, opt_state, split, num_samples):
  """Accuracy and mean NLL of the posterior predictive."""
  return models.predictive_scores(
    key, models.mlp_apply, params, opt_state, *split, num_samples=num_samples
  )


@functools.partial(jax.jit, static_argnums=4)
def evaluate_seeds(keys, params, opt_state, split, num_samples):
  """:func:`evaluate` per seed."""
  return jax.vmap(evaluate, (0, 0, 0, None, None))(keys, params, opt_state, split, num_samples)


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
def finetune(keys, pretrained, delta, splits, *, variant, config):
  """Fine-tunes each seed's pretrained model.

  Returns:
    ``({split: (accuracy, nll)}, diagnostics' key facts)``, per seed.
  """
  shots = splits["train"].labels.shape[0]
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
      train_key, tx, params, splits["train"], steps=config.finetune_steps, batch_size=batch_size
    )
    scores = {
      name: evaluate(eval_key, params, opt_state, split, config.eval_samples)
      for name, split in splits.items()
      if name != "train"
    }
    logs = ivon_optax.diagnostics(opt_state, params)
    return scores, {key: logs[key] for key in models.KEY_FACTS}

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


def compare(splits: dict, seeds, deltas, config: Config) -> dict:
  """Pretrains, then fine-tunes with every prior; ``delta`` picked by validation accuracy.

  Args:
    splits: ``data.Split`` s: ``original_train`` (pretraining), ``train`` and
      ``val`` (the shifted few shots), ``shifted_test`` and ``original_test``.
    seeds: one pretraining and fine-tuning run per seed.
    deltas: the candidate prior precisions of ``zero`` and ``pretrained``.
    config: the settings.

  Returns:
    ``{'pretrained only' or variant: {'delta', split: {'accuracy', 'nll'}, 'ivon_diagnostics'}}``.
  """
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  splits = jax.tree.map(jnp.asarray, splits)
  original_train = splits.pop("original_train")
  start = time.perf_counter()
  split_keys = jax.vmap(lambda key: jax.random.split(key, 3))(keys)
  pre_keys, eval_keys, tune_keys = (split_keys[:, i] for i in range(3))
  pretrained = pretrain(pre_keys, original_train, config=config)
  before = {
    name: evaluate_seeds(eval_keys, *pretrained, splits[name], config.eval_samples)
    for name in TESTS
  }
  print(f"pretrained ({time.perf_counter() - start:.0f} s)")
  logs = ivon_optax.diagnostics(pretrained[1], pretrained[0])
  results = {"pretrained only": {name: _summary(value) for name, value in before.items()}}
  results["pretrained only"]["ivon_diagnostics"] = _facts(logs)
  for variant in VARIANTS:
    runs = {}
    for delta in [None] if variant == "posterior" else deltas:
      runs[delta] = jax.device_get(
        finetune(
          tune_keys,
          pretrained,
          0.0 if delta is None else delta,
          splits,
          variant=variant,
          config=config,
        )
      )
      print(f"{variant} delta={delta}: val accuracy {np.mean(runs[delta][0]['val'][0]):.4f}")
    best = max(runs, key=lambda delta: np.mean(runs[delta][0]["val"][0]))
    scores, logs = runs[best]
    results[variant] = {"delta": best, **{name: _summary(scores[name]) for name in TESTS}}
    results[variant]["ivon_diagnostics"] = _facts(logs)
  return results


def main(argv=None):
  args = parse_args(argv)
  config = Config(
    hidden=args.hidden,
    pretrain_epochs=args.pretrain_epochs,
    finetune_steps=args.finetune_steps,
  )
  original_train, original_test = data.mnist1d_arrays()
  shifted_train, shifted_val, shifted_test = few_shot_splits(args.shots, args.val)
  splits = {
    "original_train": original_train,
    "train": shifted_train,
    "val": shifted_val,
    "shifted_test": shifted_test,
    "original_test": original_test,
  }
  results = compare(splits, args.seeds, args.deltas, config)
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
  print()
  for name, result in results.items():
    print(models.describe_facts(result["ivon_diagnostics"], f"IVON, {name},"))
  return summary


def _facts(logs):
  """Diagnostics' key facts per seed, as lists."""
  return {key: np.asarray(logs[key]).tolist() for key in models.KEY_FACTS}


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
