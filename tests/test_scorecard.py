"""Scorecards: the spec's scaling and directions, the compiled scorecard against optbinning,
monotone risk, serving with points and reasons by points, and the family end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import blanked_german
from ml.__main__ import main
from ml.serving import modelfile
from ml.serving.artifact import Artifact, library_versions
from ml.serving.predictor import OUTPUT_COLUMNS, Predictor
from ml.serving.scorecard import Binning
from ml.spec.config import PROJECT_ROOT
from ml.spec.schema import DatasetSpec, Scaling, SpecError
from ml.training import scorecard_report
from ml.training.compile import compile_model, predict_frame, raw_from_frame, score_frame
from ml.training.pipeline import build_pipeline, monotonic_cst
from ml.training.scorecard import build_scorecard
from ml.training.train import TrainOptions, record_from_row, train

TOLERANCE = 1e-9


# --------------------------------------------------------------------------- the spec


def test_default_scaling_is_600_points_at_50_to_1_and_20_points_double_the_odds():
    s = Scaling()
    assert s.score_one(1 / 51) == pytest.approx(600, abs=1e-9)
    assert s.score_one(1 / 101) == pytest.approx(620, abs=1e-9)
    pd_grid = np.linspace(0, 1, 10001)
    scores = s.score(pd_grid)
    assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) < 0)
    assert [s.score_one(p) for p in pd_grid[::1000]] == pytest.approx(scores[::1000], abs=1e-9)


def test_the_spec_round_trips_scaling_directions_and_a_required_family(spec):
    raw = spec.to_dict()
    raw["scaling"] = {"base_points": 500, "base_odds": 20, "pdo": 40}
    raw["family"] = "scorecard"
    again = DatasetSpec.from_dict(DatasetSpec.from_dict(raw).to_dict())
    assert again.scaling == Scaling(500.0, 20.0, 40.0) and again.family == "scorecard"
    assert again.feature("duration_in_month").direction == 1
    assert spec.feature("age_in_years").direction == 0
    assert DatasetSpec.from_dict({k: v for k, v in raw.items() if k != "scaling"}).scaling \
        == Scaling()


@pytest.mark.parametrize("change, message", [
    (lambda r: r["features"][0].update(risk_increases_with="higher"), "numeric feature"),
    (lambda r: r["features"][1].update(risk_increases_with="up"), "risk_increases_with"),
    (lambda r: r.update(scaling={"pdo": 0}), "pdo > 0"),
    (lambda r: r.update(scaling={"pdo": "many"}), "malformed"),
    (lambda r: r.update(scaling={"points": 600}), "malformed"),
])
def test_a_bad_direction_or_scaling_is_a_spec_error(spec, change, message):
    raw = spec.to_dict()
    change(raw)
    with pytest.raises(SpecError, match=message):
        DatasetSpec.from_dict(raw)


# --------------------------------------------------------------------------- compiled


@pytest.fixture(scope="module")
def blanked(spec, tmp_path_factory):
    """German Credit with ~10% of feature cells blank, every feature nullable."""
    return blanked_german(spec, tmp_path_factory.mktemp("blanked"), seed=3)


@pytest.fixture(scope="module")
def fitted(spec, dataset, blanked):
    """A scorecard fitted on the full and on the blanked data: {variant: (model, X, spec)}."""
    out = {"full": (build_scorecard(spec, 0).fit(dataset.X, dataset.y), dataset.X, spec)}
    X, y, nullable = blanked
    out["blanked"] = (build_scorecard(nullable, 0).fit(X, y), X, nullable)
    return out


@pytest.mark.parametrize("variant", ["full", "blanked"])
def test_compiled_scorecard_equals_optbinning_on_every_training_row(fitted, variant):
    model, X, spec = fitted[variant]
    if variant == "blanked":
        assert X[spec.feature_names].isna().to_numpy().mean() > 0.08
    structure, arrays = modelfile.dump(compile_model(model, spec))
    fast = modelfile.load(structure, arrays)  # what a server reads
    member = fast.members[0]
    points = member.encoder.encode(raw_from_frame(fast, X))
    assert np.max(np.abs(member.estimator.score(points) - model.score(X))) <= TOLERANCE
    p = predict_frame(fast, X)
    assert np.max(np.abs(p - model.predict_proba(X)[:, 1])) <= TOLERANCE
    assert np.max(np.abs(spec.scaling.score(p) - model.score(X))) <= TOLERANCE
    # Record by record (the request path) gives the same points as the matrix path.
    records = [record_from_row(row, spec) for _, row in X.iloc[:200].iterrows()]
    assert np.array_equal(member.encoder.encode_records(records), points[:200])


def test_a_category_training_never_saw_scores_like_optbinnings_predict_proba(spec, dataset):
    X, y = dataset.X, dataset.y
    keep = (X["purpose"] != "others").to_numpy()  # a code of the spec, gone from training
    model = build_scorecard(spec, 0).fit(X[keep], y[keep])
    rows = X.iloc[:50].copy()
    rows["purpose"] = "others"
    fast = compile_model(model, spec)
    assert np.max(np.abs(predict_frame(fast, rows) - model.predict_proba(rows)[:, 1])) \
        <= TOLERANCE


def test_points_and_bins_are_read_back_exactly_from_the_model_file(fitted):
    model, _, spec = fitted["blanked"]
    fast = compile_model(model, spec)
    again = modelfile.load(*modelfile.dump(fast))
    assert isinstance(again.members[0].encoder, Binning)
    assert again.members[0].encoder.same_as(fast.members[0].encoder)
    assert again.kind == "scorecard"


# --------------------------------------------------------------------------- monotone risk


def _risky_sweep(model, X: pd.DataFrame, feature, grid: np.ndarray) -> np.ndarray:
    """PD of every row with ``feature`` set to each grid value (in the risky order)."""
    out = np.empty((len(X), len(grid)))
    for k, value in enumerate(grid):
        moved = X.copy()
        moved[feature.name] = float(value)
        out[:, k] = model.predict_proba(moved)[:, 1]
    return out


@pytest.mark.parametrize("family", ["hist_gradient_boosting", "scorecard"])
def test_moving_a_directed_feature_its_risky_way_never_lowers_the_pd(spec, dataset, family):
    directed = [f for f in spec.numeric if f.direction]
    assert directed, "the shipped spec states directions"
    params = {"model__max_iter": 60} if family == "hist_gradient_boosting" else None
    model = build_pipeline(spec, family, 0, params).fit(dataset.X, dataset.y)
    for f in directed:
        values = np.unique(dataset.X[f.name].dropna().to_numpy())
        grid = values if f.direction > 0 else values[::-1]
        pd_sweep = _risky_sweep(model, dataset.X, f, grid)
        assert np.all(np.diff(pd_sweep, axis=1) >= -1e-12), f.name
        # The constraint binds: the feature still moves the PD.
        assert np.ptp(pd_sweep, axis=1).max() > 0.01, f.name


def test_monotonic_cst_follows_the_preprocessed_columns(spec, dataset):
    pipe = build_pipeline(spec, "hist_gradient_boosting", 0, {"model__max_iter": 5})
    pipe.fit(dataset.X, dataset.y)
    names = pipe.named_steps["prep"].get_feature_names_out()
    cst = dict(zip(names, pipe.named_steps["model"].monotonic_cst))
    assert cst["num__duration_in_month"] == 1 and cst["num__age_in_years"] == 0
    assert len(monotonic_cst(spec)) == len(names)


# --------------------------------------------------------------------------- boundary


def test_the_api_and_serving_never_import_optbinning_or_sklearn(tmp_path):
    config = tmp_path / "contracts.ini"
    # The full boundary (app too never imports sklearn) is setup.cfg's [importlinter]
    # contracts; these two hold on their own.
    config.write_text(
        "[importlinter]\nroot_packages =\n    app\n    ml\ninclude_external_packages = True\n\n"
        "[importlinter:contract:api]\nname = The API and ml.serving never import optbinning\n"
        "type = forbidden\nsource_modules =\n    app\n    ml.serving\n"
        "forbidden_modules =\n    optbinning\n\n"
        "[importlinter:contract:serving]\nname = ml.serving never imports sklearn or training\n"
        "type = forbidden\nsource_modules =\n    ml.serving\n"
        "forbidden_modules =\n    optbinning\n    sklearn\n    ml.training\n")
    lint_imports = Path(sys.executable).parent / "lint-imports"  # installed with the venv
    result = subprocess.run([str(lint_imports), "--config", str(config)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]


def test_the_model_card_reads_information_values():
    assert [scorecard_report.iv_reading(v) for v in (0.01, 0.05, 0.2, 0.4, 0.7)] == [
        "useless", "weak", "medium", "strong",
        "suspicious: too good to be true, check for leakage"]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def german_scorecard(tmp_path_factory, signing_keys):
    """``train --family scorecard`` on German Credit, 5x5 CV: (artifact dir, card)."""
    return train(TrainOptions(out=tmp_path_factory.mktemp("scorecard"),
                              families=("scorecard",), plots=False))


@pytest.mark.slow
def test_german_scorecard_meets_its_targets(german_scorecard):
    _, card = german_scorecard
    cv = card["metrics"]["cv"]
    assert cv["n_repeats"] == 5 and cv["n_splits"] == 5
    assert cv["roc_auc_mean"] >= 0.78 and cv["expected_cost_mean"] <= 0.56
    assert card["model"]["family"] == "scorecard" and card["model"]["calibration"] == "none"
    protected = {f["name"] for f in card["spec"]["protected"]}
    assert protected and not protected & set(card["scorecard"]["information_value"])
    markdown = "\n\n".join(scorecard_report.markdown(card))
    for heading in ("Score bands", "Score distribution by class", "Information value",
                    "### Scorecard", "lost the most points"):
        assert heading in markdown


@pytest.mark.slow
def test_a_served_scorecard_answers_in_points_with_reasons_by_points(
        german_scorecard, dataset, spec):
    directory, _ = german_scorecard
    predictor = Predictor.load(directory)
    predictor.self_test()
    records = [record_from_row(row, spec) for _, row in dataset.X.iloc[:300].iterrows()]
    answers = predictor.predict(records)
    for answer in answers:
        assert sum(answer["points"].values()) == pytest.approx(answer["score"], abs=1e-9)
        assert answer["score"] == pytest.approx(
            spec.scaling.score_one(answer["probability_of_default"]), abs=1e-9)
        lost = [r["impact"] for r in answer["reasons"]]
        assert len(lost) <= 4 and lost == sorted(lost, reverse=True) and all(x > 0 for x in lost)
        for reason in answer["reasons"]:
            assert reason["label"] == spec.feature(reason["feature"]).label
            assert "points below the best" in reason["text"]
    assert any(a["reasons"] for a in answers)
    quick = predictor.predict(records, reasons=False)
    assert [a["score"] for a in quick] == [a["score"] for a in answers]
    # The batch columns carry the same score.
    frame = score_frame(predictor, dataset.X.iloc[:300])
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert np.allclose(frame["score"], [a["score"] for a in answers], rtol=0, atol=1e-9)
    assert list(frame["reason_1"]) == [a["reasons"][0]["feature"] if a["reasons"] else ""
                                       for a in answers]


def _synthetic_credit(path, n=1500, seed=11) -> None:
    """A made-up credit book (not German Credit) with missing values in three columns."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.5, 0.5, n).round(0)
    utilisation = rng.uniform(0, 1.2, n).round(3)
    months_late = rng.poisson(0.7, n)
    tenure = rng.choice(["under_1y", "1_to_5y", "over_5y"], n, p=[0.3, 0.4, 0.3])
    region = rng.choice(["north", "south", "east", "west"], n)
    logit = (-1.6 + 1.8 * (utilisation - 0.6) + 0.6 * months_late
             - 0.8 * (np.log(income) - 10.5) + np.where(tenure == "under_1y", 0.6, 0.0))
    default = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({"monthly_income": income, "utilisation": utilisation,
                          "months_late_last_year": months_late, "tenure": tenure,
                          "region": region, "gender": rng.choice(["f", "m"], n),
                          "outcome": np.where(default, "defaulted", "repaid")})
    for column in ("monthly_income", "utilisation", "tenure"):
        frame[column] = frame[column].astype(object)
        frame.loc[rng.random(n) < 0.08, column] = ""
    frame.to_csv(path, index=False)


@pytest.mark.slow
def test_a_new_credit_csv_with_missing_values_trains_a_scorecard_from_a_drafted_spec(
        tmp_path, signing_keys):
    csv_path, spec_path, models = tmp_path / "book.csv", tmp_path / "book.yaml", tmp_path / "m"
    _synthetic_credit(csv_path)
    assert main(["spec", str(csv_path), "--target", "outcome", "--positive", "defaulted",
                 "--protected", "gender", "--out", str(spec_path)]) == 0
    # The reviewer's one edit: a direction a risk officer signs off.
    raw = yaml.safe_load(spec_path.read_text())
    late = next(f for f in raw["features"] if f["name"] == "months_late_last_year")
    late["risk_increases_with"] = "higher"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "ml", "train", "--family", "scorecard", "--data", str(csv_path),
         "--spec", str(spec_path), "--out", str(models), "--cv-repeats", "1", "--no-plots"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    predictor = Predictor.load(models)
    assert predictor.card["model"]["family"] == "scorecard"
    spec = predictor.spec
    assert spec.feature("monthly_income").nullable and spec.feature("tenure").nullable
    base = dict(predictor.card["example"], monthly_income=None, tenure=None)
    sweep = [predictor.predict([dict(base, months_late_last_year=k)], reasons=False)[0]
             for k in range(0, 8)]
    pds = [a["probability_of_default"] for a in sweep]
    assert pds == sorted(pds) and pds[-1] > pds[0]
    assert all(math.isfinite(a["score"]) for a in sweep)
    assert json.loads(json.dumps(sweep))  # plain JSON values


def _in_memory_predictor(model, spec, X) -> Predictor:
    """A predictor of a fitted scorecard without writing an artifact."""
    example = record_from_row(X.iloc[0], spec)
    card = {"name": spec.name, "version": "test", "threshold": 0.3,
            "grades": [{"grade": g, "max_pd": b, "label": g}
                       for g, b in zip("ABCDEF", (0.05, 0.10, 0.20, 0.35, 0.50, 1.0))],
            "libraries": library_versions(), "reference": {"baseline": example},
            "example": example, "self_test": {"record": example, "probability_of_default":
                                              float(model.predict_proba(X.iloc[[0]])[0, 1])}}
    return Predictor(Artifact(card=card, spec=spec, path=Path("."),
                              fast=compile_model(model, spec)))


@pytest.mark.parametrize("variant", ["full", "blanked"])
def test_a_request_gets_the_bits_of_the_batch_with_and_without_reasons(fitted, variant):
    model, X, spec = fitted[variant]
    predictor = _in_memory_predictor(model, spec, X)
    predictor.self_test()
    records = [record_from_row(row, spec) for _, row in X.iloc[:120].iterrows()]
    batch = predictor.score_raw(raw_from_frame(predictor.fast, X.iloc[:120]))
    one_by_one = [predictor.predict([r], reasons=False)[0] for r in records]
    with_reasons = predictor.predict(records)
    assert [a["probability_of_default"] for a in one_by_one] == batch.probability.tolist()
    assert [a["probability_of_default"] for a in with_reasons] == batch.probability.tolist()
    assert [a["risk_grade"] for a in one_by_one] == [a["risk_grade"] for a in with_reasons]
    assert [a["decision"] for a in one_by_one] == [a["decision"] for a in with_reasons]
    assert np.allclose([a["score"] for a in one_by_one], batch.score, rtol=0, atol=1e-9)
    assert np.allclose(batch.score, model.score(X.iloc[:120]), rtol=0, atol=TOLERANCE)
    for answer, reasons in zip(with_reasons, batch.reasons.tolist()):
        assert [r["feature"] for r in answer["reasons"]] == [
            predictor.features[j] for j in reasons if j >= 0]
        assert sum(answer["points"].values()) == pytest.approx(answer["score"], abs=1e-9)
