"""The dataset spec: the one source of truth for features, target, protected columns and costs.

A spec is a YAML (or JSON) file that sits beside the data. Training reads it to
validate the frame and build the pipeline; the artifact embeds it; serving derives
request validation, the Swagger schema and the web form from it. This module is the
runtime half (dataclasses, loading, record validation) and is safe for ``app`` to import.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

NUMERIC = "numeric"
CATEGORICAL = "categorical"
# Keys the API gives a meaning of its own: a body holding "instances" is a batch.
RESERVED_NAMES = frozenset({"instances"})


class SpecError(ValueError):
    """The spec file itself is malformed."""


@dataclass(frozen=True)
class Category:
    """One allowed value of a categorical feature.

    ``code`` is what the API and the pipeline see (snake_case); ``value`` is the raw
    spelling in the source CSV; ``label`` is for people (docs, forms, reason codes).
    """

    code: str
    value: str
    label: str


@dataclass(frozen=True)
class Feature:
    """One column: its kind, allowed values or bounds, and human wording."""

    name: str
    kind: str
    label: str
    description: str = ""
    column: str = ""
    categories: tuple[Category, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    nullable: bool = False
    unit: str = ""

    @property
    def source_column(self) -> str:
        """The header of this feature in the source CSV."""
        return self.column or self.name

    @cached_property
    def codes(self) -> tuple[str, ...]:
        """Allowed category codes, in spec order (cached: validation reads it per request)."""
        return tuple(c.code for c in self.categories)

    def category_label(self, code: str) -> str:
        """Human label of a category code (the code itself if unknown)."""
        for c in self.categories:
            if c.code == code:
                return c.label
        return code


@dataclass(frozen=True)
class CostMatrix:
    """Costs of the two errors, per applicant; correct decisions cost nothing.

    ``approve_bad`` is a false negative (a defaulter approved), ``decline_good`` a false
    positive (a good applicant turned away).
    """

    approve_bad: float
    decline_good: float

    @property
    def bayes_threshold(self) -> float:
        """Threshold on a calibrated P(bad) that minimises expected cost."""
        return self.decline_good / (self.decline_good + self.approve_bad)


@dataclass(frozen=True)
class Target:
    """The label column and which of its two values is the positive (default) class."""

    column: str
    positive: str
    negative: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the project needs to know about one credit data set."""

    name: str
    target: Target
    features: tuple[Feature, ...]
    protected: tuple[Feature, ...] = ()
    cost: CostMatrix = field(default_factory=lambda: CostMatrix(5.0, 1.0))
    description: str = ""
    source: str = ""
    min_class_rows: int = 20

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's input features, in spec order."""
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[Feature]:
        """Numeric model features."""
        return [f for f in self.features if f.kind == NUMERIC]

    @property
    def categorical(self) -> list[Feature]:
        """Categorical model features."""
        return [f for f in self.features if f.kind == CATEGORICAL]

    def feature(self, name: str) -> Feature:
        """Look up a model or protected feature by name."""
        for f in (*self.features, *self.protected):
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as written to YAML and embedded in the model card."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "target": _drop_empty(vars(self.target)),
            "cost": vars(self.cost).copy(),
            "min_class_rows": self.min_class_rows,
            "features": [_feature_to_dict(f) for f in self.features],
            "protected": [_feature_to_dict(f) for f in self.protected],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DatasetSpec":
        """Build a spec from plain data, checking its shape; raises :class:`SpecError`."""
        if not isinstance(raw, dict):
            raise SpecError("spec must be a mapping")
        try:
            target = Target(**raw["target"])
            features = tuple(_feature_from_dict(f) for f in raw["features"])
            protected = tuple(_feature_from_dict(f) for f in raw.get("protected") or ())
            cost = CostMatrix(**raw.get("cost") or {"approve_bad": 5.0, "decline_good": 1.0})
        except (KeyError, TypeError) as exc:
            raise SpecError(f"spec is missing or has a malformed entry: {exc}") from exc
        spec = cls(
            name=str(raw.get("name") or "model"),
            target=target,
            features=features,
            protected=protected,
            cost=cost,
            description=str(raw.get("description") or ""),
            source=str(raw.get("source") or ""),
            min_class_rows=int(raw.get("min_class_rows", 20)),
        )
        _check_spec(spec)
        return spec

    @classmethod
    def load(cls, path: str | Path) -> "DatasetSpec":
        """Read a spec from a ``.yaml``/``.yml`` or ``.json`` file."""
        text = Path(path).read_text(encoding="utf-8")
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.from_dict(raw)

    def save(self, path: str | Path) -> None:
        """Write the spec as YAML (keys in a readable order)."""
        Path(path).write_text(
            yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100),
            encoding="utf-8",
        )


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in ("", None, (), [])}


def _feature_to_dict(f: Feature) -> dict[str, Any]:
    d: dict[str, Any] = {"name": f.name, "kind": f.kind, "label": f.label,
                         "description": f.description}
    if f.column and f.column != f.name:
        d["column"] = f.column
    if f.kind == NUMERIC:
        d.update(minimum=f.minimum, maximum=f.maximum, integer=f.integer)
        if f.unit:
            d["unit"] = f.unit
    else:
        d["categories"] = [vars(c).copy() for c in f.categories]
    d["nullable"] = f.nullable
    return d


def _feature_from_dict(raw: dict[str, Any]) -> Feature:
    kind = raw.get("kind")
    if kind not in (NUMERIC, CATEGORICAL):
        raise SpecError(f"feature {raw.get('name')!r}: kind must be numeric or categorical")
    cats = tuple(
        Category(code=str(c["code"]), value=str(c.get("value", c["code"])),
                 label=str(c.get("label", c.get("value", c["code"]))))
        for c in raw.get("categories") or ()
    )
    return Feature(
        name=str(raw["name"]),
        kind=kind,
        label=str(raw.get("label") or raw["name"]),
        description=str(raw.get("description") or ""),
        column=str(raw.get("column") or ""),
        categories=cats,
        minimum=None if raw.get("minimum") is None else float(raw["minimum"]),
        maximum=None if raw.get("maximum") is None else float(raw["maximum"]),
        integer=bool(raw.get("integer", False)),
        nullable=bool(raw.get("nullable", False)),
        unit=str(raw.get("unit") or ""),
    )


def _check_spec(spec: DatasetSpec) -> None:
    names = [f.name for f in (*spec.features, *spec.protected)]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SpecError(f"feature names appear twice: {sorted(dupes)}")
    if not spec.features:
        raise SpecError("spec lists no model features")
    reserved = sorted(RESERVED_NAMES.intersection(names))
    if reserved:
        raise SpecError(f"feature names {reserved} are reserved by the API (a body holding "
                        "them is a batch): rename them and keep the CSV header in `column`")
    for f in (*spec.features, *spec.protected):
        if f.kind == CATEGORICAL and not f.categories:
            raise SpecError(f"feature {f.name!r}: a categorical feature needs categories")
        codes = f.codes
        if len(set(codes)) != len(codes):
            raise SpecError(f"feature {f.name!r}: category codes must be unique")
        if f.minimum is not None and f.maximum is not None and f.minimum > f.maximum:
            raise SpecError(f"feature {f.name!r}: minimum is above maximum")
    if spec.cost.approve_bad <= 0 or spec.cost.decline_good <= 0:
        raise SpecError("both error costs must be positive")


# --------------------------------------------------------------------------- records


def check_value(feature: Feature, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``feature``, or ``None`` when it is.

    The message never repeats the value: requests carry personal data.
    """
    if value is None:
        return None if feature.nullable else "must not be null"
    if feature.kind == CATEGORICAL:
        if not isinstance(value, str):
            return "must be a string, one of the allowed codes"
        if value not in feature.codes:
            return "is not one of the allowed codes: " + ", ".join(feature.codes)
        return None
    # bool is a subclass of int: a JSON true must not pass for 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        finite = False
    if not finite:
        return "must be a finite number"
    if feature.integer and value != int(value):
        return "must be a whole number"
    if feature.minimum is not None and value < feature.minimum:
        return f"must be at least {_fmt(feature.minimum)}"
    if feature.maximum is not None and value > feature.maximum:
        return f"must be at most {_fmt(feature.maximum)}"
    return None


def validate_record(spec: DatasetSpec, record: Any, where: str = "") -> list[dict[str, str]]:
    """All problems of one applicant record, as ``{"field", "problem"}`` dicts.

    Args:
        spec: the dataset spec (only model features are accepted).
        record: the decoded JSON object.
        where: a prefix for field paths, e.g. ``"instances[3]."``.
    """
    if not isinstance(record, dict):
        return [{"field": where.rstrip(".") or "body", "problem": "must be a JSON object"}]
    problems = []
    known = {f.name: f for f in spec.features}
    for name in record:
        if name not in known:
            shown = name if isinstance(name, str) and len(name) <= 64 else "(long name)"
            problems.append({"field": where + shown, "problem": "is not a known feature"})
    for f in spec.features:
        if f.name not in record:
            problems.append({"field": where + f.name, "problem": "is required"})
            continue
        problem = check_value(f, record[f.name])
        if problem:
            problems.append({"field": where + f.name, "problem": problem})
    return problems


def validate_records(spec: DatasetSpec, records: list[Any],
                     where: str = "instances[{i}].") -> list[dict[str, str]]:
    """All problems of many records: :func:`validate_record` of each, in order.

    The common case, a batch in which every record is valid, is first checked column by
    column, several times faster than record by record. That check only ever
    answers "all valid" when :func:`validate_record` would find nothing in any record;
    on anything else every record goes through :func:`validate_record`, so the
    problems are exactly the ones it reports.

    Args:
        where: the field-path prefix of record ``i``, formatted with ``i=``.
    """
    if _all_valid(spec, records):
        return []
    problems = []
    for i, record in enumerate(records):
        problems.extend(validate_record(spec, record, where.format(i=i)))
    return problems


_NUMBER_TYPES = frozenset({int, float})
_NULLABLE_NUMBER_TYPES = frozenset({int, float, type(None)})


def _all_valid(spec: DatasetSpec, records: list[Any]) -> bool:
    """Whether every record is certainly valid (``False`` also means "not sure")."""
    names = {f.name for f in spec.features}
    if not records or not all(type(r) is dict and r.keys() == names for r in records):
        return False
    for f in spec.features:
        column = [r[f.name] for r in records]
        if f.kind == CATEGORICAL:
            allowed = {*f.codes, None} if f.nullable else set(f.codes)
            try:
                if not allowed.issuperset(column):
                    return False
            except TypeError:  # an unhashable value: a list or an object
                return False
            continue
        if not set(map(type, column)) <= (_NULLABLE_NUMBER_TYPES if f.nullable
                                          else _NUMBER_TYPES):
            return False
        try:
            values = np.array([v for v in column if v is not None], dtype=np.float64)
        except OverflowError:  # an int beyond the float range
            return False
        # Beyond 2**53 a float may not equal the int it came from: let the slow path decide.
        if values.size and not (np.isfinite(values).all() and np.abs(values).max() < 2.0 ** 53):
            return False
        if f.integer and not (values == np.floor(values)).all():
            return False
        if f.minimum is not None and values.size and values.min() < f.minimum:
            return False
        if f.maximum is not None and values.size and values.max() > f.maximum:
            return False
    return True


def example_record(spec: DatasetSpec) -> dict[str, Any]:
    """A valid record for docs and forms: the middle of each range, the first category."""
    out: dict[str, Any] = {}
    for f in spec.features:
        if f.kind == CATEGORICAL:
            out[f.name] = f.categories[0].code
        else:
            lo = f.minimum if f.minimum is not None else 0.0
            hi = f.maximum if f.maximum is not None else lo
            mid = (lo + hi) / 2
            out[f.name] = int(round(mid)) if f.integer else round(mid, 2)
    return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)
