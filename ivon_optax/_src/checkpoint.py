"""Restoring an IVON train state from an Orbax checkpoint, with errors that name the mismatch.

Saving needs nothing beyond Orbax:

```python
manager = ocp.CheckpointManager(
    directory, item_handlers=ocp.StandardCheckpointHandler(),
    options=ocp.CheckpointManagerOptions(max_to_keep=3))
manager.save(step, args=ocp.args.StandardSave(train_state))
```

where ``train_state`` holds the params, the whole optimizer state (IVON's step
count, momentum and Hessian, and any schedule's count) and the data loader's
position. Keep PRNG keys out of it: derive each step's key as
``jax.random.fold_in(base_key, step)``. [`restore`][ivon_optax.checkpoint.restore] reads the latest
complete step back into the layout (shapes, dtypes, shardings) of a target
state, e.g. one device after a run on eight, and first checks that the
checkpoint was written for the same model and optimizer.

Orbax is imported lazily: ``import ivon_optax`` does not need it.
"""

from typing import Any

import jax
import numpy as np

_MAX_LISTED = 10


def _key_name(entry) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _leaves_by_path(tree) -> dict:
  """``{normalized path: (readable path, leaf)}``; NamedTuple fields and dict keys alike."""
  return {
    tuple(_key_name(entry) for entry in path): (jax.tree_util.keystr(path), leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def structure_mismatches(saved: Any, target: Any) -> list[str]:
  """The differences between a checkpoint's metadata and a target state, one line each.

  Compares tree paths and array shapes, shortest paths first; dtypes may
  differ (Orbax casts on restore).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> saved = {"params": {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}}
    >>> target = {"params": {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}}
    >>> for line in structure_mismatches(saved, target): print(line)
    ['params']['b']: in the target but not in the checkpoint
    ['params']['w']: shape (3, 2) in the checkpoint, (3, 4) in the target

  Args:
    saved: the checkpoint's tree of array metadata (anything with ``.shape``
      leaves), e.g. ``manager.item_metadata(step).tree``.
    target: the state to restore into, concrete or abstract.

  Returns:
    A list of readable mismatches, empty when the two line up.
  """
  saved_leaves, target_leaves = _leaves_by_path(saved), _leaves_by_path(target)
  mismatches = []
  # Shorter paths first: a model's params come before the optimizer buffers
  # that mirror them, so the first lines name the layer that changed.
  for key in sorted(set(saved_leaves) | set(target_leaves), key=lambda key: (len(key), key)):
    if key not in saved_leaves:
      mismatches.append(f"{target_leaves[key][0]}: in the target but not in the checkpoint")
    elif key not in target_leaves:
      mismatches.append(f"{saved_leaves[key][0]}: in the checkpoint but not in the target")
    else:
      saved_shape = tuple(saved_leaves[key][1].shape)
      target_shape = tuple(np.shape(target_leaves[key][1]))
      if saved_shape != target_shape:
        mismatches.append(
          f"{target_leaves[key][0]}: shape {saved_shape} in the checkpoint, "
          f"{target_shape} in the target"
        )
  return mismatches


def _saved_metadata(manager, step: int):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  metadata = manager.item_metadata(step)
  if metadata is None:
    # A manager that has not yet saved or restored in this process does not
    # know the item's handler: read the metadata of its default item directly.
    step_path = ocp.step.find_step_path(
      manager.directory, ocp.step.standard_name_format(), step=step
    )
    metadata = ocp.StandardCheckpointHandler().metadata(step_path / "default")
  return getattr(metadata, "tree", metadata)


def restore(manager, target: Any, step: int | None = None) -> Any:
  """Restores a train state saved with ``ocp.args.StandardSave`` into ``target``'s layout.

  Only complete checkpoints are seen: Orbax writes each step to a temporary
  directory and renames it when done, so a save cut off by a crash is skipped
  and ``step=None`` gives the last step that finished.

  Examples:
    >>> import tempfile, jax.numpy as jnp, optax, orbax.checkpoint as ocp, ivon_optax
    >>> import ivon_optax.checkpoint
    >>> params = {"w": jnp.ones(3)}
    >>> tx = ivon_optax.ivon(0.1, ess=100.0)
    >>> state = {"params": params, "opt_state": tx.init(params)}
    >>> manager = ocp.CheckpointManager(tempfile.mkdtemp())
    >>> manager.save(0, args=ocp.args.StandardSave(state))
    True
    >>> manager.wait_until_finished()
    >>> restored = ivon_optax.checkpoint.restore(manager, state)
    >>> int(ivon_optax.find_ivon_state(restored["opt_state"]).count)
    0

  Args:
    manager: an ``orbax.checkpoint.CheckpointManager`` over the checkpoint
      directory.
    target: a train state of the same structure, concrete or abstract
      (``jax.ShapeDtypeStruct`` leaves); each array is restored with its
      target's dtype and sharding.
    step: the step to restore; by default the latest complete one.

  Returns:
    The restored train state, structured like ``target``.

  Raises:
    FileNotFoundError: if the directory holds no complete checkpoint.
    ValueError: if the checkpoint's tree paths or shapes differ from
      ``target``'s, listing each difference.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  if step is None:
    manager.reload()
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"No complete checkpoint in {manager.directory}: start from scratch, "
        "or point the CheckpointManager at the directory the run saved to."
      )
  mismatches = structure_mismatches(_saved_metadata(manager, step), target)
  if mismatches:
    listed = "\n  ".join(mismatches[:_MAX_LISTED])
    more = len(mismatches) - _MAX_LISTED
    raise ValueError(
      f"The checkpoint at step {step} in {manager.directory} was written for a "
      f"different model or optimizer than the target state:\n  {listed}"
      + (f"\n  ... and {more} more" if more > 0 else "")
      + "\nRestore with the model and optimizer (optax chain, wrappers, masks) "
      "that wrote the checkpoint."
    )
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
