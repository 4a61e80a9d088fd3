"""The scorecard family: optimal binning, weight of evidence, a logistic regression, points.

Built with optbinning, the maintained library made for this: a ``BinningProcess`` bins
every model feature (protected columns are never named), with the bad rate forced
monotone: in the spec's direction where the spec states one (``risk_increases_with``),
else ascending or descending, whichever the data supports better; categories are
grouped by bad rate. Each bin's weight of evidence feeds a logistic regression, and
``Scorecard`` scales the result to points with the spec's scaling (ml.spec.schema.Scaling).

Two choices keep the points explainable:

* Missing values get a bin of their own, with its empirical WoE (``metric_missing``),
  so a missing value weighs what missing values weighed in the data.
* A sign-constrained logistic regression
  (:class:`ml.training.scorecard_model.SignedLogisticRegression`): a characteristic
  whose coefficient comes out with the sign opposite to its own WoE (collinearity) is
  dropped and the rest refitted, so every characteristic's points rise with its
  good:bad odds, and a stated direction holds in the final score too.

:func:`compile_scorecard` turns the fitted object into the serving side's
:class:`ml.serving.scorecard.Binning` (bin edges, category groups, missing bins,
points), checked against optbinning's own score by ml.training.compile.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ml.serving.compiled import Member
from ml.serving.errors import UnsupportedModelError
from ml.serving.scorecard import Binning, Characteristic, Points
from ml.spec.schema import CATEGORICAL, DatasetSpec

FAMILY = "scorecard"

# Small on purpose: every configuration re-bins every feature (about 2 s a fit); coarser
# pre-bins (min_prebin_size 0.1) lost 0.008 of 5-fold AUC on German Credit.
PARAM_GRID: dict[str, list[Any]] = {"estimator__C": [0.1, 1.0]}

# optbinning's names for a bad rate that rises or falls with the value.
TRENDS = {1: "ascending", -1: "descending", 0: "auto_asc_desc"}


def build_scorecard(spec: DatasetSpec, seed: int, params: dict[str, Any] | None = None) -> Any:
    """The unfitted scorecard of the spec's model features, with ``step__param`` overrides."""
    from optbinning import BinningProcess  # seconds to import: only when used

    from ml.training.scorecard_model import QuietScorecard, SignedLogisticRegression

    names = spec.feature_names
    binning = BinningProcess(
        variable_names=names,
        categorical_variables=[f.name for f in spec.categorical],
        binning_fit_params={f.name: {"monotonic_trend": TRENDS[f.direction]}
                            for f in spec.numeric},
        binning_transform_params={name: {"metric_missing": "empirical"} for name in names},
        n_jobs=1)
    s = spec.scaling
    model = QuietScorecard(binning_process=binning,
                           estimator=SignedLogisticRegression(
                               solver="newton-cholesky", max_iter=200, random_state=seed),
                           scaling_method="pdo_odds",
                           scaling_method_params={"pdo": s.pdo, "odds": s.base_odds,
                                                  "scorecard_points": s.base_points})
    if params:
        model.set_params(**params)
    return model


def is_scorecard(model: Any) -> bool:
    """Whether ``model`` is an optbinning ``Scorecard`` (without importing optbinning)."""
    return any(c.__name__ == "Scorecard" and c.__module__.startswith("optbinning")
               for c in type(model).__mro__)


def compile_scorecard(model: Any, spec: DatasetSpec) -> Member:
    """A fitted ``Scorecard`` as a member of the compiled model: a
    :class:`ml.serving.scorecard.Binning` and its :class:`ml.serving.scorecard.Points`.

    Every spec feature becomes a characteristic; one the binning process left out
    scores 0 points whatever its value. A category the training rows never showed
    gets the points of a neutral WoE (ln of the overall odds ratio, 0), as
    optbinning's ``predict_proba`` treats it.
    """
    _require(model.scaling_method == "pdo_odds" and not model.intercept_based
             and not model.rounding and not model.reverse_scorecard,
             "only an unrounded pdo_odds scorecard without intercept shift compiles")
    table = model.table(style="detailed")
    process = model.binning_process_
    selected = list(process.get_support(names=True))
    coef = model.estimator_.coef_.reshape(-1)
    intercept = float(np.asarray(model.estimator_.intercept_).reshape(-1)[0])
    s = model.scaling_method_params
    factor = s["pdo"] / np.log(2)
    offset = s["scorecard_points"] - factor * np.log(s["odds"])
    n = len(selected)
    characteristics = []
    for f in spec.features:
        if f.name not in selected:
            characteristics.append(Characteristic.constant(f.name, f.kind, f.codes))
            continue
        rows = table[table.Variable == f.name]
        points = rows.Points.to_numpy(dtype=np.float64)
        optb = process.get_binned_variable(f.name)
        _require(optb.special_codes is None, f"{f.name}: special codes are not supported")
        c = coef[selected.index(f.name)]
        neutral = -(_unknown_woe(optb) * c + intercept / n) * factor + offset / n
        # Rows: the bins, then "Special" (never hit without special codes), then "Missing".
        if f.kind == CATEGORICAL:
            groups = [list(map(str, g)) for g in optb.splits]
            characteristics.append(Characteristic.categorical(
                f.name, f.codes, groups, points[:len(groups)], points[-1], neutral))
        else:
            characteristics.append(Characteristic.numeric(
                f.name, np.asarray(optb.splits, dtype=np.float64),
                points[:len(optb.splits) + 1], points[-1]))
    return Member(Binning.build(characteristics),
                  Points(float(getattr(model, "intercept_", 0.0)), factor, offset))


def _unknown_woe(optb: Any) -> float:
    """The WoE optbinning's transform gives a category it never saw (its mean bad rate)."""
    from optbinning.binning.transformations import transform_event_rate_to_woe

    n_event, n_nonevent = optb._n_event.sum(), optb._n_nonevent.sum()
    return float(transform_event_rate_to_woe(n_event / (n_event + n_nonevent),
                                             n_nonevent, n_event))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError("cannot compile the scorecard: " + message)
