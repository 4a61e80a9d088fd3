"""Retraining: a challenger with fed-back outcomes is promoted only when it beats the
champion by the margin; either way a report is written."""
from __future__ import annotations

import json
import shutil

import pytest

from ml.monitoring.store import PredictionStore
from ml.__main__ import main
from ml.serving.artifact import LATEST, read_card
from ml.training.publish import load_artifact
from ml.training.retrain import outcomes_frame
from ml.training.train import record_from_row


@pytest.fixture(scope="module")
def labelled_db(dataset, spec, tmp_path_factory):
    """A store with 300 real applicants and their real outcomes fed back."""
    path = tmp_path_factory.mktemp("store") / "predictions.db"
    store = PredictionStore(f"sqlite:///{path}")
    records = [record_from_row(row, spec) for _, row in dataset.X.iloc[:300].iterrows()]
    results = [{"probability_of_default": 0.3, "decision": "approve"}] * len(records)
    store.save("fed-back", records, results, spec.name, "v0", True)
    for i, y in enumerate(dataset.y[:300]):
        assert store.label("fed-back", i, "bad" if y else "good")[0] == "created"
    store.save("unlabelled", records[:5], results[:5], spec.name, "v0", True)
    store.dispose()
    return f"sqlite:///{path}"


@pytest.fixture()
def models(trained_model_dir, tmp_path):
    """A private copy of the trained models dir, so promotions do not leak between tests."""
    return shutil.copytree(trained_model_dir, tmp_path / "models")


@pytest.mark.parametrize("margin, promoted", [(-100.0, True), (100.0, False)],
                         ids=["better-by-a-negative-margin", "not-better-by-a-huge-margin"])
def test_retrain_promotes_only_when_the_challenger_beats_the_margin(models, labelled_db,
                                                                    tmp_path, margin,
                                                                    promoted, capsys):
    champion = read_card(models)["version"]
    report_path = tmp_path / "retrain.json"
    assert main(["retrain", "--database-url", labelled_db, "--model", str(models),
                 "--margin", str(margin), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["promoted"] is promoted
    assert report["champion"] == champion
    assert report["rows"]["labelled_outcomes"] == 300
    assert report["rows"]["outcomes_held_out"] == 90
    assert report["rows"]["held_out"] == report["rows"]["original_test"] + 90
    assert set(report["held_out"]) == {"champion", "challenger"}
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["promoted"] is promoted
    latest = (models / LATEST).read_text().strip()
    if promoted:
        assert latest == report["new_version"] != champion
        artifact = load_artifact(models)  # signature-checked, loadable
        assert artifact.card["data"]["feedback_rows"] == 210
        assert artifact.card["retrain"]["champion"] == champion
        assert artifact.card["threshold"] == read_card(models / champion)["threshold"]
        from ml.serving.predictor import Predictor
        Predictor.load(models).self_test()
    else:
        assert latest == champion
        assert "kept champion" in report["decision"]


def test_the_comparison_is_the_same_for_both_outcomes_of_the_margin(models, labelled_db):
    from ml.training.retrain import retrain
    rows = PredictionStore(labelled_db).window(labelled_only=True)
    kept = retrain(models, rows, margin=100.0)
    again = retrain(models, rows, margin=100.0)
    assert kept["held_out"] == again["held_out"]  # deterministic: same seed, same rows


def test_retrain_refuses_other_training_data(models, labelled_db, tmp_path):
    from ml.spec import config
    other = tmp_path / "other.csv"
    other.write_text(config.DEFAULT_DATA.read_text() + "\n")
    assert main(["retrain", "--database-url", labelled_db, "--model", str(models),
                 "--data", str(other), "--report", str(tmp_path / "r.json")]) == 2


def test_report_only_decides_without_saving(models, labelled_db, tmp_path):
    champion = (models / LATEST).read_text()
    report_path = tmp_path / "r.json"
    assert main(["retrain", "--database-url", labelled_db, "--model", str(models),
                 "--margin", "-100", "--report-only", "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["promoted"] is True and "--report-only" in report["decision"]
    assert "new_version" not in report
    assert (models / LATEST).read_text() == champion


def test_labelled_rows_become_a_frame_of_spec_columns(spec, example):
    rows = [{"features": {**example, "credit_amount": None}, "outcome": "bad"},
            {"features": example, "outcome": "good"},
            {"features": example, "outcome": None}]
    X, y = outcomes_frame(rows, spec)
    assert list(X.columns) == spec.feature_names
    assert y.tolist() == [1, 0]
    assert X["credit_amount"].isna().tolist() == [True, False]
