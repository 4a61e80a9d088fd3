"""Draft a dataset spec from a new CSV, for its owner to review and edit.

Kinds, categories, bounds and nullability are inferred from the data; labels and
descriptions are placeholders made from the column names. Nothing here is used at
serving time.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ml.data import MISSING_TOKENS, read_raw
from ml.schema import CATEGORICAL, NUMERIC, Category, CostMatrix, DatasetSpec, Feature, Target

_OPERATORS = ((">=", " ge "), ("<=", " le "), ("<", " lt "), (">", " gt "), ("&", " and "),
              ("+", " plus "), ("%", " pct "))


def slug(text: str) -> str:
    """A snake_case code for a raw value or header: ``"... < 0 DM"`` → ``"lt_0_dm"``."""
    out = text.lower()
    for op, word in _OPERATORS:
        out = out.replace(op, word)
    out = re.sub(r"[^a-z0-9]+", "_", out).strip("_")
    return out or "value"


def _unique_codes(values: list[str]) -> list[str]:
    codes: list[str] = []
    for v in values:
        code, n = slug(v), 2
        while code in codes:
            code, n = f"{slug(v)}_{n}", n + 1
        codes.append(code)
    return codes


def draft_feature(name: str, text: pd.Series, max_categories: int = 50) -> Feature:
    """Infer one feature from its text column."""
    stripped = text.astype(str).str.strip()
    missing = stripped.str.lower().isin(MISSING_TOKENS)
    present = stripped[~missing]
    numbers = pd.to_numeric(present, errors="coerce")
    field = slug(name)
    label = name.replace("_", " ").strip().capitalize()
    if len(present) and numbers.notna().all():
        return Feature(
            name=field, kind=NUMERIC, label=label, column=name if field != name else "",
            description=f"{label} (drafted: review the bounds).",
            minimum=float(numbers.min()), maximum=float(numbers.max()),
            integer=bool((numbers == numbers.round()).all()), nullable=bool(missing.any()),
        )
    values = sorted(present.unique())
    if len(values) > max_categories:
        raise ValueError(f"column {name!r} has {len(values)} distinct text values: too many "
                         "for a categorical feature; drop it or bin it before drafting")
    cats = tuple(Category(code=c, value=v, label=v) for c, v in zip(_unique_codes(values), values))
    return Feature(name=field, kind=CATEGORICAL, label=label, column=name if field != name else "",
                   description=f"{label} (drafted: review the categories).",
                   categories=cats, nullable=bool(missing.any()))


def draft_spec(csv_path: str | Path, target: str, positive: str,
               protected: tuple[str, ...] = (), name: str | None = None,
               approve_bad: float = 5.0, decline_good: float = 1.0) -> DatasetSpec:
    """Draft a spec for ``csv_path`` with ``target`` as the label and ``positive`` as default.

    Raises:
        ValueError: the target or a protected column is not in the file, or the
            positive value does not occur in the target.
    """
    raw = read_raw(csv_path)
    for col in (target, *protected):
        if col not in raw.columns:
            raise ValueError(f"column {col!r} is not in {csv_path}")
    classes = sorted(raw[target].astype(str).str.strip().unique())
    if positive not in classes:
        raise ValueError(f"positive class {positive!r} is not among the target's values {classes}")
    negatives = [c for c in classes if c != positive]
    features, guarded = [], []
    for col in raw.columns:
        if col == target:
            continue
        (guarded if col in protected else features).append(draft_feature(col, raw[col]))
    return DatasetSpec(
        name=name or slug(Path(csv_path).stem),
        target=Target(column=target, positive=positive,
                      negative=negatives[0] if len(negatives) == 1 else ""),
        features=tuple(features), protected=tuple(guarded),
        cost=CostMatrix(approve_bad=approve_bad, decline_good=decline_good),
        description=f"Drafted from {Path(csv_path).name}: review every entry before training.",
    )


def add_arguments(parser) -> None:
    """Options of ``python -m ml spec``."""
    parser.add_argument("csv", help="the data set to describe")
    parser.add_argument("--target", required=True, help="the label column")
    parser.add_argument("--positive", required=True, help="the label value meaning default")
    parser.add_argument("--protected", nargs="*", default=[],
                        help="columns kept out of the model, used for fairness reports")
    parser.add_argument("--name", help="model name (default: from the file name)")
    parser.add_argument("--out", help="write the spec here (default: print it)")


def run(args) -> int:
    """Draft the spec and write or print it."""
    spec = draft_spec(args.csv, args.target, args.positive, tuple(args.protected), args.name)
    if args.out:
        spec.save(args.out)
        print(f"spec drafted to {args.out}: review kinds, categories, bounds and labels")
    else:
        import yaml
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True, width=100))
    return 0
