"""Unit tests of the spec: loading, checking, record validation."""
from __future__ import annotations

import math

import pytest

from ml.spec.schema import (DatasetSpec, SpecError, check_value, example_record, validate_record,
                            validate_records)
from ml.training.train import record_from_row


def test_shipped_spec_round_trips(spec, tmp_path):
    path = tmp_path / "spec.yaml"
    spec.save(path)
    assert DatasetSpec.load(path) == spec


def test_protected_columns_are_not_model_features(spec):
    assert {f.name for f in spec.protected} == {"personal_status_and_sex", "foreign_worker"}
    assert not set(spec.feature_names) & {f.name for f in spec.protected}


def test_codes_are_snake_case(spec):
    for f in (*spec.features, *spec.protected):
        for code in f.codes:
            assert code == code.lower() and " " not in code and code.replace("_", "").isalnum()


def test_cost_matrix_gives_bayes_threshold_of_one_sixth(spec):
    assert spec.cost.bayes_threshold == pytest.approx(1 / 6)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("target"), "missing"),
    (lambda d: d["features"].append(dict(d["features"][0])), "twice"),
    (lambda d: d["features"][0].update(kind="text"), "kind must be"),
    (lambda d: d["features"][0].update(categories=[]), "needs categories"),
    (lambda d: d["features"][1].update(minimum=10, maximum=1), "minimum is above"),
    (lambda d: d.update(cost={"approve_bad": 0, "decline_good": 1}), "positive"),
    (lambda d: d.update(features=[]), "no model features"),
    (lambda d: d["features"][1].update(name="instances"), "reserved"),
])
def test_malformed_specs_are_refused(spec, mutate, message):
    raw = spec.to_dict()
    mutate(raw)
    with pytest.raises(SpecError, match=message):
        DatasetSpec.from_dict(raw)


def test_example_record_validates(spec):
    assert validate_record(spec, example_record(spec)) == []


@pytest.mark.parametrize("value, problem", [
    (None, "must not be null"),
    ("12", "must be a number"),
    (True, "must be a number"),
    (math.nan, "must be a finite number"),
    (math.inf, "must be a finite number"),
    (10 ** 400, "must be a finite number"),
    (12.5, "must be a whole number"),
    (0, "must be at least 1"),
    (121, "must be at most 120"),
    ([1], "must be a number"),
    ({"a": 1}, "must be a number"),
])
def test_bad_numbers_are_named(spec, value, problem):
    assert check_value(spec.feature("duration_in_month"), value) == problem


@pytest.mark.parametrize("value, problem", [
    (1, "must be a string"),
    ("... < 0 DM", "is not one of the allowed codes"),
    ("unknown", "is not one of the allowed codes"),
    (None, "must not be null"),
])
def test_bad_categories_are_named(spec, value, problem):
    feature = spec.feature("status_of_existing_checking_account")
    assert check_value(feature, value).startswith(problem)


def test_validate_record_lists_every_problem_without_echoing_values(spec):
    record = example_record(spec)
    record["duration_in_month"] = "secret-123"
    record["purpose"] = "secret-456"
    del record["age_in_years"]
    record["extra_field"] = 1
    problems = validate_record(spec, record, where="instances[2].")
    fields = {p["field"] for p in problems}
    assert fields == {"instances[2].duration_in_month", "instances[2].purpose",
                      "instances[2].age_in_years", "instances[2].extra_field"}
    assert "secret" not in repr(problems)


@pytest.mark.parametrize("record", [None, [], "text", 3])
def test_non_object_records_are_refused(spec, record):
    assert validate_record(spec, record) == [{"field": "body", "problem": "must be a JSON object"}]


BATCH_DAMAGE = [
    ("valid", lambda r, num, cat: None),
    ("bool_for_number", lambda r, num, cat: r.update({num.name: True})),
    ("string_number", lambda r, num, cat: r.update({num.name: "5"})),
    ("nan", lambda r, num, cat: r.update({num.name: math.nan})),
    ("infinity", lambda r, num, cat: r.update({num.name: -math.inf})),
    ("huge_int", lambda r, num, cat: r.update({num.name: 10 ** 400})),
    ("int_past_2_53", lambda r, num, cat: r.update({num.name: 2 ** 60 + 1})),
    ("fraction_for_integer", lambda r, num, cat: r.update({num.name: 2.5})),
    ("below_minimum", lambda r, num, cat: r.update({num.name: -1})),
    ("above_maximum", lambda r, num, cat: r.update({num.name: 10 ** 9})),
    ("null_number", lambda r, num, cat: r.update({num.name: None})),
    ("null_category", lambda r, num, cat: r.update({cat.name: None})),
    ("unknown_code", lambda r, num, cat: r.update({cat.name: "no_such_code"})),
    ("int_for_code", lambda r, num, cat: r.update({cat.name: 1})),
    ("list_value", lambda r, num, cat: r.update({cat.name: [cat.codes[0]]})),
    ("object_value", lambda r, num, cat: r.update({num.name: {"a": 1}})),
    ("missing_field", lambda r, num, cat: r.pop(num.name)),
    ("extra_field", lambda r, num, cat: r.update(extra=1)),
]


@pytest.mark.parametrize("nullable", [False, True])
@pytest.mark.parametrize("name, damage", BATCH_DAMAGE, ids=[n for n, _ in BATCH_DAMAGE])
def test_batch_validation_reports_what_validate_record_reports(spec, dataset, name, damage,
                                                               nullable):
    if nullable:
        raw = spec.to_dict()
        for f in raw["features"]:
            f["nullable"] = True
        spec = DatasetSpec.from_dict(raw)
    records = [record_from_row(row, spec) for _, row in dataset.X.head(50).iterrows()]
    integer = next(f for f in spec.numeric if f.integer and f.minimum is not None
                   and f.maximum is not None)
    damage(records[37], integer, spec.categorical[0])
    expected = [p for i, r in enumerate(records)
                for p in validate_record(spec, r, f"instances[{i}].")]
    assert validate_records(spec, records) == expected
    assert (expected == []) == (name == "valid" or (nullable and name.startswith("null")))


def test_batch_validation_of_non_objects(spec):
    assert validate_records(spec, [1, None]) == [
        {"field": "instances[0]", "problem": "must be a JSON object"},
        {"field": "instances[1]", "problem": "must be a JSON object"}]
    assert validate_records(spec, []) == []
