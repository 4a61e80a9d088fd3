"""Model tests: quality floors, reproducibility, protected attributes, other data sets."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml.spec import config
from ml.__main__ import main
from ml.serving.artifact import resolve
from ml.training.publish import load_artifact
from ml.training.data import load_dataset, read_raw
from ml.spec.schema import DatasetSpec, validate_record
from ml.training import train as train_module
from ml.training.train import GRADES, TrainOptions, sample_rows, train

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


def test_large_data_searches_a_sample_and_repeats_cv_less(tmp_path, monkeypatch):
    """On many rows the search sees a stratified sample and the CV fewer repeats, so that
    training time stays reasonable (30,000 rows ran for over 20 minutes before)."""
    monkeypatch.setattr(train_module, "SEARCH_MAX_ROWS", 300)
    monkeypatch.setattr(train_module, "CV_MAX_ROWS", 2000)
    _, card = train(TrainOptions(out=tmp_path, families=("logistic_regression",),
                                 cv_repeats=5, n_jobs=1, plots=False))
    assert "CV on 300 rows of train + validation" in card["model"]["selection"]
    assert card["metrics"]["cv"]["n_repeats"] == 2
    assert card["data"]["rows"] == 1000


def test_sample_rows_is_stratified_and_keeps_small_data_whole(dataset):
    X, y = sample_rows(dataset.X, dataset.y, 200, seed=1)
    assert len(X) == len(y) == 200 and y.mean() == pytest.approx(0.3)
    assert (X.index.isin(dataset.X.index)).all()
    X_all, _ = sample_rows(dataset.X, dataset.y, 5000, seed=1)
    assert X_all is dataset.X


def test_an_awkward_csv_goes_from_draft_to_served_predictions(make_app, tmp_path, capsys):
    """0/1 target, headers that slug alike or carry accents, an id, a constant, numeric
    category codes and a numeric protected attribute: draft, train, serve, form, score."""
    rng = np.random.default_rng(4)
    n = 400
    months = rng.integers(0, 5, n)
    region = rng.choice([1, 2, 3], n)
    bad = rng.random(n) < 1 / (1 + np.exp(1.5 - 0.6 * months - 0.8 * (region == 3)))
    frame = pd.DataFrame({
        "ID": np.arange(1, n + 1), "Età": np.where(rng.random(n) < 0.1, "", months + 30),
        "Amount": rng.integers(100, 9000, n), "amount": rng.normal(size=n).round(6),
        "Months late": months, "Region": region, "Branch": "HQ",
        "Sex": rng.choice([1, 2], n), "Default?": bad.astype(int)})
    csv, spec_path, out = tmp_path / "awkward.csv", tmp_path / "spec.yaml", tmp_path / "m"
    frame.to_csv(csv, index=False)
    assert main(["spec", str(csv), "--target", "Default?", "--positive", "1", "--protected",
                 "Sex", "--categorical", "Region", "--out", str(spec_path)]) == 0
    assert main(["-q", "train", "--data", str(csv), "--spec", str(spec_path), "--out", str(out),
                 "--families", "logistic_regression", "--cv-repeats", "1", "--no-plots"]) == 0
    card = load_artifact(out).card
    assert [g["group"] for g in card["metrics"]["fairness"]["sex"]["groups"]] == ["1", "2"]
    client = make_app(MODEL_DIR=str(out), TESTING=False).test_client()
    example = client.get("/model").get_json()["example"]
    assert set(example) == {"eta", "amount", "amount_2", "months_late", "region"}
    assert client.post("/predict", json=example).status_code == 200
    assert client.post("/predict", json={**example, "region": 3}).status_code == 400
    form = {k: "" if v is None else str(v) for k, v in example.items()}
    assert "result-pd" in client.post("/", data=form).get_data(as_text=True)
    assert main(["score", "--model", str(out), str(csv), str(tmp_path / "scored.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "scored.csv")) == n
