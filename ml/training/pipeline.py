"""Features stage: one sklearn ``Pipeline`` per candidate model, built from the spec.

All preprocessing lives inside the pipeline (impute → scale for numbers, impute →
one-hot for categories), so the pickled object is the whole model: no train/serve skew.
Only stock sklearn classes are used, so unpickling never needs this package's
training code. Protected columns are never selected (``remainder="drop"``).

The *scorecard* family (:data:`SCORECARD`, ml.training.scorecard) is optbinning's
``Scorecard`` instead of a pipeline: it bins the spec's model features itself.
Gradient boosting honours each numeric feature's ``risk_increases_with`` through
``monotonic_cst``.

A *blend* (:data:`BLEND`) is a soft-voting ``VotingClassifier`` of such pipelines, one
per member family: still one stock sklearn object, and every member drops the
protected columns on its own.
"""
from __future__ import annotations

from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (HistGradientBoostingClassifier, RandomForestClassifier,
                              VotingClassifier)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.spec.schema import DatasetSpec
from ml.training import scorecard

MISSING_CATEGORY = "__missing__"

SCORECARD = scorecard.FAMILY
FAMILIES = ("logistic_regression", "random_forest", "hist_gradient_boosting", SCORECARD)
# A scorecard never joins a blend: a mean of PDs has no points table to explain it.
BLENDABLE = ("logistic_regression", "random_forest", "hist_gradient_boosting")
# Not a family of its own: the mean P(default) of the best configurations of two or more
# families. Its "params" map each member family to that family's ``step__param`` overrides.
BLEND = "blend"

# Small grids on purpose: the whole training run must stay under a minute on 2 cores.
PARAM_GRIDS: dict[str, dict[str, list[Any]]] = {
    "logistic_regression": {
        "model__C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
        "model__class_weight": [None, "balanced"],
    },
    "random_forest": {
        "model__max_features": ["sqrt", 0.3],
        "model__min_samples_leaf": [1, 3, 5],
        "model__max_depth": [None, 8],
    },
    "hist_gradient_boosting": {
        "model__learning_rate": [0.03, 0.1],
        "model__max_leaf_nodes": [7, 15],
        "model__l2_regularization": [0.0, 1.0],
    },
    SCORECARD: scorecard.PARAM_GRID,
}


def build_preprocessor(spec: DatasetSpec) -> ColumnTransformer:
    """Column transformer for the spec's model features (protected columns dropped)."""
    numeric = Pipeline([
        ("impute", SimpleImputer(strategy="median")),
        ("scale", StandardScaler()),
    ])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
        # Categories come from the spec, so every allowed code has a column even when
        # the training split never saw it; anything else is ignored at predict time.
        ("onehot", OneHotEncoder(
            categories=[[*f.codes, MISSING_CATEGORY] for f in spec.categorical],
            handle_unknown="ignore", sparse_output=False)),
    ])
    return ColumnTransformer(
        [("num", numeric, [f.name for f in spec.numeric]),
         ("cat", categorical, [f.name for f in spec.categorical])],
        remainder="drop",
    )


def build_estimator(family: str, seed: int) -> Any:
    """An unfitted estimator of one model family with sensible defaults."""
    if family == "logistic_regression":
        return LogisticRegression(max_iter=2000)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=300, n_jobs=1, random_state=seed)
    if family == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(max_iter=200, early_stopping=False,
                                              random_state=seed)
    raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")


def build_pipeline(spec: DatasetSpec, family: str, seed: int,
                   params: dict[str, Any] | None = None) -> Any:
    """The full model: preprocessing then the estimator, with ``step__param`` overrides
    (for :data:`SCORECARD`, optbinning's ``Scorecard``)."""
    if family == SCORECARD:
        return scorecard.build_scorecard(spec, seed, params)
    estimator = build_estimator(family, seed)
    if family == "hist_gradient_boosting" and any(f.direction for f in spec.numeric):
        estimator.set_params(monotonic_cst=monotonic_cst(spec))
    pipe = Pipeline([("prep", build_preprocessor(spec)), ("model", estimator)])
    if params:
        pipe.set_params(**params)
    return pipe


def monotonic_cst(spec: DatasetSpec) -> list[int]:
    """Gradient boosting's constraint per preprocessed column: the spec's direction of each
    numeric feature (+1: risk rises with it), then 0 for every one-hot column.

    The scaler keeps the order of values, so a constraint on the scaled column is one on
    the feature.
    """
    n_onehot = sum(len(f.codes) + 1 for f in spec.categorical)  # + the missing column
    return [f.direction for f in spec.numeric] + [0] * n_onehot


def build_blend(spec: DatasetSpec, seed: int, members: dict[str, dict[str, Any]]
                ) -> VotingClassifier:
    """A soft vote of one full pipeline per member family: the mean of their P(default).

    Unweighted on purpose: weights would be one more thing to tune on the few hundred
    rows the search has, and the mean is what the search scored (see ml.training.tune).

    Args:
        spec: the dataset spec (every member gets its own preprocessing of it).
        seed: random state of every member.
        members: member family → its ``step__param`` overrides, in voting order.
    """
    if len(members) < 2:
        raise ValueError(f"a blend needs at least two families, got {list(members)}")
    return VotingClassifier([(family, build_pipeline(spec, family, seed, params))
                             for family, params in members.items()], voting="soft")


def build_model(spec: DatasetSpec, family: str, seed: int,
                params: dict[str, Any] | None = None) -> Pipeline | VotingClassifier:
    """The unfitted model of ``family`` (one of :data:`FAMILIES`, or :data:`BLEND`)."""
    if family == BLEND:
        return build_blend(spec, seed, params or {})
    return build_pipeline(spec, family, seed, params)
