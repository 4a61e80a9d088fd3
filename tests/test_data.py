"""Data tests: the shipped CSV meets its spec; bad frames fail with named problems."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.spec import config
from ml.training.data import (DataError, convert_column, load_dataset, read_raw, split,
                              validate_frame)
from ml.spec.schema import CATEGORICAL, Category, Feature


def test_shipped_data_meets_its_spec(dataset, spec):
    assert dataset.X.shape == (1000, len(spec.features) + len(spec.protected))
    assert int(dataset.y.sum()) == 300
    assert not dataset.X.isna().any().any()
    for f in spec.categorical:
        assert set(dataset.X[f.name]) <= set(f.codes)
    for f in spec.numeric:
        assert dataset.X[f.name].between(f.minimum, f.maximum).all()


def test_shipped_data_is_the_documented_copy():
    assert config.DEFAULT_DATA.stat().st_size == 268042


def _raw():
    return read_raw(config.DEFAULT_DATA)


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["purpose"]), "'purpose': missing from the file"),
    (lambda df: df.assign(purpose="spaceship"), "'purpose': 1000 rows have unknown categories"),
    (lambda df: df.assign(credit_amount="lots"), "'credit_amount': 1000 rows are not numeric"),
    (lambda df: df.assign(age_in_years="300"), "'age_in_years': 1000 rows lie outside"),
    (lambda df: df.assign(age_in_years=""), "does not allow missing values"),
    (lambda df: df.assign(creditability="good"), "exactly two classes"),
    (lambda df: df.assign(creditability=np.where(df.index % 2, "good", "meh")), "not found"),
    (lambda df: df.drop(columns=["creditability"]), "target column 'creditability': missing"),
    (lambda df: df.assign(creditability=np.where(df.index < 5, "bad", "good")), "only 5 rows"),
    (lambda df: df.assign(creditability=np.where(df.index < 5, "NA", df.creditability)),
     "5 rows have no value"),
])
def test_bad_frames_fail_naming_the_column(spec, mutate, message):
    with pytest.raises(DataError) as err:
        validate_frame(mutate(_raw()), spec)
    assert any(message in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("spell", [str.upper, str.capitalize, lambda v: f"  {v} "])
def test_target_classes_ignore_case_and_spaces(spec, dataset, spell):
    raw = _raw()
    raw.loc[::3, "creditability"] = raw.loc[::3, "creditability"].map(spell)
    _, y = validate_frame(raw, spec)
    assert (y == dataset.y).all()


def test_every_problem_is_reported_at_once(spec):
    bad = _raw().drop(columns=["purpose"]).assign(credit_amount="x", creditability="good")
    with pytest.raises(DataError) as err:
        validate_frame(bad, spec)
    assert len(err.value.problems) == 3


def test_codes_are_accepted_as_well_as_raw_values(spec, dataset):
    raw = _raw()
    raw["purpose"] = dataset.X["purpose"].to_numpy()
    X, _ = validate_frame(raw, spec)
    assert (X["purpose"] == dataset.X["purpose"]).all()


def test_a_raw_value_wins_over_another_categorys_code():
    feature = Feature("home", CATEGORICAL, "Home", categories=(
        Category("own", "Own", "Own"), Category("own_2", "own", "own")))
    converted, problem = convert_column(pd.Series(["Own", "own", "own_2"]), feature)
    assert list(converted) == ["own", "own_2", "own_2"] and problem is None


def test_split_is_stratified_disjoint_and_reproducible(dataset):
    a, b = split(dataset, seed=7), split(dataset, seed=7)
    assert [len(a.y_train), len(a.y_val), len(a.y_test)] == [600, 200, 200]
    for part in (a.y_train, a.y_val, a.y_test):
        assert part.mean() == pytest.approx(0.3, abs=0.01)
    index = [set(a.X_train.index), set(a.X_val.index), set(a.X_test.index)]
    assert not (index[0] & index[1]) and not (index[0] & index[2]) and not (index[1] & index[2])
    pd.testing.assert_frame_equal(a.X_test, b.X_test)


def test_missing_values_are_allowed_when_nullable(spec, tmp_path):
    raw = _raw()
    raw.loc[::7, "credit_amount"] = ""
    raw.loc[::5, "purpose"] = ""
    data = spec.to_dict()
    for f in data["features"]:
        f["nullable"] = True
    from ml.spec.schema import DatasetSpec
    nullable = DatasetSpec.from_dict(data)
    path = tmp_path / "holes.csv"
    raw.to_csv(path, index=False)
    loaded = load_dataset(path, nullable)
    assert loaded.X["credit_amount"].isna().sum() == len(raw.loc[::7])
    assert loaded.X["purpose"].isna().sum() == len(raw.loc[::5])
