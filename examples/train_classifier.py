"""The main job: train one MLP classifier with SGD, AdamW and IVON, and compare them.

Every optimizer trains the same MLP with the same budget (epochs, warm-up and
cosine schedule) on the same seeds, all seeds at once, on the training split;
a fifth of the training pool is held out as a validation split. The table
gives test accuracy, NLL, ECE and Brier score, mean ± std over seeds; IVON is
scored at its mean weights and as the Bayesian model average of 64 posterior
samples. IVON is configured by ``ivon_optax.recipe(params, num_train=N,
num_steps=T, temper=k)``, and its diagnostics (how much of ``h`` the data set)
are printed. A second table gives every method after calibration fitted on the
validation split: temperature scaling for each, posterior scaling for IVON.
A reliability diagram and a JSON of every number are written to ``--out``.

    python examples/train_classifier.py                     # MNIST-1D, generated locally
    python examples/train_classifier.py --dataset digits    # scikit-learn's 8x8 digits

The hyperparameters were chosen on the validation split of MNIST-1D by
``examples/sweep_classifier.py`` (see docs/hyperparameters.md); digits uses
the same ones.
"""

import argparse
import dataclasses
import functools
import json
import os
import time

import data
import jax
import jax.numpy as jnp
import matplotlib
import models
import numpy as np

import ivon_optax

matplotlib.use("Agg")

Config = models.OptimizerConfig
# Chosen on MNIST-1D's validation split by examples/sweep_classifier.py: the
# lowest validation NLL + ECE (means over 3 seeds) among configurations whose
# half and double learning rates also train. IVON: ivon_optax.recipe with this
# temper sets ess, the weight decay, hess_init and beta2. Digits uses the same
# configurations (not tuned on digits).
MNIST1D_CONFIGS = models.CLASSIFIER_CONFIGS
CONFIGS = {"mnist1d": MNIST1D_CONFIGS, "digits": MNIST1D_CONFIGS}
# ivon()'s defaults (those of ivon-opt): ess = N, hess_init 1, beta2 0.99999, weight decay 1e-4;
# `--ivon-defaults` trains with them, to show a stuck posterior. At the recipe's learning rate 2
# they diverge (the learning rate must stay below 2 / (hess_init + weight_decay)); half trains.
IVON_DEFAULTS = Config("ivon", learning_rate=1.0, weight_decay=1e-4, hess_init=1.0, beta2=0.99999)
BASELINES = models.BASELINES
METRICS = {
  "accuracy": ("accuracy ↑", +1),
  "nll": ("NLL ↓", -1),
  "ece": ("ECE ↓", -1),
  "brier": ("Brier ↓", -1),
}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=("mnist1d", "digits"), default="mnist1d")
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--samples", type=int, default=64, help="posterior samples of IVON's average")
  parser.add_argument(
    "--num-train", type=int, default=None, help="default: the training pool less validation"
  )
  parser.add_argument(
    "--num-val", type=int, default=None, help="validation examples; default: a fifth of the pool"
  )
  parser.add_argument(
    "--optimizers", nargs="+", choices=models.OPTIMIZERS, default=list(models.OPTIMIZERS)
  )
  parser.add_argument(
    "--lr-scale", type=float, default=1.0, help="multiplies every learning rate (stability checks)"
  )
  parser.add_argument(
    "--ivon-defaults", action="store_true", help="IVON with ivon()'s defaults, not the recipe"
  )
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def format_table(table: dict, num_seeds: int) -> str:
  """``{method: {metric: [per seed]}}`` as a Markdown table of mean ± std over seeds."""
  lines = [
    "| method | " + " | ".join(label for label, _ in METRICS.values()) + " |",
    "|---" * (len(METRICS) + 1) + "|",
  ]
  for method, scores in table.items():
    cells = [f"{np.mean(scores[m]):.3f} ± {np.std(scores[m]):.3f}" for m in METRICS]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + f"\n\nMean ± std over {num_seeds} seeds."


def comparison(table: dict, ivon: str, baseline: str) -> str:
  """One line: what ``ivon`` gained or lost against ``baseline``, metric by metric (means)."""
  parts = []
  for metric, (label, sign) in METRICS.items():
    difference = np.mean(table[ivon][metric]) - np.mean(table[baseline][metric])
    verdict = "better" if sign * difference > 0 else "worse" if sign * difference < 0 else "equal"
    parts.append(f"{label.split()[0]} {difference:+.3f} ({verdict})")
  return f"{ivon} vs {baseline}: " + ", ".join(parts)


def plot_reliability(curves: dict, labels: np.ndarray, path: str, title: str, num_bins: int = 15):
  """Accuracy against confidence per bin, one line per method; marker size: the bin's share."""
  import matplotlib.pyplot as plt

  fig, (diagram, counts) = plt.subplots(
    2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
  )
  diagram.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
  labels = jnp.asarray(labels)
  for method, log_probs in curves.items():
    bins = jax.device_get(ivon_optax.metrics.calibration_bins(log_probs, labels, num_bins))
    ece = float(ivon_optax.metrics.expected_calibration_error(log_probs, labels, num_bins))
    filled = bins.count > 0
    (line,) = diagram.plot(
      bins.confidence[filled], bins.accuracy[filled], lw=1, label=f"{method} (ECE {ece:.3f})"
    )
    share = bins.count[filled] / len(labels)
    diagram.scatter(
      bins.confidence[filled], bins.accuracy[filled], s=4 + 200 * share, color=line.get_color()
    )
    centers = (np.arange(num_bins) + 0.5) / num_bins
    counts.step(centers, bins.count / len(labels), where="mid", color=line.get_color())
  diagram.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
  diagram.legend(loc="upper left", fontsize=8)
  counts.set(xlabel="confidence (top-class probability)", ylabel="fraction", yscale="log")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


DIAGNOSTICS = ("hess_data_share", "learned", "prior_dominant", "step_factor_max", "hess_init_left")


def load_splits(args) -> data.Dataset:
  """Train, validation (a fifth of the training pool by default) and test splits."""
  pool = len(data.load(args.dataset).train.labels)
  num_val = pool // 5 if args.num_val is None else args.num_val
  num_train = pool - num_val if args.num_train is None else args.num_train
  return data.load(args.dataset, num_train=num_train, num_val=num_val)


def prediction_keys(seeds, stream: int = models.PREDICT_STREAM) -> jax.Array:
  return jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), stream))(jnp.asarray(seeds))


@functools.partial(jax.jit, static_argnames=("model", "num_samples"))
def fit_posterior_scales(model, params, opt_state, keys, inputs, labels, *, num_samples: int):
  """Each run's posterior scale τ, the lowest validation NLL of its Bayesian average."""

  def one_run(run):
    params, opt_state, key = run
    apply = lambda p, x: model.apply({"params": p}, x)

    def predict_fn(tau):
      scaled = ivon_optax.calibration.scale_posterior(opt_state, tau)
      logits = ivon_optax.predict.sample_outputs(
        key, apply, scaled, params, inputs, num_samples=num_samples, batch_size=16
      )
      return ivon_optax.predict.predictive_log_probs(logits)

    return ivon_optax.calibration.fit_posterior_scale(predict_fn, labels).scale

  return jax.lax.map(one_run, (params, opt_state, keys))


@jax.jit
def temperature_scaled(val_log_probs, val_labels, test_log_probs):
  """Each run's test log probs at the temperature fitted on its validation log probs."""

  def one_run(val, test):
    temperature = ivon_optax.calibration.fit_temperature(val, val_labels)
    return ivon_optax.calibration.temperature_scale(test, temperature), temperature

  return jax.vmap(one_run)(val_log_probs, test_log_probs)


def ivon_hyperparameters(model, config, args, inputs) -> dict:
  """IVON's hyperparameters as ``models.train`` resolves them (recipe at the first seed's init)."""
  key = jax.random.fold_in(jax.random.key(args.seeds[0]), models.INIT_STREAM)
  params = model.init(key, jnp.asarray(inputs[:1]))["params"]
  num_steps = args.epochs * (len(inputs) // min(config.batch_size, len(inputs)))
  values = models.recipe_values(config, params, len(inputs), num_steps)
  return {k: float(values[k]) for k in ("ess", "weight_decay", "hess_init", "beta2")}


def print_diagnostics(diagnostics: dict) -> None:
  print(
    "IVON diagnostics (mean over seeds): "
    + ", ".join(f"{key} {np.mean(diagnostics[key]):.3g}" for key in DIAGNOSTICS)
  )


def main(argv=None) -> dict:
  args = parse_args(argv)
  dataset = load_splits(args)
  train, val, test = dataset.train, dataset.val, dataset.test
  configs = {
    name: dataclasses.replace(config, learning_rate=config.learning_rate * args.lr_scale)
    for name, config in CONFIGS[args.dataset].items()
    if name in args.optimizers
  }
  if args.ivon_defaults and "ivon" in configs:
    configs["ivon"] = dataclasses.replace(
      IVON_DEFAULTS, learning_rate=IVON_DEFAULTS.learning_rate * args.lr_scale
    )
  bayes = f"IVON (Bayes, {args.samples})"
  print(
    f"{args.dataset}: {len(train.labels)} train / {len(val.labels)} validation / "
    f"{len(test.labels)} test, MLP "
    f"{train.inputs.shape[1]}-{'-'.join(map(str, args.hidden))}-{dataset.num_classes}, "
    f"{args.epochs} epochs, warm-up + cosine, {len(args.seeds)} seeds {args.seeds}"
  )
  for name, config in configs.items():
    print(f"  {name:>5}: {config.describe()}")

  start = time.perf_counter()
  model = models.MLP(tuple(args.hidden), dataset.num_classes)
  log_probs, val_log_probs, train_loss, ivon_diagnostics, hyperparameters = {}, {}, {}, {}, {}
  scaled_bayes, posterior_scales, by_samples = {}, [], {}
  for name, config in configs.items():
    runs = models.train(
      model,
      config,
      train.inputs,
      train.labels,
      seeds=args.seeds,
      epochs=args.epochs,
      progress=not args.no_progress,
    )
    method = BASELINES.get(name, "IVON (mean)")
    for split, store in ((test, log_probs), (val, val_log_probs)):
      store[method] = jax.nn.log_softmax(models.predict_at_mean(model, runs.params, split.inputs))
    train_loss[name] = runs.losses[:, -1].tolist()
    if name == "ivon":
      val_log_probs[bayes] = models.bayes_log_probs(
        model, runs, args.seeds, val.inputs, args.samples
      )
      # The test samples' logits, kept to score the average of the first few too.
      logits = models.predict_samples(
        model,
        runs.params,
        runs.opt_state,
        prediction_keys(args.seeds),
        test.inputs,
        num_samples=args.samples,
      )
      log_probs[bayes] = jax.vmap(ivon_optax.predict.predictive_log_probs)(logits)
      for count in sorted({1, 4, 16, args.samples} & set(range(1, args.samples + 1))):
        average = jax.vmap(ivon_optax.predict.predictive_log_probs)(logits[:, :count])
        by_samples[count] = models.classification_metrics(average, test.labels)["nll"].tolist()
      # Whether h learned from the data or sat at hess_init: one dict per seed.
      logs = jax.vmap(ivon_optax.diagnostics)(runs.opt_state, runs.params)
      ivon_diagnostics = {key: np.asarray(value).tolist() for key, value in logs.items()}
      hyperparameters = ivon_hyperparameters(model, config, args, train.inputs)
      print("  IVON: " + ", ".join(f"{k} {v:.6g}" for k, v in hyperparameters.items()))
      # The posterior scale: fitted on validation with its own samples, then the test's.
      scales = fit_posterior_scales(
        model,
        runs.params,
        runs.opt_state,
        prediction_keys(args.seeds, models.PREDICT_STREAM - 1),
        jnp.asarray(val.inputs),
        jnp.asarray(val.labels),
        num_samples=args.samples,
      )
      posterior_scales = np.asarray(scales).tolist()
      scaled_state = jax.vmap(ivon_optax.calibration.scale_posterior)(runs.opt_state, scales)
      scaled_bayes = models.bayes_log_probs(
        model, runs._replace(opt_state=scaled_state), args.seeds, test.inputs, args.samples
      )
  calibrated, temperatures = {}, {}
  for method in log_probs:
    scaled, temperature = temperature_scaled(
      val_log_probs[method], jnp.asarray(val.labels), log_probs[method]
    )
    calibrated[f"{method} + temperature"] = scaled
    temperatures[method] = np.asarray(temperature).tolist()
  if posterior_scales:
    calibrated[f"{bayes} + posterior scale"] = scaled_bayes
  score = lambda lp: {
    m: v.tolist() for m, v in models.classification_metrics(lp, test.labels).items()
  }
  table = {method: score(lp) for method, lp in log_probs.items()}
  calibrated_table = {method: score(lp) for method, lp in calibrated.items()}
  seconds = time.perf_counter() - start
  print("\n" + format_table(table, len(args.seeds)) + "\n")
  lines = [
    comparison(table, ivon, baseline)
    for ivon in (bayes, "IVON (mean)")
    for baseline in BASELINES.values()
    if ivon in table and baseline in table
  ]
  print("\n".join(lines))
  if ivon_diagnostics:
    print_diagnostics(ivon_diagnostics)
  if by_samples:
    print(
      "IVON Bayes test NLL by the number of samples averaged: "
      + ", ".join(f"{k}: {np.mean(v):.3f} ± {np.std(v):.3f}" for k, v in by_samples.items())
    )
  print(
    "\nCalibrated on the validation split (temperature per run; IVON's posterior scale "
    f"{np.mean(posterior_scales) if posterior_scales else float('nan'):.2f} on average):\n"
  )
  print(format_table(calibrated_table, len(args.seeds)))
  print(f"\n({seconds:.0f} s)")

  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, f"reliability_{args.dataset}.png")
  # All seeds' test predictions pooled: steadier bins on a small test set.
  plot_reliability(
    {
      method: lp.reshape(-1, lp.shape[-1])
      for method, lp in log_probs.items()
      if bool(jnp.all(jnp.isfinite(lp)))  # a diverged run has no diagram
    },
    np.tile(test.labels, len(args.seeds)),
    png,
    f"{args.dataset} test set, {len(args.seeds)} seeds pooled",
  )
  result = {
    "args": vars(args),
    "configs": {name: config.describe() for name, config in configs.items()},
    "metrics": table,
    "calibrated_metrics": calibrated_table,
    "temperatures": temperatures,
    "posterior_scales": posterior_scales,
    "ivon_hyperparameters": hyperparameters,
    "bayes_nll_by_samples": by_samples,
    "final_train_loss": train_loss,
    "ivon_diagnostics": ivon_diagnostics,
    "comparisons": lines,
    "seconds": seconds,
    "reliability_diagram": png,
  }
  with open(os.path.join(args.out, f"results_{args.dataset}.json"), "w") as file:
    json.dump(result, file, indent=1)
  print(f"Reliability diagram: {png}")
  return result


if __name__ == "__main__":
  main()
