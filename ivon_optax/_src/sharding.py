r"""Laying out IVON's state on a device mesh like its params.

IVON keeps two buffers per parameter, the momentum :math:`\bar g` and the
Hessian estimate :math:`h`, and samples a noise :math:`\sigma \odot \epsilon`
per parameter. On a mesh each of them should live where its parameter lives
(replicated, or sharded FSDP-style), so that the update and the sampling are
elementwise and local: no device ever gathers a whole buffer.

``tx.init(params)`` on params that already carry their shardings does this by
itself, and so does ``jax.jit(tx.init)`` under a mesh with explicit axes. Under
``jax.jit`` with automatic axes the buffers do not depend on the params' values,
so XLA has nothing to propagate a sharding from: pass
``out_shardings=state_sharding(...)``. :func:`check_state_sharding` verifies a
state against its params, e.g. after restoring a checkpoint.
"""

from typing import Any

import jax
import optax

from ivon_optax._src import trees as _trees


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


def _map_param_like(state: Any, params: Any, on_params, on_other):
  """Maps ``on_params`` over subtrees of ``state`` laid out like ``params``.

  A subtree is like the params when it has their tree structure and every leaf
  has its param's shape (masked positions, from ``optax.masked`` or
  ``optax.partition``, accept anything). ``on_params(subtree, path)`` returns
  the new subtree; every other leaf goes to ``on_other(leaf, path)``.
  """
  treedef = jax.tree.structure(params, is_leaf=_trees.is_masked)
  param_leaves = treedef.flatten_up_to(params)

  def is_param_like(node) -> bool:
    try:
      leaves = treedef.flatten_up_to(node)
    except (ValueError, TypeError):
      return False
    return all(
      _trees.is_masked(leaf)
      or _trees.is_masked(param)
      or getattr(leaf, "shape", None) == getattr(param, "shape", None)
      for leaf, param in zip(leaves, param_leaves)
    )

  def visit(path, node):
    if is_param_like(node):
      return on_params(node, path)
    if jax.tree_util.all_leaves([node]):
      return on_other(node, path)
    one_level = lambda child: child is not node and child is not None
    children = jax.tree_util.tree_flatten_with_path(node, is_leaf=one_level)[0]
    node_def = jax.tree.structure(node, is_leaf=one_level)
    return node_def.unflatten([visit(path + key, child) for key, child in children])

  return visit((), state)


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
    A pytree of :class:`jax.sharding.Sharding` like ``state``, usable as
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
  treedef = jax.tree.structure(params, is_leaf=_trees.is_masked)

  def like_params(node, path):
    del path
    leaves = treedef.flatten_up_to(node)
    return treedef.unflatten(
      [
        leaf if _trees.is_masked(leaf) else sharding
        for leaf, sharding in zip(leaves, treedef.flatten_up_to(shardings))
      ]
    )

  return _map_param_like(state, params, like_params, lambda node, path: replicated)


def check_state_sharding(state: optax.OptState, params: optax.Params) -> None:
  """Raises a ``ValueError`` unless each per-parameter buffer of ``state`` is sharded like its param.

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
      param's, with both shardings.
  """
  treedef = jax.tree.structure(params, is_leaf=_trees.is_masked)
  param_leaves = treedef.flatten_up_to(params)
  param_paths = [
    jax.tree_util.keystr(path)
    for path, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_trees.is_masked)[0]
  ]

  def check(node, path):
    for leaf, param, param_path in zip(treedef.flatten_up_to(node), param_leaves, param_paths):
      if _trees.is_masked(leaf) or _trees.is_masked(param):
        continue
      leaf_sharding, sharding = _param_sharding(leaf), _param_sharding(param)
      if not leaf_sharding.is_equivalent_to(sharding, param.ndim):
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
