"""Retraining: a challenger with fed-back outcomes is proposed (saved beside the champion,
never served) only when it beats the champion by the margin; the proposal is written as a
file and to the store; ``python -m ml promote`` applies a reviewed one after checking it."""
from __future__ import annotations

import json
import shutil

import pytest

from ml.__main__ import main
from ml.monitoring import proposals
from ml.monitoring.store import PredictionStore
from ml.serving import signing
from ml.serving.artifact import LATEST, read_card
from ml.serving.predictor import Predictor
from ml.training.promote import load_proposal, to_markdown
from ml.training.publish import load_artifact
from ml.training.retrain import outcomes_frame
from ml.training.train import record_from_row
from test_postgres import fresh_database, postgres  # noqa: F401  (the real server)


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
    """A private copy of the trained models dir, so challengers do not leak between tests."""
    return shutil.copytree(trained_model_dir, tmp_path / "models")


def retrain_cli(db, models, path, *more):
    """Run ``python -m ml retrain`` in-process; returns the proposal file's content and
    the printed summary."""
    assert main(["retrain", "--database-url", db, "--model", str(models),
                 "--proposal", str(path), *more]) == 0
    return json.loads(path.read_text())


@pytest.mark.parametrize("margin, promote", [(-100.0, True), (100.0, False)],
                         ids=["better-by-a-negative-margin", "not-better-by-a-huge-margin"])
def test_retrain_proposes_only_a_challenger_that_beats_the_margin_and_never_moves_latest(
        models, labelled_db, tmp_path, margin, promote, capsys):
    champion = read_card(models)["version"]
    before = sorted(p.name for p in models.iterdir())
    proposal = retrain_cli(labelled_db, models, tmp_path / "promotion.json",
                           "--margin", str(margin))
    assert (models / LATEST).read_text().strip() == champion  # never swapped by retrain
    assert proposal["decision"] == ("promote" if promote else "keep")
    assert proposal["champion"]["version"] == champion
    assert proposal["rows"]["labelled_outcomes"] == 300
    assert proposal["rows"]["outcomes_held_out"] == 90
    assert proposal["rows"]["held_out"] == proposal["rows"]["original_test"] + 90
    assert set(proposal["held_out"]) == {"champion", "challenger"}
    assert proposal["margin"] == margin and "expected cost" in proposal["criterion"]
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["decision"] == proposal["decision"]
    row = proposals.by_id(PredictionStore(labelled_db), printed["proposal_id"])
    assert row["proposal"] == proposal and row["promote"] is promote
    assert (row["champion_version"], row["challenger_version"]) == (
        champion, proposal["challenger"]["version"])
    champion_files = signing.sha256_of(models / champion / signing.MANIFEST)
    assert proposal["champion"]["artifact_sha256"] == champion_files
    if not promote:
        assert proposal["challenger"]["version"] is None and proposal["apply"] is None
        assert "below the margin" in proposal["why"]
        assert sorted(p.name for p in models.iterdir()) == before
        return
    version = proposal["challenger"]["version"]
    assert sorted(p.name for p in models.iterdir()) == sorted(before + [version])
    artifact = load_artifact(models / version)  # signature-checked, loadable
    assert artifact.card["data"]["feedback_rows"] == 210
    assert artifact.card["retrain"]["champion"] == champion
    assert artifact.card["threshold"] == read_card(models / champion)["threshold"]
    Predictor.load(models / version).self_test()
    challenger = proposal["challenger"]
    assert challenger["artifact_sha256"] == signing.sha256_of(models / version / signing.MANIFEST)
    assert challenger["signer_key_id"] == artifact.signer
    assert challenger["data_sha256"] == proposal["champion"]["data_sha256"]
    assert proposal["apply"] == (f"python -m ml promote {tmp_path / 'promotion.json'} "
                                 f"--models {models}")


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
                 "--data", str(other), "--proposal", str(tmp_path / "r.json")]) == 2


def test_report_only_decides_without_saving(models, labelled_db, tmp_path):
    champion = (models / LATEST).read_text()
    before = sorted(p.name for p in models.iterdir())
    # --report: the option's old name still works.
    assert main(["retrain", "--database-url", labelled_db, "--model", str(models),
                 "--margin", "-100", "--report-only", "--report", str(tmp_path / "r.json")]) == 0
    proposal = json.loads((tmp_path / "r.json").read_text())
    assert proposal["decision"] == "promote" and "--report-only" in proposal["why"]
    assert proposal["challenger"]["version"] is None and proposal["apply"] is None
    assert (models / LATEST).read_text() == champion
    assert sorted(p.name for p in models.iterdir()) == before
    assert main(["promote", str(tmp_path / "r.json"), "--models", str(models)]) == 2


# --------------------------------------------------------------------------- promote


@pytest.fixture(scope="module")
def proposed(trained_model_dir, labelled_db, tmp_path_factory):
    """A models dir with a better challenger saved beside the champion, and its proposal."""
    root = tmp_path_factory.mktemp("proposed")
    models = shutil.copytree(trained_model_dir, root / "models")
    retrain_cli(labelled_db, models, root / "promotion.json", "--margin", "-100")
    return models, root / "promotion.json"


@pytest.fixture()
def reviewed(proposed, tmp_path):
    """A private copy of :func:`proposed`: (models dir, proposal path, the proposal)."""
    models = shutil.copytree(proposed[0], tmp_path / "models")
    path = shutil.copy(proposed[1], tmp_path / "promotion.json")
    return models, tmp_path / "promotion.json", json.loads(open(path).read())


def promote_cli(path, models, *more):
    return main(["promote", str(path), "--models", str(models), *more])


def test_promote_applies_a_reviewed_proposal_once(reviewed, capsys):
    models, path, proposal = reviewed
    champion, version = proposal["champion"]["version"], proposal["challenger"]["version"]
    assert promote_cli(path, models, "--check") == 0
    assert json.loads(capsys.readouterr().out)["result"] == "checked"
    assert (models / LATEST).read_text().strip() == champion
    assert promote_cli(path, models) == 0
    assert json.loads(capsys.readouterr().out) == {
        "result": "promoted", "models": str(models), "champion": champion,
        "challenger": version}
    assert (models / LATEST).read_text().strip() == version
    assert Predictor.load(models).version == version
    assert promote_cli(path, models) == 0  # applying it again changes nothing
    assert json.loads(capsys.readouterr().out)["result"] == "already promoted"


def refused(capsys, path, models, *more):
    """Promote must fail with exit 2 and one line on stderr; returns that line."""
    assert promote_cli(path, models, *more) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def tamper_file(models, proposal, path):
    card = models / proposal["challenger"]["version"] / "model_card.json"
    card.write_text(card.read_text().replace('"threshold"', '"threshold" ', 1))


def tamper_hash(models, proposal, path):
    proposal["challenger"]["artifact_sha256"] = "0" * 64
    path.write_text(json.dumps(proposal))


def tamper_version(models, proposal, path):
    proposal["challenger"]["version"] = "../models/" + proposal["champion"]["version"]
    path.write_text(json.dumps(proposal))


def tamper_name(models, proposal, path):
    proposal["model_name"] = "../../.github/workflows/x"
    path.write_text(json.dumps(proposal))


def keep(models, proposal, path):
    proposal["decision"] = "keep"
    path.write_text(json.dumps(proposal))


def stale(models, proposal, path):
    (models / LATEST).write_text("20000101T000000Z-000000\n")


def missing(models, proposal, path):
    shutil.rmtree(models / proposal["challenger"]["version"])


def not_json(models, proposal, path):
    path.write_text("{not json")


@pytest.mark.parametrize("breakage, says", [
    (tamper_file, "differs from the signed manifest"),
    (tamper_hash, "is not the reviewed one"),
    (tamper_version, "version is not a version name"),
    (tamper_name, "model name is not a plain name"),
    (keep, "nothing to promote"),
    (stale, "retrain against the served model again"),
    (missing, "is not in"),
    (not_json, "is not JSON"),
], ids=lambda v: getattr(v, "__name__", None))
def test_promote_refuses_what_does_not_match_the_reviewed_proposal(reviewed, capsys, breakage,
                                                                   says):
    models, path, proposal = reviewed
    latest = (models / LATEST).read_text()
    breakage(models, proposal, path)
    assert says in refused(capsys, path, models)
    if breakage is not stale:
        assert (models / LATEST).read_text() == latest


def test_promote_refuses_a_challenger_signed_by_an_untrusted_key(reviewed, capsys,
                                                                 monkeypatch, tmp_path):
    models, path, proposal = reviewed
    signing.generate_key_pair(tmp_path / "other.pem", tmp_path / "other" / "other.pub")
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(tmp_path / "other"))
    assert "which is not trusted" in refused(capsys, path, models)
    assert (models / LATEST).read_text().strip() == proposal["champion"]["version"]


def test_document_check_renders_the_summary_and_pins_the_signer(reviewed, capsys, tmp_path):
    models, path, proposal = reviewed
    signer = proposal["challenger"]["signer_key_id"]
    summary = tmp_path / "summary.md"
    elsewhere = tmp_path / "empty"  # the workflow has the proposal, not the artifact
    assert promote_cli(path, elsewhere, "--check", "--document-only", "--signer", signer,
                       "--markdown", str(summary)) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "document checked"
    text = summary.read_text()
    assert text == to_markdown(load_proposal(path))
    for needed in (proposal["challenger"]["version"], proposal["challenger"]["artifact_sha256"],
                   signer, "**Decision: promote.**", "held-out expected_cost", proposal["apply"]):
        assert needed in text, needed
    assert "is signed by" in refused(capsys, path, elsewhere, "--check", "--document-only",
                                     "--signer", "0" * 16)
    assert "add --check" in refused(capsys, path, elsewhere, "--document-only")


# --------------------------------------------------------------------------- the store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty, migrated store on SQLite or on the real PostgreSQL server."""
    url = fresh_database(request, tmp_path, request.param)
    store = PredictionStore(url)
    yield store
    store.dispose()


def test_proposals_are_saved_and_read_newest_first_and_by_id(store, proposed):
    assert proposals.newest(store) is None and proposals.by_id(store, 1) is None
    proposal = load_proposal(proposed[1])
    kept = {**proposal, "decision": "keep", "why": "x" * 600, "challenger": {"version": None}}
    first = proposals.save(store, proposal)
    other = proposals.save(store, {**kept, "model_name": "other"})
    assert proposals.newest(store)["id"] == other
    newest = proposals.newest(store, proposal["model_name"])
    assert newest["id"] == first and newest["proposal"] == proposal
    assert newest["promote"] is True
    assert newest["challenger_version"] == proposal["challenger"]["version"]
    assert newest["expected_cost_gain"] == pytest.approx(proposal["expected_cost_gain"])
    row = proposals.by_id(store, other)
    assert row["promote"] is False and row["challenger_version"] is None
    assert len(row["decision"]) == proposals.DECISION_CHARS  # the JSON keeps the whole why
    assert row["proposal"]["why"] == "x" * 600


def test_proposal_command_prints_the_stored_proposal_promote_reads(proposed, labelled_db,
                                                                   tmp_path, capsys):
    out = tmp_path / "from-store.json"
    assert main(["proposal", "--database-url", labelled_db, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = proposals.by_id(PredictionStore(labelled_db), printed["id"])
    assert json.loads(out.read_text()) == stored["proposal"]
    assert stored["id"] == proposals.newest(PredictionStore(labelled_db))["id"]
    assert main(["proposal", "--database-url", labelled_db, "--id", "999999"]) == 2
    assert "no such promotion proposal" in capsys.readouterr().err


def test_labelled_rows_become_a_frame_of_spec_columns(spec, example):
    rows = [{"features": {**example, "credit_amount": None}, "outcome": "bad"},
            {"features": example, "outcome": "good"},
            {"features": example, "outcome": None}]
    X, y = outcomes_frame(rows, spec)
    assert list(X.columns) == spec.feature_names
    assert y.tolist() == [1, 0]
    assert X["credit_amount"].isna().tolist() == [True, False]


def test_promote_workflow_checks_the_proposal_and_opens_a_pull_request():
    """The CD half (actionlint and the schema run on it in tests/test_deploy.py)."""
    import re

    import yaml

    from ml.spec import config

    text = (config.PROJECT_ROOT / ".github" / "workflows" / "promote.yml").read_text()
    flow = yaml.safe_load(text)
    assert set(flow[True]) == {"workflow_dispatch"}  # YAML 1.1 reads `on` as True
    assert flow["permissions"] == {"contents": "read"}
    job = flow["jobs"]["propose"]
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert uses and all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", u) for u in uses), uses
    script = "\n".join(s.get("run", "") for s in job["steps"])
    for needed in ("python -m ml promote", "--check --document-only", "--markdown",
                   "GITHUB_STEP_SUMMARY", "gh pr create", "promotions/", "git push"):
        assert needed in script, needed
    assert "${{" not in script  # inputs reach the scripts through env only
