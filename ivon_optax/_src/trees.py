"""Pytree checks shared by the update and the sampler.

IVON may run inside ``optax.masked`` or ``optax.partition``, where the leaves it
does not manage are replaced by `optax.MaskedNode`. These helpers treat a
``MaskedNode`` as a leaf, so that a tree with masked positions still lines up
with the full tree of parameters, gradients or noise.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax


def is_masked(node: Any) -> bool:
  """Whether ``node`` stands for a leaf that IVON does not manage."""
  return isinstance(node, optax.MaskedNode)


def is_empty(tree: Any) -> bool:
  """Whether ``tree`` is ``()``, the placeholder of an absent per-parameter buffer."""
  return isinstance(tree, tuple) and not tree


def check_like_params(name: str, tree: Any, params: Any, fix: str, like: str = "`params`") -> None:
  """Raises a ``ValueError`` unless ``tree`` has the structure and shapes of ``params``.

  Positions that are masked in ``params`` accept anything (``optax.masked``
  forwards extra arguments unmasked).

  Args:
    name: the argument's name, for the message.
    tree: the tree to check.
    params: the reference tree (may contain ``MaskedNode`` leaves).
    fix: what the caller should pass instead, for the message.
    like: what ``params`` is, for the message.
  """
  treedef = jax.tree.structure(params, is_leaf=is_masked)
  try:
    leaves = treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as error:
    raise ValueError(
      f"`{name}` must have the same tree structure as {like}; got "
      f"{jax.tree.structure(tree)}, expected {treedef}. {fix}"
    ) from error
  paths = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)[0]
  for (path, param), leaf in zip(paths, leaves, strict=True):
    if is_masked(param) or is_masked(leaf):
      continue
    if jax.numpy.shape(leaf) != jax.numpy.shape(param):
      raise ValueError(
        f"`{name}` at {jax.tree_util.keystr(path)} has shape "
        f"{jax.numpy.shape(leaf)} but {like} has shape "
        f"{jax.numpy.shape(param)}. {fix}"
      )


def map_unmasked(fn, tree: Any, *rest: Any) -> Any:
  """``jax.tree.map(fn, tree, *rest)`` that keeps ``MaskedNode`` positions of ``tree``.

  ``rest`` may hold arrays, ``MaskedNode`` or ``None`` at the masked positions
  of ``tree``.
  """

  def apply(node, *others):
    return node if is_masked(node) else fn(node, *others)

  return jax.tree.map(apply, tree, *rest, is_leaf=is_masked)


def expand_masked(tree: Any, params: Any) -> Any:
  """``tree`` with each ``MaskedNode`` expanded to the subtree of ``params`` it stands for.

  ``optax.masked`` and ``optax.partition`` accept *prefix* masks and labels
  (``{"encoder": False}`` for a whole subtree); the state of the transform
  inside then holds one ``MaskedNode`` where the params hold a subtree. After
  this, ``tree`` lines up leaf for leaf with ``params``.

  Raises:
    ValueError: if ``tree`` is not ``params``' structure with some subtrees
      masked.
  """

  def expand(node, subtree):
    if is_masked(node):
      return jax.tree.map(lambda _: optax.MaskedNode(), subtree, is_leaf=is_masked)
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(subtree, is_leaf=is_masked)):
      raise ValueError(f"a leaf of the state lines up with a subtree {jax.tree.structure(subtree)}")
    return node

  try:
    return jax.tree.map(expand, tree, params, is_leaf=is_masked)
  except (ValueError, TypeError) as error:
    raise ValueError(
      f"The IVON state's buffers ({jax.tree.structure(tree, is_leaf=is_masked)}) do not "
      f"line up with `params` ({jax.tree.structure(params, is_leaf=is_masked)}). Pass the "
      "params this optimizer state was created for."
    ) from error


def unzip3(tree, like):
  """Three trees like ``like`` from a tree of 3-tuples at its unmasked leaves."""
  pick = lambda i: jax.tree.map(
    lambda node, out: node if is_masked(node) else out[i],
    like,
    tree,
    is_leaf=is_masked,
  )
  return pick(0), pick(1), pick(2)


def place_like_params(direction, hess, updates, params):
  """The step in each param's tree: zero for integer leaves, masked nodes kept."""

  def place(h, u, g, p):
    if is_masked(h):
      return g if is_masked(g) else jnp.zeros_like(p)
    return u

  return jax.tree.map(place, hess, direction, updates, params, is_leaf=is_masked)
