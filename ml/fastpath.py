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

All trees of an ensemble are packed into flat arrays and walked level by level for the
whole batch at once (trees sorted by depth, so each level only touches trees that are
still descending); there is no Python loop per tree or per row.

Inputs come in a *raw* matrix, one float64 column per model input feature in
:attr:`FastModel.features` order: numbers as they are (NaN = missing); categories as
their index in :attr:`FastModel.vocabulary` (NaN = missing, -1 = unknown code).
Anything this module does not know how to replicate exactly raises
:class:`UnsupportedModelError` at compile time rather than mispredicting.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (ExtraTreesClassifier, HistGradientBoostingClassifier,
                              RandomForestClassifier)
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.artifact import ArtifactError

UNKNOWN = -1.0
"""Raw value of a category code the encoder has never heard of (one-hot row of zeros)."""


class UnsupportedModelError(ArtifactError):
    """The model is not one the fast path can reproduce exactly."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError("fast path cannot compile this model: " + message)


def _is_missing(value: Any) -> bool:
    """``None`` or a float NaN: what the imputers treat as missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------- encoder


class _NumericBranch:
    """``SimpleImputer`` then an optional ``StandardScaler`` over some numeric columns."""

    def __init__(self, name: str, steps: list[Any], columns: list[str], out: slice):
        _require(len(steps) in (1, 2) and isinstance(steps[0], SimpleImputer)
                 and (len(steps) == 1 or isinstance(steps[1], StandardScaler)),
                 f"branch {name!r} must be SimpleImputer [→ StandardScaler], got {steps}")
        imputer = steps[0]
        _check_imputer(imputer, name)
        fill = np.asarray(imputer.statistics_, dtype=np.float64)
        _require(fill.shape == (len(columns),) and bool(np.isfinite(fill).all()),
                 f"branch {name!r}: imputer has empty or non-numeric statistics")
        self.columns, self.fill, self.out = columns, fill, out
        self.mean = self.scale = None
        if len(steps) == 2:
            scaler = steps[1]
            if scaler.with_mean:
                self.mean = np.asarray(scaler.mean_, dtype=np.float64)
            if scaler.with_std:
                self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        _require(out.stop - out.start == len(columns), f"branch {name!r}: output width differs")

    def encode(self, raw: np.ndarray, z: np.ndarray) -> None:
        """Write this branch's output columns of ``z`` from its raw columns."""
        x = raw[:, self.pos]
        nan = np.isnan(x)
        if nan.any():
            x = np.where(nan, self.fill, x)
        # Same operations in the same order as StandardScaler.transform: bit-identical.
        if self.mean is not None:
            x -= self.mean
        if self.scale is not None:
            x /= self.scale
        z[:, self.out] = x


class _CategoricalBranch:
    """``SimpleImputer`` then ``OneHotEncoder(handle_unknown="ignore")``."""

    def __init__(self, name: str, steps: list[Any], columns: list[str], out: slice):
        _require(len(steps) == 2 and isinstance(steps[0], SimpleImputer)
                 and isinstance(steps[1], OneHotEncoder),
                 f"branch {name!r} must be SimpleImputer → OneHotEncoder, got {steps}")
        imputer, onehot = steps
        _check_imputer(imputer, name)
        _require(onehot.handle_unknown == "ignore",
                 f"branch {name!r}: OneHotEncoder must use handle_unknown='ignore'")
        _require(getattr(onehot, "drop_idx_", None) is None, f"branch {name!r}: drop= is set")
        _require(not getattr(onehot, "_infrequent_enabled", False),
                 f"branch {name!r}: infrequent categories are enabled")
        self.columns, self.out = columns, out
        self.vocab = [tuple(str(c) for c in cats) for cats in onehot.categories_]
        for cats in onehot.categories_:
            _require(all(isinstance(c, str) for c in cats),
                     f"branch {name!r}: categories must be strings")
        sizes = [len(v) for v in self.vocab]
        _require(sum(sizes) == out.stop - out.start, f"branch {name!r}: output width differs")
        self.offset = out.start + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        # A missing value becomes the imputer's fill value, itself looked up like any code.
        self.fill = np.array([float(v.index(s)) if s in v else UNKNOWN
                              for v, s in zip(self.vocab, imputer.statistics_)])

    def encode(self, raw: np.ndarray, z: np.ndarray) -> None:
        """Set the one-hot cells of ``z`` from this branch's raw category indices."""
        c = raw[:, self.pos]
        nan = np.isnan(c)
        if nan.any():
            c = np.where(nan, self.fill, c)
        known = c >= 0
        cols = c.astype(np.intp) + self.offset
        rows = np.arange(len(c), dtype=np.intp)[:, None] * z.shape[1]
        flat = (rows + cols)[known] if not known.all() else (rows + cols).ravel()
        z.reshape(-1)[flat] = 1.0


def _check_imputer(imputer: SimpleImputer, name: str) -> None:
    _require(not imputer.add_indicator, f"branch {name!r}: imputer add_indicator=True")
    mv = imputer.missing_values
    _require(isinstance(mv, float) and math.isnan(mv),
             f"branch {name!r}: imputer missing_values must be NaN")


class _Encoder:
    """A fitted ``ColumnTransformer`` as arrays: raw matrix → the estimator's input."""

    def __init__(self, ct: Any):
        _require(isinstance(ct, ColumnTransformer), f"first step must be a ColumnTransformer, "
                 f"got {type(ct).__name__}")
        _require(not getattr(ct, "sparse_output_", False), "ColumnTransformer output is sparse")
        self.branches: list[_NumericBranch | _CategoricalBranch] = []
        for name, trans, columns in ct.transformers_:
            out = ct.output_indices_[name]
            if trans == "drop" or out.stop == out.start:
                continue
            _require(isinstance(trans, Pipeline), f"branch {name!r} must be a Pipeline")
            _require(all(isinstance(c, str) for c in columns),
                     f"branch {name!r} must select columns by name")
            steps = [s for _, s in trans.steps]
            cls = _CategoricalBranch if isinstance(steps[-1], OneHotEncoder) else _NumericBranch
            self.branches.append(cls(name, steps, list(columns), out))
        self.n_out = max((b.out.stop for b in self.branches), default=0)
        _require(self.n_out > 0, "ColumnTransformer produces no columns")
        self.features = tuple(c for b in self.branches for c in b.columns)
        _require(len(set(self.features)) == len(self.features), "a column is used twice")
        _require(self.n_out == sum(b.out.stop - b.out.start for b in self.branches),
                 "ColumnTransformer output has gaps")
        self.vocabulary = {c: v for b in self.branches if isinstance(b, _CategoricalBranch)
                           for c, v in zip(b.columns, b.vocab)}
        self.bind(self.features)

    def bind(self, features: Sequence[str]) -> None:
        """Locate each branch's columns in a raw matrix laid out as ``features``."""
        where = {f: i for i, f in enumerate(features)}
        for b in self.branches:
            b.pos = np.array([where[c] for c in b.columns], dtype=np.intp)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """The estimator's float64 input for a raw matrix."""
        z = np.zeros((raw.shape[0], self.n_out))
        for b in self.branches:
            b.encode(raw, z)
        return z


# --------------------------------------------------------------------------- estimators


class _Linear:
    """Binary ``LogisticRegression``."""

    has_decision = True

    def __init__(self, est: LogisticRegression, n_in: int):
        coef = np.asarray(est.coef_, dtype=np.float64)
        _require(coef.shape == (1, n_in), f"coef_ has shape {coef.shape}, expected (1, {n_in})")
        self.coef = np.ascontiguousarray(coef[0])
        self.intercept = float(np.asarray(est.intercept_).reshape(-1)[0])

    def decision(self, z: np.ndarray) -> np.ndarray:
        return z @ self.coef + self.intercept

    def proba(self, z: np.ndarray) -> np.ndarray:
        return expit(self.decision(z))


class _TreeBank:
    """Many binary trees in flat arrays, evaluated together level by level.

    Node ``i`` of the packed arrays owns *slots* ``2i`` (go left) and ``2i + 1`` (go
    right); ``child[slot]`` is the slot base (``2 * node``) of the next node, so one step
    is ``s = child[s + (x[feature[s]] > threshold[s])]``. Leaves point at themselves.
    """

    def __init__(self, trees: list[dict[str, np.ndarray]], n_in: int, float32: bool):
        depths = np.array([_depth(t["left"], t["right"]) for t in trees])
        order = np.argsort(-depths, kind="stable")
        sizes = np.array([len(trees[i]["left"]) for i in order])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        n = int(sizes.sum())
        feature, threshold = np.zeros(n, np.intp), np.zeros(n)
        left, right, value = np.zeros(n, np.intp), np.zeros(n, np.intp), np.zeros(n)
        for start, i in zip(starts, order):
            t, stop = trees[i], start + len(trees[i]["left"])
            leaf = t["is_leaf"]
            own = np.arange(start, stop)
            feature[start:stop] = np.where(leaf, 0, t["feature"])
            threshold[start:stop] = np.where(leaf, 0.0, t["threshold"])
            left[start:stop] = np.where(leaf, own, t["left"] + start)
            right[start:stop] = np.where(leaf, own, t["right"] + start)
            value[start:stop] = t["value"]
        _require(bool((feature >= 0).all() and (feature < n_in).all()),
                 "a tree splits on a feature index outside the input")
        self.feature = np.repeat(feature, 2)
        self.threshold = np.repeat(threshold, 2)
        self.child = np.stack([2 * left, 2 * right], axis=1).reshape(-1)
        self.value = np.repeat(value, 2)
        self.roots = (2 * starts).astype(np.intp)
        # At level d only the trees deeper than d still move; they come first.
        sorted_depths = depths[order]
        self.level_width = [int((sorted_depths > d).sum()) for d in range(int(depths.max()))]
        self.float32 = float32
        self.n_trees = len(trees)

    def leaf_values(self, z: np.ndarray) -> np.ndarray:
        """Leaf value reached in every tree, shape ``(n_trees, n_rows)``."""
        if self.float32:
            # sklearn forests compare float32(x) <= float64 threshold.
            z = z.astype(np.float32).astype(np.float64)
        n_rows = z.shape[0]
        xt = np.ascontiguousarray(z.T).reshape(-1)  # feature-major: x[f, r] at f * n + r
        slots = np.repeat(self.roots[:, None], n_rows, axis=1)
        rows = np.arange(n_rows, dtype=np.intp)
        for width in self.level_width:
            s = slots[:width]
            at = self.feature[s]
            if n_rows > 1:
                at *= n_rows
                at += rows
            s = s + (xt[at] > self.threshold[s])
            slots[:width] = self.child[s]
        return self.value[slots]


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """Depth of a tree given its child arrays (-1 marks a leaf)."""
    inner = np.flatnonzero(left >= 0)
    depth = np.zeros(len(left), dtype=np.intp)
    for _ in range(len(left)):  # one pass per level at most
        new = depth.copy()
        new[left[inner]] = depth[inner] + 1
        new[right[inner]] = depth[inner] + 1
        if np.array_equal(new, depth):
            return int(depth.max())
        depth = new
    raise UnsupportedModelError("fast path cannot compile this model: a tree has a cycle")


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
                          "value": value[:, 0, 1], "is_leaf": leaf})
        self.bank = _TreeBank(trees, n_in, float32=True)

    def proba(self, z: np.ndarray) -> np.ndarray:
        return self.bank.leaf_values(z).sum(axis=0) / self.bank.n_trees


class _Boosting:
    """Binary ``HistGradientBoostingClassifier`` without categorical splits."""

    has_decision = True

    def __init__(self, est: HistGradientBoostingClassifier, n_in: int):
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
                          "value": nodes["value"].astype(np.float64), "is_leaf": leaf})
        _require(bool(trees), "boosting has no trees")
        self.bank = _TreeBank(trees, n_in, float32=False)

    def decision(self, z: np.ndarray) -> np.ndarray:
        return self.baseline + self.bank.leaf_values(z).sum(axis=0)

    def proba(self, z: np.ndarray) -> np.ndarray:
        return expit(self.decision(z))


_ESTIMATORS = (
    (LogisticRegression, _Linear),
    (RandomForestClassifier, _Forest),
    (ExtraTreesClassifier, _Forest),
    (HistGradientBoostingClassifier, _Boosting),
)


def _compile_estimator(est: Any, n_in: int) -> Any:
    classes = getattr(est, "classes_", None)
    _require(classes is not None and list(np.asarray(classes)) == [0, 1],
             f"the estimator's classes must be [0, 1], got {classes}")
    for cls, compiled in _ESTIMATORS:
        if type(est) is cls:
            return compiled(est, n_in)
    supported = ", ".join(c.__name__ for c, _ in _ESTIMATORS)
    raise UnsupportedModelError(f"fast path cannot compile a {type(est).__name__}; "
                                f"supported estimators: {supported}")


# --------------------------------------------------------------------------- calibration


class _Sigmoid:
    def __init__(self, cal: _SigmoidCalibration):
        self.a, self.b = float(cal.a_), float(cal.b_)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return expit(-(self.a * t + self.b))


class _Isotonic:
    def __init__(self, cal: IsotonicRegression):
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
    if type(cal) is _SigmoidCalibration:
        return _Sigmoid(cal)
    if type(cal) is IsotonicRegression:
        return _Isotonic(cal)
    raise UnsupportedModelError(f"fast path cannot compile a {type(cal).__name__} calibrator")


# --------------------------------------------------------------------------- the model


class _Member:
    """One preprocessing + estimator pipeline, optionally followed by its calibrator."""

    def __init__(self, pipeline: Any, calibrator: Any = None):
        if type(pipeline).__name__ == "FrozenEstimator":  # cv="prefit" style calibration
            pipeline = pipeline.estimator
        _require(isinstance(pipeline, Pipeline) and len(pipeline.steps) == 2,
                 "expected Pipeline([('prep', ColumnTransformer), ('model', estimator)])")
        self.encoder = _Encoder(pipeline.steps[0][1])
        self.estimator = _compile_estimator(pipeline.steps[1][1], self.encoder.n_out)
        self.calibrator = None if calibrator is None else _compile_calibrator(calibrator)
        if self.calibrator is not None:
            # sklearn feeds decision_function when the pipeline has one, else predict_proba.
            _require(hasattr(pipeline, "decision_function") == self.estimator.has_decision,
                     "cannot tell which response the calibrator was fitted on")

    def proba(self, raw: np.ndarray) -> np.ndarray:
        z = self.encoder.encode(raw)
        if self.calibrator is None:
            return self.estimator.proba(z)
        t = self.estimator.decision(z) if self.estimator.has_decision else self.estimator.proba(z)
        p = self.calibrator(t)
        p[(p > 1.0) & (p <= 1.0 + 1e-5)] = 1.0
        return p


class FastModel:
    """P(default) for raw matrices, records and frames, without pandas or sklearn at call time.

    Build one with :func:`compile_model`. Thread-safe: calls never mutate the object.

    Attributes:
        features: model input features, in the column order of raw matrices.
        vocabulary: for each categorical feature, the codes in index order (a raw value
            ``i`` means ``vocabulary[name][i]``).
        kind: a short description, e.g. ``"random_forest+isotonic"``.
    """

    def __init__(self, members: list[_Member], kind: str):
        self.members = members
        self.kind = kind
        first = members[0].encoder
        self.features: tuple[str, ...] = first.features
        self.vocabulary: dict[str, tuple[str, ...]] = first.vocabulary
        for m in members[1:]:
            _require(set(m.encoder.features) == set(self.features)
                     and m.encoder.vocabulary == self.vocabulary,
                     "calibrated classifiers disagree on their input columns")
            m.encoder.bind(self.features)
        self.numeric = tuple(f for f in self.features if f not in self.vocabulary)
        self.categorical = tuple(f for f in self.features if f in self.vocabulary)
        self._lookup = [(name, {c: float(i) for i, c in enumerate(self.vocabulary[name])})
                        if name in self.vocabulary else (name, None) for name in self.features]

    def predict_raw(self, raw: np.ndarray) -> np.ndarray:
        """P(default) for each row of a raw matrix (shape ``(n, len(features))``)."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.features):
            raise ValueError(f"raw matrix must have shape (n, {len(self.features)})")
        if len(self.members) == 1:
            return self.members[0].proba(raw)
        total = np.zeros(raw.shape[0])
        for m in self.members:
            total += m.proba(raw)
        return total / len(self.members)

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(default) for validated records (``{feature: value}``, ``None`` = missing)."""
        return self.predict_raw(self.raw_from_records(records))

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """P(default) for a validated frame (extra columns are ignored)."""
        return self.predict_raw(self.raw_from_frame(frame))

    def raw_from_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Raw matrix of records; a category code not in the vocabulary counts as unknown."""
        rows = []
        for rec in records:
            row = []
            for name, lookup in self._lookup:
                value = rec[name]
                if lookup is None or _is_missing(value):
                    row.append(value)  # None becomes NaN in the float array below
                else:
                    row.append(lookup.get(value, UNKNOWN) if isinstance(value, str) else UNKNOWN)
            rows.append(row)
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(self.features))

    def raw_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw matrix of a validated frame: floats, and codes (any dtype; NA = missing)."""
        raw = np.empty((len(frame), len(self.features)))
        for j, name in enumerate(self.features):
            col = frame[name]
            if name in self.vocabulary:
                raw[:, j] = self.category_index(name, col)
            else:
                raw[:, j] = pd.to_numeric(col).to_numpy(dtype=np.float64, na_value=np.nan)
        return raw

    def category_index(self, name: str, codes: Any) -> np.ndarray:
        """Raw values of category codes of feature ``name``: index, NaN if missing, -1 if unknown."""
        values = pd.Series(codes, copy=False)
        index = pd.Index(self.vocabulary[name]).get_indexer(values.astype(object))
        out = index.astype(np.float64)
        out[values.isna().to_numpy()] = np.nan
        return out


def compile_model(model: Any) -> FastModel:
    """Compile a fitted pipeline, or a ``CalibratedClassifierCV`` of one, into a :class:`FastModel`.

    Raises:
        UnsupportedModelError: for any model type or structure that this module does
            not replicate exactly (the message says what).
    """
    if isinstance(model, CalibratedClassifierCV):
        _require(list(np.asarray(model.classes_)) == [0, 1], "classes must be [0, 1]")
        members = []
        for cc in model.calibrated_classifiers_:
            _require(cc.method in ("sigmoid", "isotonic") and len(cc.calibrators) == 1,
                     f"calibration method {cc.method!r} is not supported")
            members.append(_Member(cc.estimator, cc.calibrators[0]))
        kind = f"{_family(members[0])}+{model.calibrated_classifiers_[0].method}"
        return FastModel(members, kind)
    if isinstance(model, Pipeline):
        member = _Member(model)
        return FastModel([member], _family(member))
    raise UnsupportedModelError(f"fast path cannot compile a {type(model).__name__}; expected a "
                                "Pipeline or a CalibratedClassifierCV of one")


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
