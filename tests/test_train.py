"""Model tests: quality floors, reproducibility, protected attributes, other data sets."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml import config
from ml.__main__ import main
from ml.artifact import load_artifact, resolve
from ml.data import load_dataset, read_raw
from ml.schema import DatasetSpec, validate_record
from ml.train import GRADES, TrainOptions, train

pytestmark = pytest.mark.slow


def test_default_training_meets_the_quality_bars(full_training):
    directory, card = full_training
    cv = card["metrics"]["cv"]
    assert (cv["n_splits"], cv["n_repeats"]) == (5, 5)
    assert cv["roc_auc_mean"] >= 0.79
    # The bar is 0.53. Out-of-fold search and the Platt-mapped threshold gave
    # 0.532 (seed 42) and 0.534 (seed 7) with the random forest alone; the blend of the
    # three families, chosen on out-of-fold AUC, gives 0.528 on both seeds.
    assert cv["expected_cost_mean"] <= 0.53
    test = card["metrics"]["test"]
    assert (test["expected_cost"] < test["expected_cost_reject_all"]
            < test["expected_cost_approve_all"])
    for plot in ("roc", "calibration", "confusion_matrix", "score_distribution"):
        assert (directory / "plots" / f"{plot}.png").stat().st_size > 5000


def test_card_describes_the_model(full_training):
    directory, card = full_training
    assert card["version"] == json.loads((directory / "model_card.json").read_text())["version"]
    for key in ("name", "version", "created_at", "git_commit", "data", "spec", "libraries",
                "model", "threshold", "metrics", "reference", "example", "self_test", "artifact"):
        assert key in card
    assert card["data"]["sha256"] == load_dataset(config.DEFAULT_DATA, DatasetSpec.load(
        config.DEFAULT_SPEC)).sha256
    assert 0 < card["threshold"] < 1
    assert card["grades"] == list(GRADES)
    assert set(card["reference"]["features"]) == {f["name"] for f in card["spec"]["features"]}
    for ref in card["reference"]["features"].values():
        assert sum(ref["proportions"]) == pytest.approx(1)
    fairness = card["metrics"]["fairness"]
    assert set(fairness) == {"personal_status_and_sex", "foreign_worker"}
    assert all(0 <= f["approval_rate_ratio"] <= 1 for f in fairness.values())


def test_example_in_the_card_is_a_valid_request(full_training):
    _, card = full_training
    assert validate_record(DatasetSpec.from_dict(card["spec"]), card["example"]) == []


def test_self_test_figure_is_what_the_pickle_predicts(full_training):
    directory, card = full_training
    artifact = load_artifact(directory)
    frame = pd.DataFrame([card["self_test"]["record"]])
    assert artifact.model.predict_proba(frame)[0, 1] == card["self_test"]["probability_of_default"]


def _quick(out, seed=3, **kw):
    return train(TrainOptions(out=out, seed=seed, families=("logistic_regression", "random_forest"),
                              cv_repeats=1, plots=False, **kw))


def test_same_seed_gives_identical_metrics_and_predictions(tmp_path, dataset):
    (dir_a, card_a), (dir_b, card_b) = _quick(tmp_path / "a"), _quick(tmp_path / "b")
    assert card_a["metrics"] == card_b["metrics"]
    assert card_a["threshold"] == card_b["threshold"]
    p_a = load_artifact(dir_a).model.predict_proba(dataset.X)
    p_b = load_artifact(dir_b).model.predict_proba(dataset.X)
    np.testing.assert_array_equal(p_a, p_b)


def test_protected_attributes_never_change_a_prediction(full_training, dataset, spec):
    model = load_artifact(full_training[0]).model
    before = model.predict_proba(dataset.X)[:, 1]
    shuffled = dataset.X.copy()
    for f in spec.protected:
        shuffled[f.name] = np.roll(shuffled[f.name].to_numpy(), 17)
        shuffled.loc[shuffled.index[::3], f.name] = f.codes[-1]
    np.testing.assert_array_equal(model.predict_proba(shuffled)[:, 1], before)


def test_more_months_of_duration_never_lower_the_risk_of_a_typical_applicant(full_training):
    _, card = full_training
    model = load_artifact(full_training[0]).model
    base = card["reference"]["baseline"]
    rows = pd.DataFrame([{**base, "duration_in_month": d} for d in (6, 12, 24, 48, 72)])
    p = model.predict_proba(rows)[:, 1]
    assert p[-1] > p[0]


def test_another_credit_csv_with_missing_values_trains_without_code_change(tmp_path, capsys):
    """A different layout: other column names, labels 'default'/'repaid', holes everywhere."""
    raw = read_raw(config.DEFAULT_DATA)
    rng = np.random.default_rng(0)
    raw = raw.rename(columns={"creditability": "loan_status", "credit_amount": "Amount (EUR)",
                              "purpose": "Loan Purpose"})
    raw["loan_status"] = raw["loan_status"].map({"bad": "default", "good": "repaid"})
    for column in raw.columns.drop("loan_status"):
        raw.loc[rng.random(len(raw)) < 0.08, column] = ""
    csv = tmp_path / "portfolio.csv"
    raw.to_csv(csv, index=False)
    spec_path = tmp_path / "portfolio.spec.yaml"
    assert main(["spec", str(csv), "--target", "loan_status", "--positive", "default",
                 "--protected", "personal_status_and_sex", "foreign_worker",
                 "--out", str(spec_path)]) == 0
    spec = DatasetSpec.load(spec_path)
    amount = spec.feature("amount_eur")
    assert amount.nullable and amount.column == "Amount (EUR)"
    out = tmp_path / "models"
    assert main(["-q", "train", "--data", str(csv), "--spec", str(spec_path), "--out", str(out),
                 "--families", "logistic_regression", "hist_gradient_boosting",
                 "--cv-repeats", "1", "--no-plots"]) == 0
    assert "artifact" in capsys.readouterr().out
    artifact = load_artifact(out)
    assert artifact.spec.target.positive == "default"
    assert artifact.card["metrics"]["cv"]["roc_auc_mean"] > 0.7
    assert (resolve(out) / "evaluation.json").is_file()
    record = {**artifact.card["example"], "amount_eur": None}
    assert validate_record(artifact.spec, record) == []
    assert 0 < artifact.model.predict_proba(pd.DataFrame([record]))[0, 1] < 1
