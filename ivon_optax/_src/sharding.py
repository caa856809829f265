r"""Laying out IVON's state on a device mesh like its params.

IVON keeps two buffers per parameter, the momentum $\bar g$ and the
Hessian estimate $h$, and samples a noise $\sigma \odot \epsilon$
per parameter. On a mesh each of them should live where its parameter lives
(replicated, or sharded FSDP-style), so that the update and the sampling are
elementwise and local: no device ever gathers a whole buffer.

``tx.init(params)`` on params that already carry their shardings does this by
itself, and so does ``jax.jit(tx.init)`` under a mesh with explicit axes. Under
``jax.jit`` with automatic axes the buffers do not depend on the params' values,
so XLA has nothing to propagate a sharding from: pass
``out_shardings=state_sharding(...)``.
[`check_state_sharding`][ivon_optax.sharding.check_state_sharding] verifies a state against its
params, e.g. after restoring a checkpoint.
"""

from typing import Any

import jax
import optax

from ivon_optax._src import trees as _trees
from ivon_optax._src.algorithm import IVONState


def _param_sharding(param: Any) -> jax.sharding.Sharding:
  sharding = getattr(param, "sharding", None)
  if not isinstance(sharding, jax.sharding.Sharding):
    raise TypeError(
      "Each leaf of `params` must carry a sharding: pass jax.Arrays placed "
      "with jax.device_put(params, shardings), or jax.ShapeDtypeStruct(shape, "
      f"dtype, sharding=...); got {type(param).__name__}."
    )
  return sharding


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  """A sharding that holds a full copy on every device of ``sharding``."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return sharding
  raise TypeError(
    "state_sharding needs params placed with a jax.sharding.NamedSharding (or "
    f"on a single device); got {type(sharding).__name__}."
  )


def _param_like_leaves(node: Any, params: Any) -> list | None:
  """``[(path, leaf, param)]`` for the arrays of ``node`` if it is laid out like ``params``.

  ``None`` if it is not.

  A subtree is like the params when it has their tree structure, up to
  ``MaskedNode`` s standing for masked leaves or, with the prefix masks of
  ``optax.masked`` / ``optax.partition``, for whole masked subtrees, and every
  other leaf has its param's shape.
  """
  treedef = jax.tree.structure(node, is_leaf=_trees.is_masked)
  try:
    param_nodes = treedef.flatten_up_to(params)
  except (ValueError, TypeError):
    return None
  found = []
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(node, is_leaf=_trees.is_masked)[0]
  for (path, leaf), param in zip(paths_and_leaves, param_nodes, strict=True):
    if _trees.is_masked(leaf) or _trees.is_masked(param):
      continue
    is_leaf = jax.tree_util.treedef_is_leaf(jax.tree.structure(param, is_leaf=_trees.is_masked))
    if not is_leaf or getattr(leaf, "shape", None) != getattr(param, "shape", None):
      return None
    found.append((path, leaf, param))
  return found


def _map_param_like(state: Any, params: Any, on_params, on_other):
  """Maps ``on_params`` over subtrees of ``state`` laid out like ``params``.

  ``on_params(subtree, path, leaves)`` gets the arrays of the subtree as
  `_param_like_leaves` lists them and returns the new subtree; every
  other leaf goes to ``on_other(leaf, path)``.
  """
  _check_ivon_buffers(state, params)

  def visit(path, node):
    leaves = _param_like_leaves(node, params)
    if leaves is not None:
      return on_params(node, path, leaves)
    if jax.tree_util.all_leaves([node]):
      return on_other(node, path)
    one_level = lambda child: child is not node and child is not None
    children = jax.tree_util.tree_flatten_with_path(node, is_leaf=one_level)[0]
    node_def = jax.tree.structure(node, is_leaf=one_level)
    return node_def.unflatten([visit(path + key, child) for key, child in children])

  return visit((), state)


def _check_ivon_buffers(state: Any, params: Any) -> None:
  """Raises a ``ValueError`` if an IVON state in ``state`` was made for other params."""
  is_ivon = lambda node: isinstance(node, IVONState)
  for node in jax.tree.leaves(state, is_leaf=is_ivon):
    if is_ivon(node) and _param_like_leaves(node.hess, params) is None:
      raise ValueError(
        "The IVON state's buffers are not laid out like `params` (tree "
        f"{jax.tree.structure(node.hess, is_leaf=_trees.is_masked)} vs "
        f"{jax.tree.structure(params, is_leaf=_trees.is_masked)}, or other "
        "shapes): pass the params this optimizer state was created for."
      )


def state_sharding(state: optax.OptState, params: optax.Params) -> Any:
  """Shardings for ``state`` that lay out every per-parameter buffer like its param.

  Every subtree of ``state`` with the structure and shapes of ``params`` (IVON's
  momentum and Hessian, the accumulators of ``optax.MultiSteps``, ...) gets the
  params' shardings; every other leaf (step counts, ``ess``, per-leaf weight
  decays, injected hyperparameters) is replicated over the params' mesh.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("fsdp",))
    >>> params = jax.device_put({"w": jnp.ones((4, 2))}, NamedSharding(mesh, P("fsdp")))
    >>> tx = ivon_optax.ivon(0.1, ess=100.0)
    >>> shardings = ivon_optax.sharding.state_sharding(jax.eval_shape(tx.init, params), params)
    >>> shardings[0].hess["w"].spec, shardings[0].count.spec
    (P('fsdp',), P())
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)

  Args:
    state: an optax state, or its abstract version from
      ``jax.eval_shape(tx.init, params)``.
    params: the params, each leaf carrying its sharding: ``jax.Array`` s placed
      with ``jax.device_put``, or ``jax.ShapeDtypeStruct(..., sharding=...)``.

  Returns:
    A pytree of `jax.sharding.Sharding` like ``state``, usable as
    ``out_shardings`` of ``jax.jit(tx.init)`` or as the target of
    ``jax.device_put(state, ...)``.
  """
  shardings = jax.tree.map(
    lambda p: p if _trees.is_masked(p) else _param_sharding(p), params, is_leaf=_trees.is_masked
  )
  sharding_leaves = [
    leaf
    for leaf in jax.tree.leaves(shardings, is_leaf=_trees.is_masked)
    if not _trees.is_masked(leaf)
  ]
  if not sharding_leaves:
    raise ValueError("`params` holds no arrays to take shardings from.")
  replicated = _replicated(sharding_leaves[0])

  def like_params(node, path, leaves):
    del path, leaves
    return jax.tree.map(
      lambda leaf, param: leaf if _trees.is_masked(leaf) else _param_sharding(param),
      node,
      params,
      is_leaf=_trees.is_masked,
    )

  return _map_param_like(state, params, like_params, lambda node, path: replicated)


def check_state_sharding(state: optax.OptState, params: optax.Params) -> None:
  """Raises a ``ValueError`` unless each per-parameter buffer of ``state`` is placed like its param.

  A buffer sharded differently from its param makes every update reshard it
  (a hidden all-gather or all-to-all each step) or, with FSDP, keeps a whole
  copy on every device. Call this on concrete arrays, e.g. after
  ``tx.init`` or after restoring a checkpoint.

  Examples:
    >>> import jax, jax.numpy as jnp, ivon_optax
    >>> params = {"w": jnp.ones(3)}
    >>> state = ivon_optax.ivon(0.1, ess=100.0).init(params)
    >>> ivon_optax.sharding.check_state_sharding(state, params)  # no error: laid out alike

  Args:
    state: an optax state of concrete ``jax.Array`` s.
    params: the params it was created for, as ``jax.Array`` s.

  Raises:
    ValueError: naming the first state leaf whose sharding differs from its
      param's, with both shardings; or if the IVON state was made for other
      params.
  """

  def check(node, path, leaves):
    for leaf_path, leaf, param in leaves:
      leaf_sharding, sharding = _param_sharding(leaf), _param_sharding(param)
      if not leaf_sharding.is_equivalent_to(sharding, param.ndim):
        param_path = jax.tree_util.keystr(leaf_path)
        raise ValueError(
          f"The optimizer state at {jax.tree_util.keystr(path)}{param_path} is "
          f"sharded as {_describe(leaf_sharding)}, but its param {param_path} is "
          f"sharded as {_describe(sharding)}. Create the state from the placed "
          "params (tx.init(params)), or place it with jax.device_put(state, "
          "ivon_optax.sharding.state_sharding(state, params))."
        )
    return node

  _map_param_like(state, params, check, lambda node, path: node)


def _describe(sharding: jax.sharding.Sharding) -> str:
  if isinstance(sharding, jax.sharding.NamedSharding):
    return f"{sharding.spec} over mesh {dict(sharding.mesh.shape)}"
  return repr(sharding)
