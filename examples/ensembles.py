"""Ensembles and calibration on MNIST-1D: every method before and after temperature scaling.

Methods: SGD, AdamW, IVON at its mean and as the Bayesian model average
(Bayes), MultiIVON (an equal-weight mixture of K IVON posteriors, the members'
samples pooled) and a deep ensemble of K AdamW runs. Every run of one
optimizer (seeds x members) trains at once, vmapped, with the main job's
configurations (``models.CLASSIFIER_CONFIGS``, chosen by
``sweep_classifier.py`` on this same validation split: a fifth of the training
pool). Each seed's K members differ in initialization, shuffles and IVON noise;
a single model is member 0 of its seed's ensemble.

Calibration, fitted on the validation split only, the same way for every
method: one logit temperature per run (``ivon_optax.calibration.fit_temperature``);
for IVON-Bayes and MultiIVON also the posterior scale tau (``sigma -> tau sigma``,
``fit_posterior_scale``). Test accuracy, NLL, ECE and Brier before and after,
and the AUROC of the predictive entropy of test inputs against noise (Gaussian,
the training inputs' per-feature mean and std) and against shuffled inputs
(each test input's features permuted). Mean ± std over seeds.

    python examples/ensembles.py                 # 3 seeds x 4 members, 40 epochs
    python examples/ensembles.py --timing        # cost of a K-member vmapped step
"""

import argparse
import dataclasses
import json
import os
import time

import data
import jax
import jax.numpy as jnp
import models
import numpy as np

import ivon_optax
import ivon_optax.calibration
import ivon_optax.ensemble

METRICS = {"accuracy": "accuracy ↑", "nll": "NLL ↓", "ece": "ECE ↓", "brier": "Brier ↓"}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--members", type=int, default=4, help="K, members per ensemble")
  parser.add_argument(
    "--samples",
    type=int,
    default=64,
    help="IVON-Bayes' samples; MultiIVON: as many, split over members",
  )
  parser.add_argument("--num-train", type=int, default=None, help="default: the pool less val")
  parser.add_argument("--timing", action="store_true", help="time a K-member step and exit")
  parser.add_argument("--out", default="outputs")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def out_of_distribution_sets(train_inputs, test_inputs, seed: int = 0) -> dict:
  """Inputs unlike MNIST-1D, as many as the test inputs."""
  rng = np.random.default_rng(seed)
  mean, std = train_inputs.mean(0), train_inputs.std(0)
  return {
    "noise": (mean + std * rng.normal(size=test_inputs.shape)).astype(np.float32),
    "shuffled": np.stack([row[rng.permutation(row.size)] for row in test_inputs]),
  }


# --- Predictions, as log probabilities (seeds, n, classes) ------------------------------


def by_seed(tree, num_seeds: int):
  """A tree stacked over seeds x members as (seeds, members, ...)."""
  return jax.tree.map(lambda leaf: leaf.reshape(num_seeds, -1, *leaf.shape[1:]), tree)


def mixture(log_probs: jax.Array, axis: int) -> jax.Array:
  """The equal-weight mixture of the distributions along ``axis``."""
  return jax.nn.logsumexp(log_probs, axis=axis) - jnp.log(log_probs.shape[axis])


def make_bayes_predictor(model, runs, num_seeds: int, num_samples: int, members: int):
  """``predict(inputs, taus) -> log probs (seeds, n, classes)`` of IVON (members=1) or MultiIVON.

  ``taus``: one posterior scale per seed. The keys are fixed, so that every tau
  and every input set sees the same weight noise.
  """
  params, states = by_seed(runs.params, num_seeds), by_seed(runs.opt_state, num_seeds)
  params, states = jax.tree.map(lambda leaf: leaf[:, :members], (params, states))
  keys = jax.random.split(jax.random.key(models.PREDICT_STREAM), num_seeds)
  apply = lambda p, x: model.apply({"params": p}, x)

  def predict_seed(seed, inputs, tau):
    seed_states, seed_params = jax.tree.map(lambda leaf: leaf[seed], (states, params))
    scaled = ivon_optax.calibration.scale_posterior(seed_states, tau)
    logits = ivon_optax.ensemble.sample_ensemble_outputs(
      keys[seed], apply, scaled, seed_params, inputs, num_samples=num_samples, batch_size=16
    )
    return ivon_optax.predict.predictive_log_probs(logits)

  @jax.jit
  def predict(inputs, taus):
    return jax.lax.map(lambda a: predict_seed(a[0], inputs, a[1]), (jnp.arange(num_seeds), taus))

  @jax.jit
  def fit_tau(seed, inputs, labels):
    fit = ivon_optax.calibration.fit_posterior_scale(
      lambda tau: predict_seed(seed, inputs, tau), labels
    )
    return fit.scale

  return predict, fit_tau


# --- Scores ----------------------------------------------------------------------------


def scores(log_probs: jax.Array, labels) -> dict:
  return {m: v.tolist() for m, v in models.classification_metrics(log_probs, labels).items()}


def ood_aurocs(log_probs: dict) -> dict:
  """AUROC of the predictive entropy, test inputs vs each other set: ``{set: [per seed]}``."""
  others = [name for name in log_probs if name not in ("test", "val")]
  return models.entropy_aurocs(log_probs, "test", others)


def calibrate(log_probs: dict, val_labels) -> tuple[dict, list]:
  """Every input set's log probs at each seed's temperature, fitted on ``log_probs['val']``."""
  labels = jnp.asarray(val_labels)
  temperatures = jax.vmap(lambda lp: ivon_optax.calibration.fit_temperature(lp, labels))(
    log_probs["val"]
  )
  scaled = {
    name: jax.vmap(ivon_optax.calibration.temperature_scale)(lp, temperatures)
    for name, lp in log_probs.items()
  }
  return scaled, np.asarray(temperatures).tolist()


def evaluate(log_probs: dict, dataset) -> dict:
  """Test metrics and OOD AUROCs before and after temperature scaling."""
  scaled, temperatures = calibrate(log_probs, dataset.val.labels)
  return {
    "before": scores(log_probs["test"], dataset.test.labels),
    "after": scores(scaled["test"], dataset.test.labels),
    "temperature": temperatures,
    "ood_before": ood_aurocs(log_probs),
    "ood_after": ood_aurocs(scaled),
  }


def cell(values) -> str:
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def format_tables(results: dict, num_seeds: int) -> str:
  metric_names = list(METRICS)
  header = " | ".join(f"{METRICS[m]} before / after T" for m in metric_names)
  lines = [f"| method | {header} | T |", "|---" * (len(metric_names) + 2) + "|"]
  for method, r in results.items():
    cells = [f"{cell(r['before'][m])} / {cell(r['after'][m])}" for m in metric_names]
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {cell(r['temperature'])} |")
  sets = list(next(iter(results.values()))["ood_before"])
  lines += [
    "",
    "| method | " + " | ".join(f"AUROC {s} before / after T" for s in sets) + " |",
    "|---" * (len(sets) + 1) + "|",
  ]
  for method, r in results.items():
    cells = [f"{cell(r['ood_before'][s])} / {cell(r['ood_after'][s])}" for s in sets]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + f"\n\nTest set; mean ± std over {num_seeds} seeds."


# --- The cost of a K-member vmapped step --------------------------------------------------


def step_cost(model, config, inputs, labels, members: int, repeats: int = 20) -> dict:
  """Time and compiled memory of one IVON step: K members vmapped vs one member (run K times)."""
  tx = models.make_optimizer(
    "ivon",
    config.values(),
    ess=float(len(labels)),
    schedule="constant",
    total_steps=1,
    warmup_steps=0,
  )
  x, y = jnp.asarray(inputs[: config.batch_size]), jnp.asarray(labels[: config.batch_size])

  loss_fn = lambda p: models.cross_entropy(model.apply({"params": p}, x), y)
  train_step = models.train_step(tx, loss_fn)

  def step(params, state, key):
    return train_step(key, params, state)[:2]

  keys = jax.random.split(jax.random.key(0), members)
  params = jax.vmap(lambda k: model.init(k, x[:1])["params"])(keys)
  states = jax.vmap(tx.init)(params)
  one = models.select((params, states), 0)
  single = jax.jit(step).lower(*one, keys[0]).compile()
  vmapped = jax.jit(jax.vmap(step)).lower(params, states, keys).compile()

  def seconds(run):
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(run())
      times.append(time.perf_counter() - start)
    return float(np.median(times))

  def memory(compiled):
    analysis = compiled.memory_analysis()
    if analysis is None:
      return None
    return int(
      analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    )

  separate = seconds(lambda: [single(*one, keys[0]) for _ in range(members)])
  together = seconds(lambda: vmapped(params, states, keys))
  return {
    "members": members,
    "batch_size": config.batch_size,
    "seconds_separate": separate,
    "seconds_vmapped": together,
    "bytes_one_member": memory(single),
    "bytes_vmapped": memory(vmapped),
  }


# --- Main --------------------------------------------------------------------------------


def compare(dataset, *, hidden, seeds, members, epochs, samples, progress=False) -> tuple:
  """Trains and scores every method; returns ``(results, IVON's runs)``.

  Args:
    dataset: a ``data.Dataset`` with train, validation and test splits.
    hidden: the MLP's hidden widths.
    seeds: the seeds; each has ``members`` runs of AdamW and IVON.
    members: K, members per ensemble.
    epochs: training epochs.
    samples: IVON-Bayes' weight samples; MultiIVON splits as many over its members.
    progress: show tqdm bars.
  """
  train, val, test = dataset.train, dataset.val, dataset.test
  configs = models.CLASSIFIER_CONFIGS
  model = models.MLP(tuple(hidden), dataset.num_classes)
  K, num_seeds = members, len(seeds)
  inputs = {
    "val": val.inputs,
    "test": test.inputs,
    **out_of_distribution_sets(train.inputs, test.inputs),
  }
  # Run seed s*1000 + k is member k of seed s's ensemble; member 0 is the single model.
  run_seeds = [1000 * s + k for s in seeds for k in range(K)]
  trained = {}
  for name in ("sgd", "adamw", "ivon"):
    trained[name] = models.train(
      model,
      configs[name],
      train.inputs,
      train.labels,
      seeds=[1000 * s for s in seeds] if name == "sgd" else run_seeds,
      epochs=epochs,
      progress=progress,
    )

  log_probs = {}  # {method: {input set: (seeds, n, classes)}}

  def at_mean(runs):
    return {
      s: by_seed(jax.nn.log_softmax(models.predict_at_mean(model, runs.params, x)), num_seeds)
      for s, x in inputs.items()
    }

  log_probs["SGD"] = {s: lp[:, 0] for s, lp in at_mean(trained["sgd"]).items()}
  adamw = at_mean(trained["adamw"])
  log_probs["AdamW"] = {s: lp[:, 0] for s, lp in adamw.items()}
  log_probs[f"Deep ensemble (AdamW, K={K})"] = {s: mixture(lp, 1) for s, lp in adamw.items()}
  log_probs["IVON (mean)"] = {s: lp[:, 0] for s, lp in at_mean(trained["ivon"]).items()}
  bayes = f"IVON (Bayes, {samples})"
  per_member = max(samples // K, 1)  # the same number of forward passes as IVON-Bayes
  multi = f"MultiIVON (K={K}, {per_member} each)"
  predictors = {
    bayes: make_bayes_predictor(model, trained["ivon"], num_seeds, samples, 1),
    multi: make_bayes_predictor(model, trained["ivon"], num_seeds, per_member, K),
  }
  ones = jnp.ones(num_seeds)
  for method, (predict, _) in predictors.items():
    log_probs[method] = {s: predict(x, ones) for s, x in inputs.items()}

  results = {method: evaluate(lp, dataset) for method, lp in log_probs.items()}
  # The variational analogue: the posterior scale tau, fitted on the validation split.
  taus = {}
  for method, (predict, fit_tau) in predictors.items():
    tau = jnp.stack([fit_tau(seed, val.inputs, val.labels) for seed in range(num_seeds)])
    taus[method] = np.asarray(tau)
    scaled = {s: predict(x, tau) for s, x in inputs.items()}
    results[method]["posterior_scale"] = taus[method].tolist()
    results[method]["after_tau"] = scores(scaled["test"], test.labels)
    results[method]["ood_after_tau"] = ood_aurocs(scaled)
  return results, trained["ivon"]


def main(argv=None) -> dict:
  args = parse_args(argv)
  pool = 4000
  num_val = pool // 5  # the sweep's validation split
  num_train = pool - num_val if args.num_train is None else args.num_train
  dataset = data.mnist1d(num_train=num_train, num_val=num_val)
  configs = models.CLASSIFIER_CONFIGS
  K, num_seeds = args.members, len(args.seeds)

  if args.timing:
    model = models.MLP(tuple(args.hidden), dataset.num_classes)
    cost = step_cost(model, configs["ivon"], dataset.train.inputs, dataset.train.labels, K)
    print(json.dumps(cost, indent=1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ensemble_step_cost.json"), "w") as file:
      json.dump(cost, file, indent=1)
    return cost

  print(
    f"mnist1d: {len(dataset.train.labels)} train / {len(dataset.val.labels)} val / "
    f"{len(dataset.test.labels)} test; {num_seeds} seeds x {K} members, {args.epochs} epochs"
  )
  start = time.perf_counter()
  results, ivon_runs = compare(
    dataset,
    hidden=args.hidden,
    seeds=args.seeds,
    members=K,
    epochs=args.epochs,
    samples=args.samples,
    progress=not args.no_progress,
  )
  predictors = [method for method in results if "posterior_scale" in results[method]]
  seconds = time.perf_counter() - start

  print("\n" + format_tables(results, num_seeds) + "\n")
  print("Posterior scale tau fitted on the validation split (sigma -> tau sigma):\n")
  print("| method | tau | " + " | ".join(METRICS.values()) + " |")
  print("|---" * (len(METRICS) + 2) + "|")
  for method in predictors:
    r = results[method]
    cells = " | ".join(cell(r["after_tau"][m]) for m in METRICS)
    print(f"| {method} | {cell(r['posterior_scale'])} | {cells} |")
  print(f"\n({seconds:.0f} s)")
  diagnostics = models.report_diagnostics(ivon_runs.opt_state, ivon_runs.params)

  os.makedirs(args.out, exist_ok=True)
  summary = {
    "args": vars(args),
    "configs": {name: dataclasses.asdict(config) for name, config in configs.items()},
    "results": results,
    "ivon_diagnostics": diagnostics,
    "seconds": seconds,
  }
  with open(os.path.join(args.out, "ensembles.json"), "w") as file:
    json.dump(summary, file, indent=1)
  return summary


if __name__ == "__main__":
  main()
