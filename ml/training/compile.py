"""The compiler: fitted sklearn objects → the serving package's :class:`FastModel`.

What is compiled, and how sklearn 1.9 computes it (the compiled model replicates each step):

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
  ``t`` clipped to ``[X_min_, X_max_]``), values in ``(1, 1 + 1e-5]`` are set to 1, and
  the classifiers are averaged.
* ``VotingClassifier(voting="soft")`` without weights (the trainer's blend): the mean of
  its pipelines' P(default), summed in order as ``np.average`` does.

Anything else raises :class:`UnsupportedModelError` at compile time rather than
mispredicting; :func:`check_against` then compares with sklearn on real rows.
This is training code: it imports sklearn and pandas.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (ExtraTreesClassifier, HistGradientBoostingClassifier,
                              RandomForestClassifier, VotingClassifier)
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.serving.compiled import (Boosting, Encoder, FastModel, Forest, Isotonic, Linear,
                                 Member, Sigmoid)
from ml.serving.errors import UnsupportedModelError
from ml.serving.trees import TreeBank


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError("fast path cannot compile this model: " + message)


# --------------------------------------------------------------------------- encoder


def _numeric_branch(name: str, steps: list[Any], columns: list[str], out: slice) -> dict:
    """``SimpleImputer`` then an optional ``StandardScaler``: fill, mean and scale arrays."""
    _require(len(steps) in (1, 2) and isinstance(steps[0], SimpleImputer)
             and (len(steps) == 1 or isinstance(steps[1], StandardScaler)),
             f"branch {name!r} must be SimpleImputer [→ StandardScaler], got {steps}")
    _check_imputer(steps[0], name)
    try:
        fill = np.asarray(steps[0].statistics_, dtype=np.float64)
    except (TypeError, ValueError):
        fill = np.full(len(columns), np.nan)
    _require(fill.shape == (len(columns),) and bool(np.isfinite(fill).all()),
             f"branch {name!r}: imputer has empty or non-numeric statistics")
    _require(out.stop - out.start == len(columns), f"branch {name!r}: output width differs")
    # Subtracting 0.0 and dividing by 1.0 are exact, so absent steps cost nothing.
    mean, scale = np.zeros(len(columns)), np.ones(len(columns))
    if len(steps) == 2 and steps[1].with_mean:
        mean = np.asarray(steps[1].mean_, dtype=np.float64)
    if len(steps) == 2 and steps[1].with_std:
        scale = np.asarray(steps[1].scale_, dtype=np.float64)
    return {"columns": columns, "out": np.arange(out.start, out.stop), "fill": fill,
            "mean": mean, "scale": scale}


def _categorical_branch(name: str, steps: list[Any], columns: list[str], out: slice) -> dict:
    """``SimpleImputer`` then ``OneHotEncoder(handle_unknown="ignore")``."""
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
    for cats in onehot.categories_:
        _require(all(isinstance(c, str) for c in cats),
                 f"branch {name!r}: categories must be strings")
    vocab = [tuple(cats) for cats in onehot.categories_]
    sizes = [len(v) for v in vocab]
    _require(sum(sizes) == out.stop - out.start, f"branch {name!r}: output width differs")
    offset = out.start + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    # A missing value becomes the imputer's fill value, itself looked up like any code.
    fill = [v.index(f) if f in v else None for v, f in zip(vocab, imputer.statistics_)]
    return {"columns": columns, "vocab": vocab, "offset": offset, "fill": fill}


def _check_imputer(imputer: SimpleImputer, name: str) -> None:
    _require(not imputer.add_indicator, f"branch {name!r}: imputer add_indicator=True")
    mv = imputer.missing_values
    _require(isinstance(mv, float) and math.isnan(mv),
             f"branch {name!r}: imputer missing_values must be NaN")


def _branches(ct: Any) -> tuple[list[dict], list[dict]]:
    """The numeric and the categorical branches of a fitted ``ColumnTransformer``."""
    numeric, categorical = [], []
    for name, trans, columns in ct.transformers_:
        out = ct.output_indices_[name]
        if trans == "drop" or out.stop == out.start:
            continue
        _require(isinstance(trans, Pipeline), f"branch {name!r} must be a Pipeline")
        _require(all(isinstance(c, str) for c in columns),
                 f"branch {name!r} must select columns by name")
        steps = [s for _, s in trans.steps]
        if isinstance(steps[-1], OneHotEncoder):
            categorical.append(_categorical_branch(name, steps, list(columns), out))
        else:
            numeric.append(_numeric_branch(name, steps, list(columns), out))
    return numeric, categorical


def compile_encoder(ct: Any) -> Encoder:
    """A fitted ``ColumnTransformer`` as an :class:`Encoder`: all branches merged into one
    numeric and one categorical block, so encoding is a fixed dozen numpy calls."""
    _require(isinstance(ct, ColumnTransformer),
             f"first step must be a ColumnTransformer, got {type(ct).__name__}")
    _require(not getattr(ct, "sparse_output_", False), "ColumnTransformer output is sparse")
    numeric, categorical = _branches(ct)
    n_out = sum(len(b["out"]) for b in numeric) + sum(
        len(v) for b in categorical for v in b["vocab"])
    _require(n_out > 0, "ColumnTransformer produces no columns")
    _require(n_out == max(ct.output_indices_[n].stop for n, _, _ in ct.transformers_),
             "ColumnTransformer output has gaps")
    num_names = [c for b in numeric for c in b["columns"]]
    cat_names = [c for b in categorical for c in b["columns"]]
    _require(len(set(num_names + cat_names)) == len(num_names + cat_names),
             "a column is used twice")
    vocabulary = {c: v for b in categorical for c, v in zip(b["columns"], b["vocab"])}
    width = max((len(v) for v in vocabulary.values()), default=0) + 2
    table = np.full((len(cat_names), width), n_out, dtype=np.intp)  # n_out: the spare
    j = 0
    for b in categorical:
        for vocab, offset, fill in zip(b["vocab"], b["offset"], b["fill"]):
            table[j, 2:2 + len(vocab)] = offset + np.arange(len(vocab))
            if fill is not None:
                table[j, 0] = offset + fill
            j += 1

    def joined(key: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([b[key] for b in numeric]) if numeric else empty

    return Encoder(num_names, cat_names, vocabulary, n_out, joined("out", np.zeros(0, np.intp)),
                   joined("fill", np.zeros(0)), joined("mean", np.zeros(0)),
                   joined("scale", np.zeros(0)), table)


# --------------------------------------------------------------------------- trees


def pack_trees(trees: list[dict[str, np.ndarray]], n_in: int, float32: bool) -> TreeBank:
    """Pack sklearn-style trees (``left``/``right`` = -1 at leaves) into one :class:`TreeBank`.

    Trees are sorted deepest first so each level of the walk only touches the trees
    still descending; leaves point at themselves.
    """
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
    sorted_depths = depths[order]
    level_width = [int((sorted_depths > d).sum()) for d in range(int(depths.max()))]
    nodes = {"feature": feature, "threshold": _float32_floor(threshold) if float32 else threshold,
             "left": left, "right": right, "value": value, "starts": starts}
    return TreeBank(nodes, level_width, float32, n_in)


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


# --------------------------------------------------------------------------- estimators


def _linear(est: Any, n_in: int) -> Linear:
    coef = np.asarray(est.coef_, dtype=np.float64)
    _require(coef.shape == (1, n_in), f"coef_ has shape {coef.shape}, expected (1, {n_in})")
    # The encoder's spare column (unknown categories) weighs nothing.
    return Linear(np.append(coef[0], 0.0), float(np.asarray(est.intercept_).reshape(-1)[0]))


def _forest(est: Any, n_in: int) -> Forest:
    _require(est.n_outputs_ == 1 and int(est.n_classes_) == 2,
             "forest must be single-output binary")
    trees = []
    for tree in est.estimators_:
        t = tree.tree_
        value = np.asarray(t.value)
        _require(value.ndim == 3 and value.shape[1:] == (1, 2),
                 f"tree value has shape {value.shape}")
        leaf = t.children_left == -1
        # sklearn >= 1.4 stores class fractions in the leaves and returns them as is.
        _require(bool(np.allclose(value[leaf, 0, :].sum(axis=1), 1.0, rtol=0, atol=1e-12)),
                 "tree leaves do not hold class fractions (other sklearn version?)")
        trees.append({"left": t.children_left, "right": t.children_right,
                      "feature": t.feature, "threshold": t.threshold, "value": value[:, 0, 1]})
    return Forest(pack_trees(trees, n_in, float32=True))


def _boosting(est: Any, n_in: int) -> Boosting:
    _require(est.n_trees_per_iteration_ == 1, "boosting must be binary")
    _require(getattr(est, "_preprocessor", None) is None
             and (est.is_categorical_ is None or not np.any(est.is_categorical_)),
             "native categorical features are not supported")
    _require(type(est._loss).__name__ == "HalfBinomialLoss", "loss must be log-loss")
    baseline = np.asarray(est._baseline_prediction, dtype=np.float64)
    _require(baseline.size == 1, "baseline prediction must be a scalar")
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
    return Boosting(pack_trees(trees, n_in, float32=False), float(baseline.reshape(-1)[0]))


ESTIMATORS = ((LogisticRegression, _linear), (RandomForestClassifier, _forest),
              (ExtraTreesClassifier, _forest), (HistGradientBoostingClassifier, _boosting))
FAMILIES = {Linear: "logistic_regression", Forest: "random_forest",
            Boosting: "hist_gradient_boosting"}


def _compile_estimator(est: Any, n_in: int) -> Any:
    classes = getattr(est, "classes_", None)
    _require(classes is not None and list(np.asarray(classes)) == [0, 1],
             f"the estimator's classes must be [0, 1], got {classes}")
    for cls, compiled in ESTIMATORS:
        if type(est) is cls:
            return compiled(est, n_in)
    supported = ", ".join(c.__name__ for c, _ in ESTIMATORS)
    raise UnsupportedModelError(f"fast path cannot compile a {type(est).__name__}; "
                                f"supported estimators: {supported}")


def _compile_calibrator(cal: Any) -> Any:
    if type(cal) is _SigmoidCalibration:
        return Sigmoid(cal.a_, cal.b_)
    if type(cal) is IsotonicRegression:
        _require(cal.out_of_bounds == "clip", "isotonic calibrator must clip")
        x, y = np.asarray(cal.X_thresholds_), np.asarray(cal.y_thresholds_)
        # With float64 knots, scipy's interp1d delegates to np.interp.
        _require(x.dtype == np.float64 and y.dtype == np.float64 and len(x) >= 1,
                 "isotonic knots must be float64")
        return Isotonic(x, y, cal.X_min_, cal.X_max_)
    raise UnsupportedModelError(f"fast path cannot compile a {type(cal).__name__} calibrator")


def _member(pipeline: Any, calibrator: Any = None) -> Member:
    """One preprocessing + estimator pipeline, optionally followed by its calibrator."""
    if type(pipeline).__name__ == "FrozenEstimator":  # cv="prefit" style calibration
        pipeline = pipeline.estimator
    _require(isinstance(pipeline, Pipeline) and len(pipeline.steps) == 2,
             "expected Pipeline([('prep', ColumnTransformer), ('model', estimator)])")
    encoder = compile_encoder(pipeline.steps[0][1])
    estimator = _compile_estimator(pipeline.steps[1][1], encoder.n_out)
    if calibrator is not None:
        calibrator = _compile_calibrator(calibrator)
        # sklearn feeds decision_function when the pipeline has one, else predict_proba.
        _require(hasattr(pipeline, "decision_function") == estimator.has_decision,
                 "cannot tell which response the calibrator was fitted on")
    return Member(encoder, estimator, calibrator)


# --------------------------------------------------------------------------- the model


def compile_model(model: Any) -> FastModel:
    """Compile a fitted pipeline, a ``CalibratedClassifierCV`` of one, or a soft
    ``VotingClassifier`` of pipelines into a :class:`FastModel`.

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
            members.append(_member(cc.estimator, cc.calibrators[0]))
        kind = f"{_family(members[0])}+{model.calibrated_classifiers_[0].method}"
        return FastModel(members, kind)
    if isinstance(model, VotingClassifier):
        _require(model.voting == "soft" and model.weights is None,
                 "only an unweighted soft VotingClassifier is supported")
        _require(list(np.asarray(model.classes_)) == [0, 1], "classes must be [0, 1]")
        _require(len(model.estimators_) >= 1, "the vote has no fitted members")
        members = [_member(est) for est in model.estimators_]
        return FastModel(members, "blend:" + "+".join(_family(m) for m in members))
    if isinstance(model, Pipeline):
        member = _member(model)
        return FastModel([member], _family(member))
    raise UnsupportedModelError(f"fast path cannot compile a {type(model).__name__}; expected a "
                                "Pipeline, a CalibratedClassifierCV of one or a soft "
                                "VotingClassifier of them")


def _family(member: Member) -> str:
    return FAMILIES[type(member.estimator)]


# --------------------------------------------------------------------------- frames


def raw_from_frame(fast: FastModel, frame: pd.DataFrame) -> np.ndarray:
    """Raw matrix of a validated frame: floats, and codes (any dtype; NA = missing)."""
    raw = np.empty((len(frame), len(fast.features)))
    for j, name in enumerate(fast.features):
        col = frame[name]
        if name in fast.vocabulary:
            index = pd.Index(fast.vocabulary[name]).get_indexer(col.astype(object))
            raw[:, j] = index.astype(np.float64)
            raw[col.isna().to_numpy(), j] = np.nan
        else:
            raw[:, j] = pd.to_numeric(col).to_numpy(dtype=np.float64, na_value=np.nan)
    return raw


def predict_frame(fast: FastModel, frame: pd.DataFrame, baseline: Any = None) -> np.ndarray:
    """P(default) for a validated frame (extra columns are ignored)."""
    return fast.predict_raw(raw_from_frame(fast, frame), baseline)


def score_frame(predictor: Any, frame: pd.DataFrame, reasons: bool = True) -> pd.DataFrame:
    """A :class:`ml.serving.predictor.Predictor`'s output columns for a validated frame,
    on the frame's index (training jobs, tests and benchmarks)."""
    scores = predictor.score_raw(raw_from_frame(predictor.fast, frame), reasons=reasons)
    return pd.DataFrame(predictor.output_columns(scores), index=frame.index)


def check_against(model: Any, fast: FastModel, frame: pd.DataFrame, atol: float = 1e-9) -> float:
    """Largest |Δ| between ``fast`` and ``model.predict_proba(frame)[:, 1]``; raises past ``atol``.

    The trainer runs it on every training row before it writes an artifact: any
    structure this module misreads is caught before a single request is answered.
    """
    expected = np.asarray(model.predict_proba(frame))[:, 1]
    got = predict_frame(fast, frame)
    worst = float(np.max(np.abs(expected - got))) if len(got) else 0.0
    if not worst <= atol:
        raise UnsupportedModelError(f"fast path disagrees with sklearn by {worst:.3g} "
                                    f"(> {atol:g}) on the check rows")
    return worst
