"""Tuning: the blend candidate is scored without fits, chosen only when it ranks better."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from ml.training import tune
from ml.training.pipeline import (BLEND, build_blend)

# One cheap configuration per family: the search's mechanics, not its grids, are tested.
TINY_GRIDS = {
    "logistic_regression": {"model__C": [0.1]},
    "random_forest": {"model__n_estimators": [20], "model__min_samples_leaf": [5]},
    "hist_gradient_boosting": {"model__max_iter": [20]},
}


@pytest.fixture()
def tiny_grids(monkeypatch):
    for family, grid in TINY_GRIDS.items():
        monkeypatch.setitem(tune.PARAM_GRIDS, family, grid)


def _candidate(family, oof, y):
    return tune.Candidate(family, {"model__x": family}, float(roc_auc_score(y, oof)), 1,
                          oof=oof)


def test_blend_scores_every_combination_on_the_mean_of_out_of_fold_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    noisy = [y + rng.normal(0, s, len(y)) for s in (1.0, 1.2, 1.5)]
    candidates = [_candidate(f, p, y) for f, p in zip(tune.FAMILIES, noisy)]
    blend = tune.blend(candidates, y)
    assert blend.family == BLEND
    assert blend.n_configs == 4  # three pairs and the triple
    expected = {tuple(r["params"]): r["oof_auc"] for r in blend.all_results}
    pair = ("logistic_regression", "random_forest")
    assert expected[pair] == pytest.approx(roc_auc_score(y, (noisy[0] + noisy[1]) / 2))
    assert blend.oof_auc == max(expected.values())
    assert roc_auc_score(y, blend.oof) == blend.oof_auc
    assert blend.params == {c.family: c.params for c in candidates
                            if c.family in blend.params}


def test_a_single_family_keeps_a_tie_with_the_blend():
    y = np.array([0, 1] * 20)
    single = _candidate("logistic_regression", y + 0.0, y)
    tied = tune.Candidate(BLEND, {}, single.oof_auc, 1)
    assert tune.select([single, tied]) is single


def test_search_adds_a_blend_only_when_two_families_compete(tiny_grids, spec, dataset):
    X, y = dataset.X, dataset.y
    alone = tune.search(spec, X, y, seed=0, families=("logistic_regression",), n_jobs=1)
    assert [c.family for c in alone] == ["logistic_regression"]
    pair = tune.search(spec, X, y, seed=0, families=("logistic_regression", "random_forest"),
                       n_jobs=1)
    assert [c.family for c in pair] == ["logistic_regression", "random_forest", BLEND]
    assert list(pair[-1].params) == ["logistic_regression", "random_forest"]


def test_a_blends_out_of_fold_scores_are_what_the_fitted_vote_predicts(
        tiny_grids, spec, dataset):
    """The claim that lets the search score a blend without fitting it."""
    X, y = dataset.X, dataset.y
    candidates = tune.search(spec, X, y, seed=3, families=tuple(TINY_GRIDS), n_jobs=1)
    blend = candidates[-1]
    vote = build_blend(spec, 3, blend.params)
    oof = np.empty(len(y))
    for train, test in StratifiedKFold(tune.SEARCH_FOLDS, shuffle=True,
                                       random_state=3).split(X, y):
        oof[test] = clone(vote).fit(X.iloc[train], y[train]).predict_proba(X.iloc[test])[:, 1]
    assert np.max(np.abs(oof - blend.oof)) <= 1e-12


def test_a_blend_is_served_uncalibrated(spec):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, len(y)), 0.01, 0.99) ** 3
    members = {"logistic_regression": {}, "random_forest": {}}
    blend = tune.Candidate(BLEND, members, float(roc_auc_score(y, p)), 1, oof=p)
    chosen, scores, mapped = tune.choose_calibration(spec, blend, y, seed=0)
    assert chosen == "none" and set(scores) == set(tune.CALIBRATIONS)
    assert mapped is p
    with pytest.raises(ValueError, match="uncalibrated"):
        tune.make_model(spec, BLEND, members, "sigmoid", seed=0)


def test_a_blend_needs_two_families(spec):
    with pytest.raises(ValueError, match="at least two"):
        build_blend(spec, 0, {"random_forest": {}})
