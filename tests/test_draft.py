"""Drafting a spec for a new CSV."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.spec import config
from ml.__main__ import main
from ml.training.data import load_dataset
from ml.training.draft import draft_spec, slug, unusable
from ml.spec.schema import DatasetSpec


@pytest.mark.parametrize("text, code", [
    ("... < 0 DM", "lt_0_dm"),
    ("0 <= ... < 200 DM", "0_le_lt_200_dm"),
    ("car (new)", "car_new"),
    ("  ", "value"),
    # Accented letters are kept (as their base letter) and unicode operators read.
    ("Età", "eta"),
    ("≥ 2 years", "ge_2_years"),
    ("Loan-Amount ($)", "loan_amount"),
    ("A+", "a_plus"),
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


def test_a_file_not_separated_by_commas_is_named_as_such(tmp_path):
    path = tmp_path / "semicolons.csv"
    path.write_text("x;bad\n1;0\n2;1\n")
    with pytest.raises(ValueError, match="separated by something other than commas"):
        draft_spec(path, "bad", "1")


def test_cli_writes_a_loadable_spec(tmp_path, capsys):
    out = tmp_path / "spec.yaml"
    assert main(["spec", str(config.DEFAULT_DATA), "--target", "creditability",
                 "--positive", "bad", "--out", str(out)]) == 0
    assert DatasetSpec.load(out).target.positive == "bad"


def test_cli_reports_errors_with_exit_code_2(capsys):
    assert main(["spec", str(config.DEFAULT_DATA), "--target", "x", "--positive", "bad"]) == 2
    assert "error:" in capsys.readouterr().err


def _quirky_csv(tmp_path, n=120):
    """Headers that slug alike, an accent, a reserved name, columns no model can use,
    numeric category codes and a target spelt with stray case and spaces."""
    rng = np.random.default_rng(0)
    bad = rng.random(n) < 0.4
    frame = pd.DataFrame({
        "Customer ID": np.arange(1000, 1000 + n),
        "Amount": rng.integers(100, 5000, n), "amount": rng.normal(size=n).round(3),
        "Età": np.where(rng.random(n) < 0.1, "", rng.integers(18, 80, n).astype(str)),
        "instances": rng.integers(0, 5, n), "Constant": "x", "Empty": "NA",
        "Branch": [f"B{i}" for i in rng.integers(0, 80, n)],
        "Region": rng.choice([1, 2, 10], n), "Grade": rng.choice(["A+", "<1 yr", "≥ 2"], n),
        "Default": np.where(bad, rng.choice(["Yes", " yes", "YES "], n, p=[.6, .2, .2]), "No"),
    })
    path = tmp_path / "quirky.csv"
    frame.to_csv(path, index=False)
    return path, bad


def test_draft_of_awkward_columns_loads_and_validates_its_data(tmp_path, caplog):
    path, bad = _quirky_csv(tmp_path)
    spec = draft_spec(path, "Default", "yes", categorical=("Region",))
    assert spec.feature_names == ["amount", "amount_2", "eta", "instances_2", "region", "grade"]
    assert [spec.feature(n).source_column for n in ("amount_2", "eta")] == ["amount", "Età"]
    labels = [spec.feature(n).label for n in ("amount", "amount_2")]
    assert labels == ["Amount", "Amount (amount_2)"]
    assert spec.feature("eta").nullable and spec.feature("eta").integer
    assert spec.feature("region").codes == ("1", "2", "10")
    assert (spec.target.positive, spec.target.negative) == ("Yes", "No")
    for column in ("Customer ID", "Constant", "Empty", "Branch"):
        assert repr(column) in spec.description
        assert any(column in r.getMessage() for r in caplog.records)
    data = load_dataset(path, spec)
    assert (data.y == bad).all()


@pytest.mark.parametrize("values, reason", [
    (["", "NA", "?"] * 10, "every value is missing"),
    (["7"] * 30, "single value"),
    ([str(i) for i in range(30)], "row identifier"),
    ([f"t{i}" for i in range(60)], "60 distinct text values"),
    ([f"{i},{i % 1000:03d}" for i in range(60)], "60 values are not plain numbers"),
    ([str(i) for i in range(1, 58)] + ["-", "unknown", "-"], "3 values are not plain"),
])
def test_unusable_columns_are_named_with_a_reason(values, reason):
    assert reason in unusable("c", pd.Series(values))


@pytest.mark.parametrize("values", [
    [str(i) for i in np.random.default_rng(1).permutation(30)],  # unique but unordered
    ["1.5", "2.25", "3.125"] * 10,
    [f"t{i % 50}" for i in range(60)],
])
def test_usable_columns_are_kept(values):
    assert unusable("amount", pd.Series(values)) is None


def test_draft_warns_of_a_column_missing_in_one_class_only(tmp_path, caplog):
    path = tmp_path / "leak.csv"
    y = np.arange(100) % 4 == 0
    pd.DataFrame({"x": np.arange(100) % 7, "recovered": np.where(y, "", np.arange(100) % 9 + 0.5),
                  "bad": y.astype(int)}).to_csv(path, index=False)
    draft_spec(path, "bad", "1")
    assert any("'recovered' is missing in 25 rows, all of class '1'" in r.getMessage()
               for r in caplog.records)


def test_cli_takes_costs_and_category_codes(tmp_path, capsys):
    path, _ = _quirky_csv(tmp_path)
    out = tmp_path / "spec.yaml"
    assert main(["spec", str(path), "--target", "Default", "--positive", "YES",
                 "--categorical", "Region", "--cost", "10", "1", "--out", str(out)]) == 0
    spec = DatasetSpec.load(out)
    assert (spec.cost.approve_bad, spec.cost.decline_good) == (10, 1)
    assert spec.feature("region").kind == "categorical"
