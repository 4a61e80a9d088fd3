"""The predictor: decisions, grades, reason codes, self-test, and card checks."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.serving import signing
from ml.serving.artifact import CARD_FILE, Artifact, library_versions, resolve
from ml.serving.errors import ArtifactError
from ml.serving.predictor import MAX_REASONS, OUTPUT_COLUMNS, Predictor
from ml.spec.config import DEFAULT_DATA
from ml.training.compile import compile_model, score_frame
from ml.training.data import load_dataset, read_raw, records_to_frame
from ml.training.pipeline import BLEND, build_model, build_pipeline
from ml.training.publish import load_artifact, save_artifact
from ml.spec.schema import DatasetSpec
from ml.training.train import baseline, record_from_row

GRADES = [{"grade": "A", "max_pd": 0.05, "label": "very low risk"},
          {"grade": "B", "max_pd": 0.10, "label": "low risk"},
          {"grade": "C", "max_pd": 0.20, "label": "moderate risk"},
          {"grade": "D", "max_pd": 0.35, "label": "elevated risk"},
          {"grade": "E", "max_pd": 0.50, "label": "high risk"},
          {"grade": "F", "max_pd": 1.0, "label": "very high risk"}]
SMALL = {"logistic_regression": {"model__C": 0.3},
         "random_forest": {"model__n_estimators": 30, "model__min_samples_leaf": 3},
         "hist_gradient_boosting": {"model__max_iter": 40, "model__max_leaf_nodes": 15}}
# The trainer's blend: a soft vote mixing a linear member with a tree member.
SMALL[BLEND] = {"logistic_regression": SMALL["logistic_regression"],
                "random_forest": SMALL["random_forest"]}
FAMILIES = list(SMALL)


def make_card(model, X: pd.DataFrame, spec: DatasetSpec, **overrides) -> dict:
    example = record_from_row(X.iloc[7], spec)
    card = {"name": spec.name, "version": "test-1", "threshold": 0.3, "grades": GRADES,
            "spec": spec.to_dict(), "libraries": library_versions(),
            "reference": {"baseline": baseline(X, spec)}, "example": example,
            "self_test": {"record": example, "probability_of_default":
                          float(model.predict_proba(X.iloc[[7]])[0, 1])}}
    card.update(overrides)
    return card


def make_predictor(model, X, spec, **overrides) -> Predictor:
    return Predictor(Artifact(card=make_card(model, X, spec, **overrides), spec=spec,
                              path=Path("."), fast=compile_model(model)))


@pytest.fixture(scope="module")
def data(dataset):
    return dataset.X, dataset.y


@pytest.fixture(scope="module")
def fitted(spec, data):
    X, y = data
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_model(spec, family, 0, SMALL[family]).fit(X, y)
        return cache[family]
    return get


@pytest.fixture(scope="module")
def predictors(fitted, data, spec):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = make_predictor(fitted(family), data[0], spec)
        return cache[family]
    return get


@pytest.fixture(scope="module")
def predictor(predictors):
    return predictors("logistic_regression")


# ------------------------------------------------------------------ the answer


def test_answers_probability_decision_grade_and_reasons(predictor, data, spec):
    record = record_from_row(data[0].iloc[1], spec)
    (result,) = predictor.predict([record])
    assert set(result) == {"probability_of_default", "decision", "risk_grade", "reasons"}
    assert isinstance(result["probability_of_default"], float)
    assert 0.0 <= result["probability_of_default"] <= 1.0
    json.dumps(result)  # plain Python types only


@pytest.mark.parametrize("family", FAMILIES)
def test_probability_is_the_models(predictors, fitted, data, spec, family):
    X = data[0].head(50)
    results = predictors(family).predict([record_from_row(r, spec) for _, r in X.iterrows()])
    got = np.array([r["probability_of_default"] for r in results])
    assert np.max(np.abs(got - fitted(family).predict_proba(X)[:, 1])) <= 1e-9


def test_empty_batch_gives_empty_answer(predictor):
    assert predictor.predict([]) == []


def test_without_reasons_there_is_no_reasons_key_and_the_same_pd(predictor, data, spec):
    records = [record_from_row(data[0].iloc[i], spec) for i in range(5)]
    plain = predictor.predict(records, reasons=False)
    full = predictor.predict(records)
    assert all("reasons" not in r for r in plain)
    for a, b in zip(plain, full):
        assert a["probability_of_default"] == pytest.approx(b["probability_of_default"],
                                                            abs=1e-12)
        assert (a["decision"], a["risk_grade"]) == (b["decision"], b["risk_grade"])


@pytest.mark.parametrize("threshold", [0.0, 0.15, 0.3, 0.6, 1.0])
def test_decline_exactly_when_pd_reaches_the_threshold(fitted, data, spec, threshold):
    predictor = make_predictor(fitted("logistic_regression"), data[0], spec,
                               threshold=threshold)
    results = predictor.predict([record_from_row(data[0].iloc[i], spec) for i in range(60)],
                                reasons=False)
    for r in results:
        expected = "decline" if r["probability_of_default"] >= threshold else "approve"
        assert r["decision"] == expected


def test_pd_equal_to_the_threshold_is_declined(fitted, data, spec):
    model = fitted("logistic_regression")
    pd_value = float(model.predict_proba(data[0].iloc[[3]])[0, 1])
    predictor = make_predictor(model, data[0], spec, threshold=pd_value)
    (result,) = predictor.predict([record_from_row(data[0].iloc[3], spec)], reasons=False)
    assert result["decision"] == "decline"


# ------------------------------------------------------------------ grades


@pytest.mark.parametrize("pd_value, grade", [
    (0.0, "A"), (0.0499, "A"), (0.05, "B"), (0.0999, "B"), (0.1, "C"), (0.2, "D"),
    (0.3499, "D"), (0.35, "E"), (0.4999, "E"), (0.5, "F"), (0.99, "F"), (1.0, "F"),
])
def test_grade_bands_have_exclusive_upper_bounds_except_the_last(predictor, pd_value, grade):
    assert predictor.grade(pd_value) == grade


def test_grades_never_improve_as_pd_rises(predictor):
    letters = [predictor.grade(p) for p in np.linspace(0, 1, 1001)]
    assert letters == sorted(letters)
    assert set(letters) == {g["grade"] for g in GRADES}


def test_answer_grade_is_the_grade_of_its_pd(predictor, data, spec):
    for r in predictor.predict([record_from_row(data[0].iloc[i], spec) for i in range(40)],
                               reasons=False):
        assert r["risk_grade"] == predictor.grade(r["probability_of_default"])


# ------------------------------------------------------------------ reason codes


@pytest.mark.parametrize("family", FAMILIES)
def test_the_baseline_applicant_has_no_reasons(predictors, family):
    predictor = predictors(family)
    (result,) = predictor.predict([predictor.card["reference"]["baseline"]])
    assert result["reasons"] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_an_overdrawn_account_is_a_reason(predictors, family):
    predictor = predictors(family)
    baseline = predictor.card["reference"]["baseline"]
    assert baseline["status_of_existing_checking_account"] != "below_0_dm"
    record = {**baseline, "status_of_existing_checking_account": "below_0_dm"}
    (result,) = predictor.predict([record])
    reasons = {r["feature"]: r for r in result["reasons"]}
    reason = reasons["status_of_existing_checking_account"]
    assert reason["label"] == "Checking account balance"
    assert reason["value"] == "Overdrawn (below 0 DM)"
    assert reason["text"] == ("Checking account balance: Overdrawn (below 0 DM) raises the "
                              "estimated default risk")
    (base,) = predictor.predict([baseline], reasons=False)
    assert reason["impact"] == pytest.approx(
        result["probability_of_default"] - base["probability_of_default"], abs=1e-4)


def test_a_numeric_reason_shows_the_value_with_its_unit(predictor):
    record = {**predictor.card["reference"]["baseline"], "duration_in_month": 72}
    (result,) = predictor.predict([record])
    (reason,) = [r for r in result["reasons"] if r["feature"] == "duration_in_month"]
    assert reason["value"] == "72 months"
    assert reason["text"] == "Loan duration: 72 months raises the estimated default risk"


@pytest.mark.parametrize("family", FAMILIES)
def test_reasons_are_few_positive_largest_first_and_true(predictors, data, spec, family):
    predictor = predictors(family)
    baseline = predictor.card["reference"]["baseline"]
    records = [record_from_row(data[0].iloc[i], spec) for i in range(0, 1000, 25)]
    for record, result in zip(records, predictor.predict(records)):
        impacts = [r["impact"] for r in result["reasons"]]
        assert len(impacts) <= MAX_REASONS
        assert all(i > 0 for i in impacts)
        assert impacts == sorted(impacts, reverse=True)
        for reason in result["reasons"]:
            swapped = {**record, reason["feature"]: baseline[reason["feature"]]}
            (other,) = predictor.predict([swapped], reasons=False)
            assert reason["impact"] == round(result["probability_of_default"]
                                             - other["probability_of_default"], 4)


# ------------------------------------------------------------------ frames


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest"])
def test_predict_frame_agrees_with_predict(predictors, data, spec, family):
    predictor = predictors(family)
    X = data[0].iloc[::7]
    frame = score_frame(predictor, X)
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert frame.index.equals(X.index)
    results = predictor.predict([record_from_row(r, spec) for _, r in X.iterrows()])
    assert np.max(np.abs(frame["probability_of_default"].to_numpy()
                         - [r["probability_of_default"] for r in results])) <= 1e-12
    assert frame["decision"].tolist() == [r["decision"] for r in results]
    assert frame["risk_grade"].tolist() == [r["risk_grade"] for r in results]
    for k in range(MAX_REASONS):
        expected = [r["reasons"][k]["feature"] if len(r["reasons"]) > k else ""
                    for r in results]
        assert frame[f"reason_{k + 1}"].tolist() == expected


def test_predict_frame_without_reasons_leaves_them_empty(predictor, data):
    frame = score_frame(predictor, data[0].head(10), reasons=False)
    assert (frame[["reason_1", "reason_4"]] == "").all().all()


def test_missing_values_are_imputed_like_the_pipeline(spec, tmp_path):
    raw = read_raw(DEFAULT_DATA)
    rng = np.random.default_rng(3)
    for f in spec.features:
        raw.loc[rng.random(len(raw)) < 0.1, f.source_column] = ""
    raw.to_csv(tmp_path / "blanked.csv", index=False)
    nullable = spec.to_dict()
    for f in nullable["features"]:
        f["nullable"] = True
    nullable_spec = DatasetSpec.from_dict(nullable)
    d = load_dataset(tmp_path / "blanked.csv", nullable_spec)
    model = build_pipeline(nullable_spec, "random_forest", 0,
                           SMALL["random_forest"]).fit(d.X, d.y)
    predictor = make_predictor(model, d.X, nullable_spec)
    records = [record_from_row(d.X.iloc[i], nullable_spec) for i in range(100)]
    assert any(v is None for r in records for v in r.values())
    got = [r["probability_of_default"] for r in predictor.predict(records)]
    assert np.max(np.abs(np.array(got) - model.predict_proba(d.X.head(100))[:, 1])) <= 1e-9
    assert np.max(np.abs(score_frame(predictor, d.X)["probability_of_default"].to_numpy()
                         - model.predict_proba(d.X)[:, 1])) <= 1e-9


def test_records_to_frame_builds_a_validated_frame(spec, data):
    records = [record_from_row(data[0].iloc[i], spec) for i in range(3)]
    records[0]["purpose"] = None
    frame = records_to_frame(records, spec)
    assert frame["duration_in_month"].dtype == np.float64
    assert frame["purpose"].dtype == object and pd.isna(frame["purpose"].iloc[0])


# ------------------------------------------------------------------ self-test and card


@pytest.mark.parametrize("family", FAMILIES)
def test_self_test_passes_on_an_honest_card(predictors, family):
    predictors(family).self_test()


def _tamper_probability(card):
    card["self_test"]["probability_of_default"] += 1e-6


def _tamper_record(card):
    card["self_test"]["record"]["duration_in_month"] += 1


def _drop_self_test(card):
    del card["self_test"]


def _invalid_record(card):
    card["self_test"]["record"]["purpose"] = "spaceship"


@pytest.mark.parametrize("tamper, message", [
    (_tamper_probability, "self-test failed"),
    (_tamper_record, "self-test failed"),
    (_drop_self_test, "has no self_test.record"),
    (_invalid_record, "not a valid record"),
])
def test_self_test_fails_on_a_tampered_card(fitted, data, spec, tamper, message):
    model = fitted("logistic_regression")
    card = make_card(model, data[0], spec)
    card["self_test"] = json.loads(json.dumps(card["self_test"]))
    tamper(card)
    predictor = Predictor(Artifact(card=card, spec=spec, path=Path("."),
                                   fast=compile_model(model)))
    with pytest.raises(ArtifactError, match=message):
        predictor.self_test()


@pytest.mark.parametrize("overrides, message", [
    ({"threshold": None}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"grades": []}, "grades"),
    ({"grades": [{"grade": "A", "max_pd": 0.5}, {"grade": "B", "max_pd": 0.2}]}, "grades"),
    ({"grades": [{"grade": "A", "max_pd": 0.5}, {"grade": "B", "max_pd": 0.9}]}, "grades"),
    ({"grades": [{"grade": "A"}]}, "grades"),
    ({"reference": {}}, "reference.baseline"),
    ({"reference": {"baseline": {"duration_in_month": 12}}}, "reference.baseline"),
])
def test_a_malformed_card_is_refused(fitted, data, spec, overrides, message):
    with pytest.raises(ArtifactError, match=message):
        make_predictor(fitted("logistic_regression"), data[0], spec, **overrides)


def test_load_reads_a_saved_artifact(fitted, data, spec, tmp_path):
    model = fitted("hist_gradient_boosting")
    card = make_card(model, data[0], spec)
    save_artifact(model, card, tmp_path)
    predictor = Predictor.load(tmp_path)
    assert (predictor.name, predictor.version) == (spec.name, "test-1")
    assert predictor.threshold == 0.3
    assert predictor.grades == GRADES
    assert predictor.spec.feature_names == spec.feature_names
    assert predictor.card["artifact"]["compiled_format"] and predictor.signer
    predictor.self_test()


@pytest.mark.slow
def test_the_trained_artifact_passes_and_matches_sklearn(trained_model_dir, data):
    predictor = Predictor.load(trained_model_dir)
    assert not hasattr(predictor.artifact, "model")  # the compiled model only
    predictor.self_test()
    expected = load_artifact(trained_model_dir).model.predict_proba(data[0])[:, 1]
    got = score_frame(predictor, data[0], reasons=False)["probability_of_default"]
    assert np.max(np.abs(got.to_numpy() - expected)) <= 1e-9


def test_serving_never_imports_sklearn_scipy_or_pandas(trained_model_dir):
    """A server loads the compiled model, self-tests and scores on numpy alone."""
    code = ("import sys; from ml.serving.predictor import Predictor; "
            f"p = Predictor.load({str(trained_model_dir)!r}); p.self_test(); "
            "p.predict([p.card['example']]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sklearn', 'scipy', 'pandas', 'matplotlib', 'joblib') "
            "or m.startswith('ml.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_a_compiled_model_of_another_layout_is_not_read(trained_model_dir, tmp_path):
    """An artifact compiled with another model-file format is refused with what to do
    (no fallback to the sklearn pickle: serving never unpickles)."""
    root = tmp_path / "models"
    shutil.copytree(trained_model_dir, root)
    card_path = resolve(root) / CARD_FILE
    card = json.loads(card_path.read_text())
    assert Predictor.load(root).fast is not None
    card["artifact"]["compiled_format"] = 2
    card_path.write_text(json.dumps(card))
    signing.sign(resolve(root), signing.signing_key(), CARD_FILE)
    with pytest.raises(ArtifactError, match="format 2.*resign"):
        Predictor.load(root)
