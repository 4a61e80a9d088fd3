"""Tree ensembles as flat arrays, walked by the C module ``_treewalk`` or by the numpy reference.

One :class:`TreeBank` holds every tree of a forest or of a boosting model. Two walks
give the same bits (tested): :meth:`TreeBank.leaf_values` in numpy, the reference, and
``ml/serving/_treewalk.c``, the fast one used whenever it is built (the image and CI
always build it; a test fails in CI without it). Why a C walk, and its figures:
``docs/design.md``, "The compiled model and its C walk".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ml.serving.errors import UnsupportedModelError

try:  # the C tree walk (ml/serving/_treewalk.c), built by `pip install`
    from ml.serving import _treewalk
except ImportError:  # pragma: no cover - no C compiler at install: the numpy walk instead
    _treewalk = None

NODE_ARRAYS = ("feature", "threshold", "left", "right", "value", "starts")


class TreeBank:
    """Many binary trees in flat arrays, evaluated together level by level.

    Nodes of all trees are packed one after the other (trees sorted deepest first);
    ``left``/``right`` are absolute node indices and a leaf points at itself, so a
    finished tree stays put. For the numpy walk, packed node ``i`` owns *slots* ``2i``
    (go left) and ``2i + 1`` (go right), and ``child[slot]`` is the first slot of the
    next node: one level for every (tree, row) pair at once is
    ``s = child[s + (x[feature[s]] > threshold[s])]`` (``>`` is sklearn's right branch).

    Args:
        nodes: the :data:`NODE_ARRAYS` (``starts``: each tree's root).
        level_width: at level ``d``, how many trees (the first ones) still descend.
        float32: compare ``float32(x)`` with thresholds already rounded down to float32
            (sklearn forests), else float64 (boosting).
        n_in: width of the input rows.

    Raises:
        UnsupportedModelError: the arrays do not describe trees over ``n_in`` inputs.
    """

    # Break-even of the two single-row strategies: a pass over all nodes costs about as
    # much as one level walked the slot way per this many nodes.
    NODES_PER_LEVEL = 500
    # (tree, row) pairs walked together: beyond about this, the per-level arrays leave
    # the L2 cache and the time per row triples.
    CACHE_PAIRS = 65536

    def __init__(self, nodes: dict[str, np.ndarray], level_width: list[int], float32: bool,
                 n_in: int):
        feature, threshold, left, right, value, starts = (nodes[k] for k in NODE_ARRAYS)
        n = len(left)
        _check(all(len(a) == n for a in (feature, threshold, right, value)) and n > 0,
               "node arrays differ in length")
        _check(bool((feature >= 0).all() and (feature < n_in).all()),
               "a tree splits on a feature index outside the input")
        _check(bool(((left >= 0) & (left < n) & (right >= 0) & (right < n)).all()),
               "a child index points outside the nodes")
        _check(len(starts) > 0 and bool(((starts >= 0) & (starts < n)).all()),
               "a root index points outside the nodes")
        _check(list(level_width) == sorted(level_width, reverse=True)
               and all(0 < w <= len(starts) for w in level_width), "level widths are wrong")
        self.n_in = n_in
        self.float32 = bool(float32)
        self.n_trees = len(starts)
        self.level_width = [int(w) for w in level_width]
        self.node = tuple(np.ascontiguousarray(a)
                          for a in (feature, threshold, left, right, value, starts))
        self.feature = np.repeat(feature, 2)
        self.threshold = np.repeat(threshold, 2)
        self.child = np.stack([2 * left, 2 * right], axis=1).reshape(-1)
        self.value = np.repeat(value, 2)
        self.roots = 2 * starts
        # Single rows of small ensembles: one pass over every node picks each node's next
        # node, then each level is a single gather.
        self.single_row_by_node = n <= self.NODES_PER_LEVEL * len(self.level_width)
        self.native = self._pack()

    def state(self) -> dict[str, np.ndarray]:
        """The node arrays, as the constructor takes them (for the model file)."""
        return dict(zip(NODE_ARRAYS, self.node))

    def _pack(self) -> tuple[np.ndarray, ...] | None:
        """The nodes laid out as ``_treewalk.c`` reads them, with roots and depths."""
        if _treewalk is None:
            return None  # pragma: no cover - only without the extension
        feature, threshold, left, right, value, starts = self.node
        _check(len(left) < 2 ** 31, "too many tree nodes for the native walk")
        wide = not self.float32
        nodes = np.zeros(len(left), dtype=np.dtype(
            [("feature", "=i4")]
            + ([("unused", "=i4"), ("threshold", "=f8")] if wide else [("threshold", "=f4")])
            + [("left", "=i4"), ("right", "=i4")]))
        nodes["feature"], nodes["threshold"] = feature, threshold
        nodes["left"], nodes["right"] = left, right
        # Trees are sorted deepest first: tree k still descends at level d while
        # k < level_width[d].
        depths = (np.array(self.level_width)[:, None] > np.arange(self.n_trees)).sum(axis=0)
        return (nodes, np.ascontiguousarray(value, np.float64), starts.astype(np.int32),
                depths.astype(np.int32), wide)

    def sums(self, z: np.ndarray) -> np.ndarray:
        """Sum over the trees of the leaf value each row reaches, shape ``(n_rows,)``.

        The C walk when it is built, else the numpy reference; both add the trees in
        the same order, so they give the same bits.
        """
        if self.native is None:
            return self.leaf_values(z).sum(axis=0)
        nodes, values, roots, depths, wide = self.native
        x = np.ascontiguousarray(z, dtype=np.float64 if wide else np.float32)
        out = np.empty(len(x))
        _treewalk.sum_leaves(nodes, values, roots, depths, x, x.shape[1], out, wide)
        return out

    def leaf_values(self, z: np.ndarray) -> np.ndarray:
        """The numpy reference walk: leaf value reached in every tree, ``(n_trees, n_rows)``."""
        rows = max(1, self.CACHE_PAIRS // self.n_trees)
        if len(z) > rows:  # keep each level's (tree, row) arrays in the CPU cache
            return np.concatenate([self._leaf_values(z[i:i + rows])
                                   for i in range(0, len(z), rows)], axis=1)
        return self._leaf_values(z)

    def _leaf_values(self, z: np.ndarray) -> np.ndarray:
        if self.float32:
            # float32(x) <= floor32(t) exactly when float32(x) <= t: half the bytes moved.
            z = z.astype(np.float32)
        n_rows, width = z.shape
        x = np.ascontiguousarray(z).reshape(-1)
        slots = np.repeat(self.roots, n_rows)  # tree-major: (tree, row) at tree * n_rows + row
        if n_rows == 1 and self.single_row_by_node:
            feature, threshold, left, right, value, roots = self.node
            step = np.where(x[feature] > threshold, right, left)
            nodes = roots.copy()
            for w in self.level_width:
                nodes[:w] = step[nodes[:w]]
            return value[nodes].reshape(self.n_trees, 1)
        if n_rows == 1:
            for w in self.level_width:
                at = slots[:w]
                slots[:w] = self.child[at + (x[self.feature[at]] > self.threshold[at])]
        else:
            row_start = np.tile(np.arange(0, n_rows * width, width), self.n_trees)
            for w in self.level_width:
                w *= n_rows
                at = slots[:w]
                f = self.feature[at]
                f += row_start[:w]
                slots[:w] = self.child[at + (x[f] > self.threshold[at])]
        return self.value[slots].reshape(self.n_trees, n_rows)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError("malformed tree ensemble: " + message)


def native_walk() -> Any:
    """The C module, or ``None`` when it was not built (tests and benchmarks ask)."""
    return _treewalk
