"""Per-request fast path: the fitted sklearn model compiled into numpy arrays.

``model.predict_proba(one_row_frame)`` costs about a millisecond, almost all of it pandas
and input checking. :func:`compile_model` reads the fitted objects once and keeps only
the numbers they use, so scoring a validated record is a few numpy calls and gives the
same P(default) as ``model.predict_proba(frame)[:, 1]`` to within floating-point
rounding (|Δ| ≤ 1e-9 is tested on every row of the German data, for every family).

What is compiled, and how sklearn 1.9 computes it (this module replicates each step):

* ``ColumnTransformer`` (``remainder="drop"``): numeric branches ``SimpleImputer`` →
  optional ``StandardScaler`` (fill NaN with ``statistics_``, then ``(x - mean_) / scale_``);
  categorical branches ``SimpleImputer`` → ``OneHotEncoder(handle_unknown="ignore")``
  (missing → the imputer's fill value, which is a category; unknown → all zeros).
* ``LogisticRegression``: ``expit(z @ coef + intercept)``.
* ``RandomForestClassifier`` / ``ExtraTreesClassifier``: the input is cast to float32
  before the ``x <= threshold`` tests (as ``_validate_X_predict`` does), each leaf's
  ``value`` already holds class fractions, P = mean over trees.
* ``HistGradientBoostingClassifier`` (numeric splits only): float64 ``x <= num_threshold``
  tests, raw = ``_baseline_prediction`` + sum of leaf values, P = ``expit(raw)``.
* ``CalibratedClassifierCV`` (sigmoid or isotonic, any ``ensemble``): each calibrated
  classifier feeds its pipeline's ``decision_function`` if it has one, else
  ``predict_proba[:, 1]``, to the calibrator (``expit(-(a t + b))``, or ``np.interp`` on
  ``t`` clipped to ``[X_min_, X_max_]``, which is what ``interp1d`` delegates to for
  float64), values in ``(1, 1 + 1e-5]`` are set to 1, and the classifiers are averaged.
* ``VotingClassifier(voting="soft")`` without weights (the trainer's blend): the mean of
  its pipelines' P(default), summed in order as ``np.average`` does. Its members are
  averaged exactly like calibrated classifiers, so reason codes need nothing new.

All trees of an ensemble are packed into flat arrays. When the C extension
``ml/serving/_treewalk.c`` is built (``pip install -e .`` compiles it; it is optional), each row
walks every tree in C: about 2.5 µs per row of a 300-tree forest, for one request, its
what-if rows and the batch scorer alike (whose threads walk in parallel: large walks
release the GIL; a request's small ones keep it). Without it, the trees are
walked in numpy level by level for the whole batch at once (trees sorted by depth, so
each level only touches trees that are still descending), with no Python loop per tree
or per row; both walks add the trees in the same order and give the same bits (tested).
Without the extension, when the model was compiled in this process (the batch scorer),
batches of :data:`LARGE_BATCH` rows or more of a random forest go through sklearn's own
compiled tree walk instead, tree by tree.

Inputs come in a *raw* matrix, one float64 column per model input feature in
:attr:`FastModel.features` order: numbers as they are (NaN = missing); categories as
their index in :attr:`FastModel.vocabulary` (NaN = missing, -1 = unknown code).
Anything this module does not know how to replicate exactly raises
:class:`UnsupportedModelError` at compile time rather than mispredicting.

A compiled model holds numpy arrays and plain Python values only, and this module
imports sklearn (to read fitted objects) and pandas (for frames) only when a function
needs them. The trainer pickles the compiled model next to the sklearn one, so the API
scores without ever importing sklearn, scipy or pandas (see
:func:`ml.serving.artifact.load_serving`).
"""
from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.serving.artifact import ArtifactError

try:  # the C tree walk (ml/serving/_treewalk.c), built by `pip install`; optional
    from ml.serving import _treewalk
except ImportError:  # pragma: no cover - no C compiler at install: numpy walks instead
    _treewalk = None

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from sklearn.impute import SimpleImputer

FORMAT = 2
"""Version of the compiled objects' layout, recorded in the model card next to the pickle:
bump it whenever a change here would misread an older pickle, and servers fall back to
compiling the sklearn model of an artifact written with another layout."""

UNKNOWN = -1.0
"""Raw value of a category code the encoder has never heard of (one-hot row of zeros)."""

LARGE_BATCH = 256
"""Without the C walk: from this many encoded rows on, a random forest's trees are
walked by sklearn's own compiled ``Tree.apply``, one call per tree, on the encoded matrix
(still no pandas, and none of ``predict_proba``'s ~30 ms joblib dispatch): the loop's
~3 ms is then repaid by a per-row cost 3x below the numpy walk's. Below it the numpy
walk wins (measured on the trained forest: 0.6 ms against 3.4 ms for 19 rows, 29
against 17 ms for 1,000)."""


class UnsupportedModelError(ArtifactError):
    """The model is not one the fast path can reproduce exactly."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError("fast path cannot compile this model: " + message)


@functools.cache
def _sk() -> SimpleNamespace:
    """The sklearn classes that compiling reads, imported on the first compile only.

    Scoring never needs them: a server that loads a pickled :class:`FastModel` (see
    :func:`ml.serving.artifact.load_serving`) imports numpy, not sklearn, scipy or pandas.
    """
    from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (ExtraTreesClassifier, HistGradientBoostingClassifier,
                                  RandomForestClassifier, VotingClassifier)
    from sklearn.impute import SimpleImputer
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return SimpleNamespace(
        CalibratedClassifierCV=CalibratedClassifierCV, ColumnTransformer=ColumnTransformer,
        ExtraTreesClassifier=ExtraTreesClassifier, IsotonicRegression=IsotonicRegression,
        HistGradientBoostingClassifier=HistGradientBoostingClassifier, Pipeline=Pipeline,
        LogisticRegression=LogisticRegression, OneHotEncoder=OneHotEncoder,
        RandomForestClassifier=RandomForestClassifier, SimpleImputer=SimpleImputer,
        StandardScaler=StandardScaler, VotingClassifier=VotingClassifier,
        _SigmoidCalibration=_SigmoidCalibration)


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic function, as ``scipy.special.expit`` computes it for float64."""
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -709 gives exactly 0.0
        return 1.0 / (1.0 + np.exp(-x))


def _is_missing(value: Any) -> bool:
    """``None`` or a float NaN: what the imputers treat as missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------- encoder


class _NumericBranch:
    """``SimpleImputer`` then an optional ``StandardScaler`` over some numeric columns."""

    def __init__(self, name: str, steps: list[Any], columns: list[str], out: slice):
        _require(len(steps) in (1, 2) and isinstance(steps[0], _sk().SimpleImputer)
                 and (len(steps) == 1 or isinstance(steps[1], _sk().StandardScaler)),
                 f"branch {name!r} must be SimpleImputer [→ StandardScaler], got {steps}")
        _check_imputer(steps[0], name)
        try:
            self.fill = np.asarray(steps[0].statistics_, dtype=np.float64)
        except (TypeError, ValueError):
            self.fill = np.full(len(columns), np.nan)
        _require(self.fill.shape == (len(columns),) and bool(np.isfinite(self.fill).all()),
                 f"branch {name!r}: imputer has empty or non-numeric statistics")
        _require(out.stop - out.start == len(columns), f"branch {name!r}: output width differs")
        self.columns = columns
        self.out = np.arange(out.start, out.stop)
        # Subtracting 0.0 and dividing by 1.0 are exact, so absent steps cost nothing.
        self.mean = np.zeros(len(columns))
        self.scale = np.ones(len(columns))
        if len(steps) == 2 and steps[1].with_mean:
            self.mean = np.asarray(steps[1].mean_, dtype=np.float64)
        if len(steps) == 2 and steps[1].with_std:
            self.scale = np.asarray(steps[1].scale_, dtype=np.float64)


class _CategoricalBranch:
    """``SimpleImputer`` then ``OneHotEncoder(handle_unknown="ignore")``."""

    def __init__(self, name: str, steps: list[Any], columns: list[str], out: slice):
        _require(len(steps) == 2 and isinstance(steps[0], _sk().SimpleImputer)
                 and isinstance(steps[1], _sk().OneHotEncoder),
                 f"branch {name!r} must be SimpleImputer → OneHotEncoder, got {steps}")
        imputer, onehot = steps
        _check_imputer(imputer, name)
        _require(onehot.handle_unknown == "ignore",
                 f"branch {name!r}: OneHotEncoder must use handle_unknown='ignore'")
        _require(getattr(onehot, "drop_idx_", None) is None, f"branch {name!r}: drop= is set")
        _require(not getattr(onehot, "_infrequent_enabled", False),
                 f"branch {name!r}: infrequent categories are enabled")
        for cats in onehot.categories_:
            _require(all(isinstance(c, str) for c in cats),
                     f"branch {name!r}: categories must be strings")
        self.columns = columns
        self.vocab = [tuple(cats) for cats in onehot.categories_]
        sizes = [len(v) for v in self.vocab]
        _require(sum(sizes) == out.stop - out.start, f"branch {name!r}: output width differs")
        self.offset = out.start + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        # A missing value becomes the imputer's fill value, itself looked up like any code.
        self.fill = [v.index(f) if f in v else None
                     for v, f in zip(self.vocab, imputer.statistics_)]


def _check_imputer(imputer: SimpleImputer, name: str) -> None:
    _require(not imputer.add_indicator, f"branch {name!r}: imputer add_indicator=True")
    mv = imputer.missing_values
    _require(isinstance(mv, float) and math.isnan(mv),
             f"branch {name!r}: imputer missing_values must be NaN")


class _Encoder:
    """A fitted ``ColumnTransformer`` as arrays: raw matrix → the estimator's input.

    All branches are merged into one numeric and one categorical block, so encoding is a
    fixed dozen numpy calls. One-hot columns come from a table indexed by
    ``(feature, raw value + 2)``; missing (-2 after NaN replacement) maps to the fill
    value's column and unknown (-1) to a spare column past the end, which no estimator
    reads (``handle_unknown="ignore"``: all zeros where it counts).
    """

    def __init__(self, ct: Any):
        _require(isinstance(ct, _sk().ColumnTransformer),
                 f"first step must be a ColumnTransformer, got {type(ct).__name__}")
        _require(not getattr(ct, "sparse_output_", False), "ColumnTransformer output is sparse")
        branches: list[_NumericBranch | _CategoricalBranch] = []
        for name, trans, columns in ct.transformers_:
            out = ct.output_indices_[name]
            if trans == "drop" or out.stop == out.start:
                continue
            _require(isinstance(trans, _sk().Pipeline),
                     f"branch {name!r} must be a Pipeline")
            _require(all(isinstance(c, str) for c in columns),
                     f"branch {name!r} must select columns by name")
            steps = [s for _, s in trans.steps]
            onehot = isinstance(steps[-1], _sk().OneHotEncoder)
            cls = _CategoricalBranch if onehot else _NumericBranch
            branches.append(cls(name, steps, list(columns), out))
        numeric = [b for b in branches if isinstance(b, _NumericBranch)]
        categorical = [b for b in branches if isinstance(b, _CategoricalBranch)]
        self.n_out = sum(len(b.out) for b in numeric) + sum(
            len(v) for b in categorical for v in b.vocab)
        _require(self.n_out > 0, "ColumnTransformer produces no columns")
        _require(self.n_out == max(ct.output_indices_[n].stop for n, _, _ in ct.transformers_),
                 "ColumnTransformer output has gaps")
        self.numeric = tuple(c for b in numeric for c in b.columns)
        self.categorical = tuple(c for b in categorical for c in b.columns)
        self.features = self.numeric + self.categorical
        _require(len(set(self.features)) == len(self.features), "a column is used twice")
        self.vocabulary = {c: v for b in categorical for c, v in zip(b.columns, b.vocab)}
        self.num_out = np.concatenate([b.out for b in numeric]) if numeric else np.zeros(0, int)
        self.fill = np.concatenate([b.fill for b in numeric]) if numeric else np.zeros(0)
        self.mean = np.concatenate([b.mean for b in numeric]) if numeric else np.zeros(0)
        self.scale = np.concatenate([b.scale for b in numeric]) if numeric else np.zeros(0)
        spare = self.n_out
        width = max((len(v) for v in self.vocabulary.values()), default=0) + 2
        self.table = np.full((len(self.categorical), width), spare, dtype=np.intp)
        j = 0
        for b in categorical:
            for vocab, offset, fill in zip(b.vocab, b.offset, b.fill):
                self.table[j, 2:2 + len(vocab)] = offset + np.arange(len(vocab))
                if fill is not None:
                    self.table[j, 0] = offset + fill
                j += 1
        self.table_rows = np.arange(len(self.categorical), dtype=np.intp)
        self.bind(self.features)
        self._plan = self._record_plan()

    def bind(self, features: Sequence[str]) -> None:
        """Locate the encoder's columns in a raw matrix laid out as ``features``."""
        where = {f: i for i, f in enumerate(features)}
        self.num_pos = np.array([where[c] for c in self.numeric], dtype=np.intp)
        self.cat_pos = np.array([where[c] for c in self.categorical], dtype=np.intp)

    def columns_of(self, name: str) -> list[int]:
        """The output columns that feature ``name`` sets."""
        if name in self.vocabulary:
            j = self.categorical.index(name)
            return sorted({int(c) for c in self.table[j]} - {self.n_out})
        return [int(self.num_out[self.numeric.index(name)])]

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """The estimator's input for a raw matrix, shape ``(n, n_out + 1)``.

        The last column is the spare that unknown categories switch on; estimators
        never read it.
        """
        n = raw.shape[0]
        z = np.zeros((n, self.n_out + 1))
        x = raw[:, self.num_pos]
        np.copyto(x, self.fill, where=np.isnan(x))
        # The same operations in the same order as StandardScaler.transform: bit-identical.
        x -= self.mean
        x /= self.scale
        z[:, self.num_out] = x
        c = np.fmax(raw[:, self.cat_pos], -2.0)  # fmax maps NaN (missing) to -2
        c += 2.0
        z[np.arange(n)[:, None], self.table[self.table_rows, c.astype(np.intp)]] = 1.0
        return z

    def encode_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """:meth:`encode` for records, in plain Python: faster for the few rows of a request.

        Python float arithmetic is IEEE double arithmetic, so ``(v - mean) / scale``
        gives the same bits as the numpy version.
        """
        numeric, categorical, blank = self._plan
        rows = []
        for rec in records:
            z = blank.copy()
            for name, col, fill, mean, scale in numeric:
                v = rec[name]
                if v is None or v != v:
                    v = fill
                z[col] = (v - mean) / scale
            for name, lookup, missing in categorical:
                v = rec[name]
                col = lookup.get(v) if isinstance(v, str) else (missing if _is_missing(v) else -1)
                if col is not None and col >= 0:
                    z[col] = 1.0
            rows.append(z)
        return np.array(rows, dtype=np.float64).reshape(len(rows), self.n_out + 1)

    def _record_plan(self) -> tuple[list[tuple], list[tuple], list[float]]:
        numeric = [(name, int(col), float(fill), float(mean), float(scale))
                   for name, col, fill, mean, scale in zip(
                       self.numeric, self.num_out, self.fill, self.mean, self.scale)]
        categorical = []
        for j, name in enumerate(self.categorical):
            cols = [int(c) if c != self.n_out else -1 for c in self.table[j]]
            lookup = {code: cols[i + 2] for i, code in enumerate(self.vocabulary[name])}
            categorical.append((name, lookup, cols[0]))
        return numeric, categorical, [0.0] * (self.n_out + 1)


# --------------------------------------------------------------------------- estimators


class _Linear:
    """Binary ``LogisticRegression``."""

    has_decision = True

    def __init__(self, est: Any, n_in: int):
        coef = np.asarray(est.coef_, dtype=np.float64)
        _require(coef.shape == (1, n_in), f"coef_ has shape {coef.shape}, expected (1, {n_in})")
        self.coef = np.append(coef[0], 0.0)  # the encoder's spare column weighs nothing
        self.intercept = float(np.asarray(est.intercept_).reshape(-1)[0])

    def decision(self, z: np.ndarray) -> np.ndarray:
        # Not z @ coef: BLAS rounds a row differently depending on its position in the
        # batch, and one applicant must get one PD wherever it stands.
        return (z * self.coef).sum(axis=1) + self.intercept

    def proba(self, z: np.ndarray) -> np.ndarray:
        return expit(self.decision(z))


class _TreeBank:
    """Many binary trees in flat arrays, evaluated together level by level.

    Packed node ``i`` owns *slots* ``2i`` (go left) and ``2i + 1`` (go right), and
    ``child[slot]`` is the first slot of the next node, so one level for every (tree,
    row) pair at once is ``s = child[s + (x[feature[s]] > threshold[s])]`` (``>`` is
    sklearn's right branch). Leaves point at themselves, so finished trees stay put.
    Trees are sorted deepest first and each level only touches the trees still
    descending. Every step is a flat 1-D gather: at these sizes numpy's per-call cost
    dominates, and 1-D fancy indexing has the cheapest calls.
    """

    # Measured break-even of the two single-row strategies: a pass over all nodes costs
    # about as much as one level walked the slot way per this many nodes.
    NODES_PER_LEVEL = 500
    # (tree, row) pairs walked together: beyond about this, the per-level arrays leave
    # the L2 cache and the time per row triples (measured).
    CACHE_PAIRS = 65536

    def __init__(self, trees: list[dict[str, np.ndarray]], n_in: int, float32: bool):
        depths = np.array([_depth(t["left"], t["right"]) for t in trees])
        order = np.argsort(-depths, kind="stable")
        sizes = np.array([len(trees[i]["left"]) for i in order])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        n = int(sizes.sum())
        feature, threshold = np.zeros(n, np.intp), np.zeros(n)
        left, right, value = np.zeros(n, np.intp), np.zeros(n, np.intp), np.zeros(n)
        for start, i in zip(starts, order):
            t, stop = trees[i], start + len(trees[i]["left"])
            leaf = t["left"] < 0
            own = np.arange(start, stop)
            feature[start:stop] = np.where(leaf, 0, t["feature"])
            threshold[start:stop] = np.where(leaf, 0.0, t["threshold"])
            left[start:stop] = np.where(leaf, own, t["left"] + start)
            right[start:stop] = np.where(leaf, own, t["right"] + start)
            value[start:stop] = t["value"]
        _require(bool((feature >= 0).all() and (feature < n_in).all()),
                 "a tree splits on a feature index outside the input")
        if float32:
            threshold = _float32_floor(threshold)
        self.feature = np.repeat(feature, 2)
        self.threshold = np.repeat(threshold, 2)
        self.child = np.stack([2 * left, 2 * right], axis=1).reshape(-1)
        self.value = np.repeat(value, 2)
        self.roots = 2 * starts
        sorted_depths = depths[order]
        self.level_width = [int((sorted_depths > d).sum()) for d in range(int(depths.max()))]
        self.float32 = float32
        self.n_trees = len(trees)
        # Node-level arrays for single rows of small ensembles: one pass over every node
        # picks each node's next node, then each level is a single gather.
        self.node = (feature, threshold, left, right, value, starts)
        self.single_row_by_node = n <= self.NODES_PER_LEVEL * len(self.level_width)
        self.native = self._pack()

    def __getstate__(self) -> dict[str, Any]:
        # The packed copy is rebuilt on load, so the pickle (and FORMAT) stays the same.
        return {**self.__dict__, "native": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.native = self._pack()

    def _pack(self) -> tuple[np.ndarray, ...] | None:
        """The nodes laid out as ``ml/serving/_treewalk.c`` reads them, with roots and depths."""
        if _treewalk is None:
            return None  # pragma: no cover - only without the extension
        feature, threshold, left, right, value, starts = self.node
        _require(len(left) < 2 ** 31, "too many tree nodes for the native walk")
        wide = not self.float32
        nodes = np.zeros(len(left), dtype=np.dtype(
            [("feature", "=i4")]
            + ([("unused", "=i4"), ("threshold", "=f8")] if wide else [("threshold", "=f4")])
            + [("left", "=i4"), ("right", "=i4")]))
        nodes["feature"], nodes["threshold"] = feature, threshold
        nodes["left"], nodes["right"] = left, right  # a leaf points at itself
        # Trees are sorted deepest first: tree k is still descending at level d while
        # k < level_width[d].
        depths = (np.array(self.level_width)[:, None] > np.arange(self.n_trees)).sum(axis=0)
        return (nodes, np.ascontiguousarray(value, np.float64), starts.astype(np.int32),
                depths.astype(np.int32), wide)

    def sums(self, z: np.ndarray) -> np.ndarray:
        """Sum over the trees of the leaf value each row reaches, shape ``(n_rows,)``.

        In C when the extension is built (about 9x faster for one row of the 300-tree
        forest), else the numpy walk below; both add the trees in the same order, so they
        give the same bits.
        """
        if self.native is None:  # no extension (then _pack gave None), or turned off
            return self.leaf_values(z).sum(axis=0)
        nodes, values, roots, depths, wide = self.native
        x = np.ascontiguousarray(z, dtype=np.float64 if wide else np.float32)
        out = np.empty(len(x))
        _treewalk.sum_leaves(nodes, values, roots, depths, x, x.shape[1], out, wide)
        return out

    def leaf_values(self, z: np.ndarray) -> np.ndarray:
        """Leaf value reached in every tree, shape ``(n_trees, n_rows)``."""
        rows = max(1, self.CACHE_PAIRS // self.n_trees)
        if len(z) > rows:  # keep each level's (tree, row) arrays in the CPU cache
            return np.concatenate([self._leaf_values(z[i:i + rows])
                                   for i in range(0, len(z), rows)], axis=1)
        return self._leaf_values(z)

    def _leaf_values(self, z: np.ndarray) -> np.ndarray:
        if self.float32:
            # sklearn forests compare float32(x) <= float64 threshold; the thresholds
            # were rounded down to float32, which gives the same answer for every x
            # and halves the bytes each level moves.
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


def _float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold.

    For a float32 ``x``, ``x <= t`` holds exactly when ``x <= floor32(t)``: no float32
    lies between the two.
    """
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """Depth of a tree given its child arrays (-1 marks a leaf)."""
    inner = np.flatnonzero(left >= 0)
    depth = np.zeros(len(left), dtype=np.intp)
    for _ in range(len(left)):  # one pass per level
        new = np.zeros_like(depth)
        new[left[inner]] = depth[inner] + 1
        new[right[inner]] = depth[inner] + 1
        if np.array_equal(new, depth):
            return int(depth.max())
        depth = new
    raise UnsupportedModelError("fast path cannot compile this model: a tree is not a tree")


class _Forest:
    """Binary ``RandomForestClassifier`` / ``ExtraTreesClassifier``."""

    has_decision = False

    def __init__(self, est: Any, n_in: int):
        _require(est.n_outputs_ == 1 and int(est.n_classes_) == 2,
                 "forest must be single-output binary")
        trees = []
        for tree in est.estimators_:
            t = tree.tree_
            value = np.asarray(t.value)
            _require(value.ndim == 3 and value.shape[1:] == (1, 2),
                     f"tree value has shape {value.shape}")
            leaf = t.children_left == -1
            sums = value[leaf, 0, :].sum(axis=1)
            # sklearn >= 1.4 stores class fractions in the leaves and returns them as is.
            _require(bool(np.allclose(sums, 1.0, rtol=0, atol=1e-12)),
                     "tree leaves do not hold class fractions (other sklearn version?)")
            trees.append({"left": t.children_left, "right": t.children_right,
                          "feature": t.feature, "threshold": t.threshold,
                          "value": value[:, 0, 1]})
        self.bank = _TreeBank(trees, n_in, float32=True)
        self.trees = [(tree.tree_, t["value"]) for tree, t in zip(est.estimators_, trees)]
        self.n_in = n_in

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for serving without sklearn: the large-batch shortcut through sklearn's
        # own trees is dropped and every batch takes our walk, C or numpy (same results).
        return {**self.__dict__, "trees": None}

    def proba(self, z: np.ndarray) -> np.ndarray:
        if len(z) < LARGE_BATCH or self.trees is None or self.bank.native is not None:
            return self.bank.sums(z) / self.bank.n_trees
        # What RandomForestClassifier.predict_proba does, minus its joblib dispatch.
        x = np.ascontiguousarray(z[:, :self.n_in], dtype=np.float32)
        total = np.zeros(len(z))
        for tree, value in self.trees:
            total += value[tree.apply(x)]
        return total / len(self.trees)


class _Boosting:
    """Binary ``HistGradientBoostingClassifier`` without categorical splits."""

    has_decision = True

    def __init__(self, est: Any, n_in: int):
        _require(est.n_trees_per_iteration_ == 1, "boosting must be binary")
        _require(getattr(est, "_preprocessor", None) is None
                 and (est.is_categorical_ is None or not np.any(est.is_categorical_)),
                 "native categorical features are not supported")
        _require(type(est._loss).__name__ == "HalfBinomialLoss", "loss must be log-loss")
        baseline = np.asarray(est._baseline_prediction, dtype=np.float64)
        _require(baseline.size == 1, "baseline prediction must be a scalar")
        self.baseline = float(baseline.reshape(-1)[0])
        trees = []
        for (predictor,) in est._predictors:
            nodes = predictor.nodes
            _require(not nodes["is_categorical"].any(), "a tree has a categorical split")
            leaf = nodes["is_leaf"].astype(bool)
            trees.append({"left": np.where(leaf, -1, nodes["left"].astype(np.intp)),
                          "right": np.where(leaf, -1, nodes["right"].astype(np.intp)),
                          "feature": nodes["feature_idx"].astype(np.intp),
                          "threshold": nodes["num_threshold"].astype(np.float64),
                          "value": nodes["value"].astype(np.float64)})
        _require(bool(trees), "boosting has no trees")
        self.bank = _TreeBank(trees, n_in, float32=False)

    def decision(self, z: np.ndarray) -> np.ndarray:
        # Always our walk (C, or numpy): sklearn's OpenMP prediction is only as fast
        # single-threaded, and with all threads it thrashes (3x slower) on a busy machine.
        return self.baseline + self.bank.sums(z)

    def proba(self, z: np.ndarray) -> np.ndarray:
        return expit(self.decision(z))


def _estimators() -> tuple[tuple[type, type], ...]:
    sk = _sk()
    return ((sk.LogisticRegression, _Linear), (sk.RandomForestClassifier, _Forest),
            (sk.ExtraTreesClassifier, _Forest), (sk.HistGradientBoostingClassifier, _Boosting))


def _compile_estimator(est: Any, n_in: int) -> Any:
    classes = getattr(est, "classes_", None)
    _require(classes is not None and list(np.asarray(classes)) == [0, 1],
             f"the estimator's classes must be [0, 1], got {classes}")
    for cls, compiled in _estimators():
        if type(est) is cls:
            return compiled(est, n_in)
    supported = ", ".join(c.__name__ for c, _ in _estimators())
    raise UnsupportedModelError(f"fast path cannot compile a {type(est).__name__}; "
                                f"supported estimators: {supported}")


# --------------------------------------------------------------------------- calibration


class _Sigmoid:
    def __init__(self, cal: Any):
        self.a, self.b = float(cal.a_), float(cal.b_)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return expit(-(self.a * t + self.b))


class _Isotonic:
    def __init__(self, cal: Any):
        _require(cal.out_of_bounds == "clip", "isotonic calibrator must clip")
        x, y = np.asarray(cal.X_thresholds_), np.asarray(cal.y_thresholds_)
        # With float64 knots, scipy's interp1d delegates to np.interp.
        _require(x.dtype == np.float64 and y.dtype == np.float64 and len(x) >= 1,
                 "isotonic knots must be float64")
        self.x, self.y = x, y
        self.lo, self.hi = float(cal.X_min_), float(cal.X_max_)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        if len(self.x) == 1:
            return np.full(len(t), self.y[0])
        return np.interp(np.clip(t, self.lo, self.hi), self.x, self.y)


def _compile_calibrator(cal: Any) -> Any:
    if type(cal) is _sk()._SigmoidCalibration:
        return _Sigmoid(cal)
    if type(cal) is _sk().IsotonicRegression:
        return _Isotonic(cal)
    raise UnsupportedModelError(f"fast path cannot compile a {type(cal).__name__} calibrator")


# --------------------------------------------------------------------------- the model


class _Member:
    """One preprocessing + estimator pipeline, optionally followed by its calibrator."""

    def __init__(self, pipeline: Any, calibrator: Any = None):
        if type(pipeline).__name__ == "FrozenEstimator":  # cv="prefit" style calibration
            pipeline = pipeline.estimator
        _require(isinstance(pipeline, _sk().Pipeline) and len(pipeline.steps) == 2,
                 "expected Pipeline([('prep', ColumnTransformer), ('model', estimator)])")
        self.encoder = _Encoder(pipeline.steps[0][1])
        self.estimator = _compile_estimator(pipeline.steps[1][1], self.encoder.n_out)
        self.calibrator = None if calibrator is None else _compile_calibrator(calibrator)
        if self.calibrator is not None:
            # sklearn feeds decision_function when the pipeline has one, else predict_proba.
            _require(hasattr(pipeline, "decision_function") == self.estimator.has_decision,
                     "cannot tell which response the calibrator was fitted on")

    def proba(self, z: np.ndarray) -> np.ndarray:
        """P(default) for encoded rows."""
        if self.calibrator is None:
            return self.estimator.proba(z)
        t = self.estimator.decision(z) if self.estimator.has_decision else self.estimator.proba(z)
        return self.calibrated(t)

    def calibrated(self, t: np.ndarray) -> np.ndarray:
        p = self.calibrator(t)
        p[(p > 1.0) & (p <= 1.0 + 1e-5)] = 1.0
        return p

    def what_if_linear(self, z: np.ndarray, zb: np.ndarray,
                       by_feature: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """A linear member's P(x) and P(x with each feature set to the baseline's).

        No what-if rows are built: swapping feature j changes the decision by
        ``sum((zb - z) * coef)`` over j's columns, one ``reduceat`` for all of them
        (``by_feature``: the columns grouped by feature, and each group's start).
        """
        decision = self.estimator.decision(z)
        order, starts = by_feature
        shift = np.add.reduceat(((zb - z) * self.estimator.coef)[:, order], starts, axis=1)
        t = np.concatenate([decision[:, None], decision[:, None] + shift], axis=1)
        return expit(t) if self.calibrator is None else self.calibrated(t.reshape(-1)).reshape(
            t.shape)


class Baseline:
    """A reference applicant, pre-encoded for :meth:`FastModel.predict_raw` and friends.

    Build one with :meth:`FastModel.baseline`.
    """

    def __init__(self, model: "FastModel", record: Mapping[str, Any]):
        self.record = dict(record)
        self.raw = model.raw_from_records([record])[0]
        self.encoded = []
        for m in model.members:
            z = m.encoder.encode_records([record])[0]
            # mask[j]: the encoded columns of feature j (float32 transposed for counting)
            mask = np.zeros((len(model.features), len(z)), dtype=bool)
            groups = [m.encoder.columns_of(name) for name in model.features]
            for j, columns in enumerate(groups):
                mask[j, columns] = True
            # The encoded columns grouped by feature, and where each group starts.
            by_feature = (np.concatenate(groups).astype(np.intp),
                          np.cumsum([0] + [len(g) for g in groups[:-1]]).astype(np.intp))
            self.encoded.append((z, mask, mask.T.astype(np.float32), by_feature))


def _shared_encoders(members: list[_Member]) -> list[int]:
    """For each member, the first member with the same preprocessing (a blend's members
    are fitted on the same rows, so theirs usually is): it is then encoded only once."""
    keys = [pickle.dumps(m.encoder, protocol=5) for m in members]
    return [keys.index(key) for key in keys]


class FastModel:
    """P(default) for raw matrices, records and frames, without pandas or sklearn at call time.

    Build one with :func:`compile_model`. Calls never mutate the object, so one instance
    can serve many threads.

    Every ``predict_*`` method takes an optional :class:`Baseline`. Without it the
    result has shape ``(n,)``; with it, shape ``(n, 1 + len(features))``: column 0 is
    each row's P(default) and column ``1 + j`` the same with ``features[j]`` set to the
    baseline's value (one batched evaluation, for reason codes).

    Attributes:
        features: model input features, in the column order of raw matrices.
        numeric: the numeric ones among them.
        categorical: the categorical ones.
        vocabulary: for each categorical feature, the codes in index order (a raw value
            ``i`` means ``vocabulary[name][i]``).
        kind: family and calibration, e.g. ``"random_forest+isotonic"``.
    """

    # Rows per block when a baseline multiplies the rows by 1 + len(features).
    BLOCK_ROWS = 65536
    # From this many records on, they are read column by column into a raw matrix and
    # encoded with numpy; below it, record by record in plain Python is faster (measured:
    # 1,000 records 3.4 against 5.4 ms; one record 51 against 5 µs).
    COLUMNWISE_RECORDS = 16

    def __init__(self, members: list[_Member], kind: str):
        self.members = members
        self.kind = kind
        first = members[0].encoder
        self.features: tuple[str, ...] = first.features
        self.numeric: tuple[str, ...] = first.numeric
        self.categorical: tuple[str, ...] = first.categorical
        self.vocabulary: dict[str, tuple[str, ...]] = first.vocabulary
        for m in members[1:]:
            _require(m.encoder.features == self.features
                     and m.encoder.vocabulary == self.vocabulary,
                     "the averaged members disagree on their input columns")
        self._lookup = [(name, {c: float(i) for i, c in enumerate(self.vocabulary[name])})
                        if name in self.vocabulary else (name, None) for name in self.features]
        self._encoder_of = _shared_encoders(members)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_encoder_of" not in state:  # pickled before members shared encodings
            self._encoder_of = _shared_encoders(self.members)

    def _encode(self, encoders: list[Any], rows: Any) -> list[np.ndarray]:
        """Each member's encoded rows, computed once per distinct encoder."""
        out: list[np.ndarray] = []
        for i, first in enumerate(self._encoder_of):
            out.append(out[first] if first < i else encoders[i](rows))
        return out

    def baseline(self, record: Mapping[str, Any]) -> Baseline:
        """Pre-encode a reference record (all features present) for the ``baseline=`` argument."""
        return Baseline(self, record)

    def predict_raw(self, raw: np.ndarray, baseline: Baseline | None = None) -> np.ndarray:
        """P(default) for each row of a raw matrix (shape ``(n, len(features))``)."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.features):
            raise ValueError(f"raw matrix must have shape (n, {len(self.features)})")
        return self._predict([m.encoder.encode for m in self.members], raw, baseline)

    def predict_records(self, records: Sequence[Mapping[str, Any]],
                        baseline: Baseline | None = None) -> np.ndarray:
        """P(default) for validated records (``{feature: value}``, ``None`` = missing)."""
        if len(records) >= self.COLUMNWISE_RECORDS:
            return self.predict_raw(self.raw_from_records(records), baseline)
        return self._predict([m.encoder.encode_records for m in self.members], records,
                             baseline)

    def predict_frame(self, frame: pd.DataFrame, baseline: Baseline | None = None) -> np.ndarray:
        """P(default) for a validated frame (extra columns are ignored)."""
        return self.predict_raw(self.raw_from_frame(frame), baseline)

    def _predict(self, encoders: list[Any], rows: Any, baseline: Baseline | None) -> np.ndarray:
        if baseline is None:
            return self._mean([m.proba(z) for m, z in zip(self.members,
                                                          self._encode(encoders, rows))])
        width = 1 + len(self.features)
        step = max(1, self.BLOCK_ROWS // width)
        parts = []
        for start in range(0, len(rows), step):
            zs = self._encode(encoders, rows[start:start + step])
            n = len(zs[0])
            if all(isinstance(m.estimator, _Linear) for m in self.members):
                parts.append(self._mean([
                    m.what_if_linear(z, zb, by_feature)
                    for m, z, (zb, _, _, by_feature) in zip(self.members, zs,
                                                            baseline.encoded)]))
                continue
            # Only features whose value differs from the baseline's need a what-if row;
            # for the others the swap changes nothing and the answer is P(x) itself.
            # Members sharing an encoding share its what-if rows too.
            distinct = [i for i, first in enumerate(self._encoder_of) if first == i]
            differ = np.zeros((n, len(self.features)), dtype=bool)
            for i in distinct:
                zb, _, columns, _ = baseline.encoded[i]
                differ |= ((zs[i] != zb).astype(np.float32) @ columns) > 0
            row, feature = np.nonzero(differ)
            rows_of = {}
            for i in distinct:
                zb, mask, _, _ = baseline.encoded[i]
                rows_of[i] = np.concatenate([zs[i], np.where(mask[feature], zb, zs[i][row])])
            p = self._mean([m.proba(rows_of[first])
                            for m, first in zip(self.members, self._encoder_of)])
            out = np.repeat(p[:n, None], width, axis=1)
            out[row, 1 + feature] = p[n:]
            parts.append(out)
        return np.concatenate(parts) if parts else np.zeros((0, width))

    def _mean(self, probs: list[np.ndarray]) -> np.ndarray:
        if len(probs) == 1:
            return probs[0]
        total = np.zeros_like(probs[0])
        for p in probs:  # in order, as CalibratedClassifierCV.predict_proba sums them
            total += p
        return total / len(probs)

    def raw_from_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Raw matrix of records; a category code not in the vocabulary counts as unknown."""
        records = records if isinstance(records, Sequence) else list(records)
        raw = np.empty((len(records), len(self.features)))
        for j, (name, lookup) in enumerate(self._lookup):
            column = [rec[name] for rec in records]
            if lookup is None:
                raw[:, j] = np.array(column, dtype=np.float64)  # None becomes NaN
            else:
                raw[:, j] = [lookup.get(v, UNKNOWN) if isinstance(v, str)
                             else (math.nan if _is_missing(v) else UNKNOWN) for v in column]
        return raw

    def raw_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw matrix of a validated frame: floats, and codes (any dtype; NA = missing)."""
        import pandas as pd  # frames come from the batch jobs, which have pandas loaded

        raw = np.empty((len(frame), len(self.features)))
        for j, name in enumerate(self.features):
            col = frame[name]
            if name in self.vocabulary:
                raw[:, j] = self.category_index(name, col)
            else:
                raw[:, j] = pd.to_numeric(col).to_numpy(dtype=np.float64, na_value=np.nan)
        return raw

    def category_index(self, name: str, codes: Any) -> np.ndarray:
        """Raw values of codes of feature ``name``: index, NaN if missing, -1 if unknown."""
        import pandas as pd

        values = pd.Series(codes, copy=False)
        index = pd.Index(self.vocabulary[name]).get_indexer(values.astype(object))
        out = index.astype(np.float64)
        out[values.isna().to_numpy()] = np.nan
        return out


def compile_model(model: Any) -> FastModel:
    """Compile a fitted pipeline, a ``CalibratedClassifierCV`` of one, or a soft
    ``VotingClassifier`` of pipelines into a :class:`FastModel`.

    Raises:
        UnsupportedModelError: for any model type or structure that this module does
            not replicate exactly (the message says what).
    """
    if isinstance(model, _sk().CalibratedClassifierCV):
        _require(list(np.asarray(model.classes_)) == [0, 1], "classes must be [0, 1]")
        members = []
        for cc in model.calibrated_classifiers_:
            _require(cc.method in ("sigmoid", "isotonic") and len(cc.calibrators) == 1,
                     f"calibration method {cc.method!r} is not supported")
            members.append(_Member(cc.estimator, cc.calibrators[0]))
        kind = f"{_family(members[0])}+{model.calibrated_classifiers_[0].method}"
        return FastModel(members, kind)
    if isinstance(model, _sk().VotingClassifier):
        return _compile_vote(model)
    if isinstance(model, _sk().Pipeline):
        member = _Member(model)
        return FastModel([member], _family(member))
    raise UnsupportedModelError(f"fast path cannot compile a {type(model).__name__}; expected a "
                                "Pipeline, a CalibratedClassifierCV of one or a soft "
                                "VotingClassifier of them")


def _compile_vote(model: Any) -> FastModel:
    """An unweighted soft vote of pipelines: the mean of its members, like calibration's."""
    _require(model.voting == "soft" and model.weights is None,
             "only an unweighted soft VotingClassifier is supported")
    _require(list(np.asarray(model.classes_)) == [0, 1], "classes must be [0, 1]")
    _require(len(model.estimators_) >= 1, "the vote has no fitted members")
    members = [_Member(est) for est in model.estimators_]
    return FastModel(members, "blend:" + "+".join(_family(m) for m in members))


def _family(member: _Member) -> str:
    return {_Linear: "logistic_regression", _Forest: "random_forest",
            _Boosting: "hist_gradient_boosting"}[type(member.estimator)]


def check_against(model: Any, fast: FastModel, frame: pd.DataFrame, atol: float = 1e-9) -> float:
    """Largest |Δ| between ``fast`` and ``model.predict_proba(frame)[:, 1]``; raises past ``atol``.

    A cheap load-time guard: a few rows through sklearn catch any structure this module
    misreads before a single request is answered.
    """
    expected = np.asarray(model.predict_proba(frame))[:, 1]
    got = fast.predict_frame(frame)
    worst = float(np.max(np.abs(expected - got))) if len(got) else 0.0
    if not worst <= atol:
        raise UnsupportedModelError(f"fast path disagrees with sklearn by {worst:.3g} "
                                    f"(> {atol:g}) on the check rows")
    return worst
