"""The model card is rendered from a real artifact with its real numbers; the notebook
helpers compute what they say."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ml.training import explore, report
from ml.__main__ import main
from ml.serving.artifact import read_card, resolve
from ml.training.data import split


@pytest.fixture(scope="module")
def artifact(trained_model_dir):
    return resolve(trained_model_dir)


@pytest.fixture(scope="module")
def card(artifact):
    return read_card(artifact)


@pytest.fixture(scope="module")
def markdown(artifact, card):
    evaluation = json.loads((artifact / "evaluation.json").read_text())
    return report.render_card(card, evaluation)


def test_card_has_the_sections_a_reviewer_expects(markdown):
    for heading in ("## Intended use", "## Out-of-scope uses", "## Model", "## Data",
                    "## Metrics", "## Risk grades", "## Fairness", "## Limits and caveats"):
        assert heading in markdown


def test_card_shows_the_artifacts_real_numbers(markdown, card):
    test, cv = card["metrics"]["test"], card["metrics"]["cv"]
    assert card["version"] in markdown
    assert f"| ROC AUC | {test['roc_auc']:.3f} | {cv['roc_auc_mean']:.3f} ± " \
           f"{cv['roc_auc_std']:.3f} |" in markdown
    assert f"{cv['expected_cost_mean']:.3f} ± {cv['expected_cost_std']:.3f}" in markdown
    assert f"| Approval rate | {100 * test['approval_rate']:.1f} % |" in markdown
    assert f"decline when PD ≥ {card['threshold']:.3f}" in markdown
    assert f"{test['expected_cost_approve_all']:.3f}" in markdown
    assert card["data"]["sha256"][:16] in markdown


def test_card_has_the_fairness_table_of_every_protected_attribute(markdown, card):
    for name, f in card["metrics"]["fairness"].items():
        assert f"(`{name}`)" in markdown
        for g in f["groups"]:
            assert f"| {g['label']} | {g['count']} | {100 * g['approval_rate']:.1f} % |" \
                in markdown
    assert "On all rows, each scored out of fold" in markdown


def test_card_lists_every_feature_and_the_candidates(markdown, card):
    for feature in card["spec"]["features"]:
        assert f"`{feature['name']}`" in markdown
    assert "| logistic_regression |" in markdown


def test_write_card_copies_plots_and_refreshes_the_readme(artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    (copy / "plots").mkdir(exist_ok=True)
    for name in ("roc.png", "calibration.png"):
        (copy / "plots" / name).write_bytes(b"\x89PNG fake " + name.encode())
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{report.README_START}\nSTALE-SUMMARY\n"
                      f"{report.README_END}\n\nrest\n")
    out = report.write_card(copy, tmp_path / "docs" / "model_card.md", readme)
    assert (tmp_path / "docs" / "img" / "roc.png").read_bytes() == b"\x89PNG fake roc.png"
    text = out.read_text()
    assert "![roc](img/roc.png)" in text and "![calibration](img/calibration.png)" in text
    new = readme.read_text()
    assert "STALE-SUMMARY" not in new and new.startswith("# Title") and new.endswith("rest\n")
    assert "[docs/model_card.md](docs/model_card.md)" in new
    assert 'src="docs/img/roc.png"' in new
    assert "| ROC AUC |" in new


def test_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing to replace\n")
    assert report.update_readme(readme, "summary") is False
    assert readme.read_text() == "# nothing to replace\n"
    assert report.update_readme(tmp_path / "missing.md", "summary") is False


def test_card_command_writes_the_markdown(trained_model_dir, tmp_path, capsys):
    out = tmp_path / "card.md"
    assert main(["card", "--model", str(trained_model_dir), "--out", str(out),
                 "--no-readme"]) == 0
    assert out.read_text().startswith("# Model card: german_credit")
    assert "model card" in capsys.readouterr().out


def test_card_command_without_artifact_fails_cleanly(tmp_path, capsys):
    assert main(["card", "--model", str(tmp_path), "--no-readme"]) == 2
    assert "no model artifact" in capsys.readouterr().err


# --------------------------------------------------------------------------- notebook helpers


def test_bad_rate_by_category_matches_a_plain_groupby(dataset, spec):
    table = explore.bad_rate_by_category(dataset.X, dataset.y, "purpose", spec)
    expected = pd.Series(dataset.y).groupby(dataset.X["purpose"].to_numpy()).mean()
    assert table["bad_rate"].to_dict() == pytest.approx(expected.to_dict())
    assert table["applicants"].sum() == len(dataset.y)
    assert list(table["bad_rate"]) == sorted(table["bad_rate"], reverse=True)
    assert table.loc["car_used", "label"] == "Used car"


def test_bad_rate_by_category_counts_missing_values():
    frame = pd.DataFrame({"c": ["a", None, "a", np.nan]})
    table = explore.bad_rate_by_category(frame, np.array([1, 0, 0, 1]), "c")
    assert table.loc["missing", "applicants"] == 2
    assert table.loc["a", "bad_rate"] == 0.5


def test_exploration_helpers(dataset, spec):
    summary = explore.numeric_summary(dataset.X, dataset.y, spec)
    assert list(summary.index) == [f.name for f in spec.numeric]
    assert (summary["min"] >= summary["spec_min"]).all()
    corr = explore.correlations(dataset.X, dataset.y, spec)
    assert corr.loc["default", "default"] == pytest.approx(1.0)
    assoc = explore.target_association(dataset.X, dataset.y, spec)
    assert "foreign_worker" in assoc and ((assoc >= 0) & (assoc <= 1)).all()
    same = pd.Series(["x", "y"] * 10)
    assert explore.cramers_v(same, same) == pytest.approx(1.0)


def test_compare_candidates_and_their_cost_table(dataset, spec):
    parts = split(dataset, 42)
    predictions = explore.compare_candidates(spec, parts)
    assert set(predictions) == {"logistic_regression", "random_forest"}
    table = explore.candidate_table(parts.y_val, predictions, spec)
    assert (table["roc_auc"] > 0.65).all()
    # The cost-optimal threshold never does worse than approving or declining everyone.
    assert (table["cost_at_best"] <= table[["cost_approve_all", "cost_reject_all"]]
            .min(axis=1)).all()
