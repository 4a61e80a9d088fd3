"""Drafting a spec for a new CSV."""
from __future__ import annotations

import pytest

from ml import config
from ml.__main__ import main
from ml.data import load_dataset
from ml.draft import draft_spec, slug
from ml.schema import DatasetSpec


@pytest.mark.parametrize("text, code", [
    ("... < 0 DM", "lt_0_dm"),
    ("0 <= ... < 200 DM", "0_le_lt_200_dm"),
    ("car (new)", "car_new"),
    ("  ", "value"),
])
def test_slug_makes_snake_case_codes(text, code):
    assert slug(text) == code


def test_draft_infers_kinds_bounds_and_protected(tmp_path):
    spec = draft_spec(config.DEFAULT_DATA, "creditability", "bad",
                      protected=("personal_status_and_sex", "foreign_worker"))
    age = spec.feature("age_in_years")
    assert (age.kind, age.minimum, age.maximum, age.integer) == ("numeric", 19, 75, True)
    assert spec.feature("purpose").kind == "categorical"
    assert len(spec.feature("purpose").categories) == 10
    assert [f.name for f in spec.protected] == ["personal_status_and_sex", "foreign_worker"]
    assert spec.target.negative == "good"
    # The draft describes its own data: loading it validates cleanly.
    assert load_dataset(config.DEFAULT_DATA, spec).X.shape[0] == 1000


@pytest.mark.parametrize("args, message", [
    (("nope", "bad"), "not in"),
    (("creditability", "terrible"), "positive class"),
])
def test_draft_refuses_wrong_target(args, message):
    with pytest.raises(ValueError, match=message):
        draft_spec(config.DEFAULT_DATA, *args)


def test_cli_writes_a_loadable_spec(tmp_path, capsys):
    out = tmp_path / "spec.yaml"
    assert main(["spec", str(config.DEFAULT_DATA), "--target", "creditability",
                 "--positive", "bad", "--out", str(out)]) == 0
    assert DatasetSpec.load(out).target.positive == "bad"


def test_cli_reports_errors_with_exit_code_2(capsys):
    assert main(["spec", str(config.DEFAULT_DATA), "--target", "x", "--positive", "bad"]) == 2
    assert "error:" in capsys.readouterr().err
