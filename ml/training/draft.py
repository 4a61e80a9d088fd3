"""Draft a dataset spec from a new CSV, for its owner to review and edit.

Kinds, categories, bounds and nullability are inferred from the data; labels and
descriptions are placeholders made from the column names. Columns that cannot be
features as they stand (empty, constant, a row identifier, free text with too many
values) are left out with a warning, and every name is made unique, so the draft
always loads and trains. Nothing here is used at serving time.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ml.spec.cells import MISSING_TOKENS
from ml.training.data import read_raw, target_values
from ml.spec.schema import (CATEGORICAL, NUMERIC, RESERVED_NAMES, Category, CostMatrix,
                            DatasetSpec, Feature, Target)

log = logging.getLogger(__name__)

_OPERATORS = (("≥", " ge "), ("≤", " le "), (">=", " ge "), ("<=", " le "), ("<", " lt "),
              (">", " gt "), ("&", " and "), ("+", " plus "), ("%", " pct "))
# Thousands separators, currency signs and units around a number ("$1,200", "12 %").
_NUMBER_DECORATION = r"[,\s$€£%]"
# Whole-number columns with at most this many values may be codes: the draft says so.
FEW_CODES = 10


def slug(text: str) -> str:
    """A snake_case code for a raw value or header: ``"... < 0 DM"`` → ``"lt_0_dm"``.

    Accents are dropped rather than the letters that carry them (``"Età"`` → ``"eta"``).
    """
    out = text.lower()
    for op, word in _OPERATORS:
        out = out.replace(op, word)
    out = unicodedata.normalize("NFKD", out).encode("ascii", "ignore").decode("ascii")
    out = re.sub(r"[^a-z0-9]+", "_", out).strip("_")
    return out or "value"


def _unique(code: str, taken: set[str]) -> str:
    """``code``, or ``code_2``, ``code_3``... whichever is not taken yet; marks it taken."""
    candidate, n = code, 2
    while candidate in taken:
        candidate, n = f"{code}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _unique_codes(values: list[str]) -> list[str]:
    taken: set[str] = set()
    return [_unique(slug(v), taken) for v in values]


def _present(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The stripped values that are not missing, and the missing mask."""
    stripped = text.astype(str).str.strip()
    missing = stripped.str.lower().isin(MISSING_TOKENS)
    return stripped[~missing], missing


def unusable(name: str, text: pd.Series, max_categories: int = 50) -> str | None:
    """Why column ``name`` cannot be a model feature as it stands, or ``None``.

    Empty and constant columns carry no signal; a row identifier (a different whole
    number in every row, in file order or named like an id) and free text with more
    than ``max_categories`` values would only be memorised.
    """
    present, _ = _present(text)
    if present.empty:
        return "every value is missing"
    distinct = present.nunique()
    if distinct == 1:
        return "it holds a single value"
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        id_like = slug(name) == "id" or slug(name).endswith("_id") or slug(name).startswith("id_")
        if (distinct == len(present) > 2 and (numbers == numbers.round()).all()
                and (numbers.is_monotonic_increasing or id_like)):
            return "it looks like a row identifier (a different whole number in every row)"
        return None
    if distinct > max_categories:
        cleaned = pd.to_numeric(present.str.replace(_NUMBER_DECORATION, "", regex=True),
                                errors="coerce")
        if cleaned.notna().mean() >= 0.9:
            shown = sorted(present[numbers.isna()].unique())[:3]
            return (f"it looks numeric but {int(numbers.isna().sum())} values are not plain "
                    f"numbers (e.g. {shown}): write them without separators, units or "
                    "currency signs, leave missing ones empty, and draft again")
        return (f"it has {distinct} distinct text values, too many for a categorical "
                "feature: group them into fewer values and add it to the spec by hand")
    return None


def draft_feature(name: str, text: pd.Series, max_categories: int = 50, field: str = "",
                  categorical: bool = False) -> Feature:
    """Infer one feature from its text column.

    Args:
        name: the CSV header.
        text: the column as read by :func:`ml.training.data.read_raw`.
        max_categories: most distinct text values of a categorical feature.
        field: the feature's name (default: the slug of ``name``).
        categorical: treat numbers as category codes (e.g. a region coded 1, 2, 3).

    Raises:
        ValueError: a text column has more than ``max_categories`` distinct values.
    """
    present, missing = _present(text)
    numbers = pd.to_numeric(present, errors="coerce")
    field = field or slug(name)
    label = name.replace("_", " ").strip().capitalize()
    column = name if field != name else ""
    if len(present) and numbers.notna().all() and not categorical:
        integer = bool((numbers == numbers.round()).all())
        hint = "review the bounds"
        if integer and numbers.nunique() <= FEW_CODES:
            hint += (f"; only {numbers.nunique()} distinct whole numbers: if they are codes "
                     "rather than quantities, draft again with --categorical")
        return Feature(
            name=field, kind=NUMERIC, label=label, column=column,
            description=f"{label} (drafted: {hint}).",
            minimum=float(numbers.min()), maximum=float(numbers.max()),
            integer=integer, nullable=bool(missing.any()),
        )
    values = sorted(present.unique())
    if numbers.notna().all():  # numeric codes in numeric order: 1, 2, 10 (not 1, 10, 2)
        values = sorted(values, key=float)
    if len(values) > max_categories:
        raise ValueError(f"column {name!r} has {len(values)} distinct text values: too many "
                         "for a categorical feature; drop it or bin it before drafting")
    cats = tuple(Category(code=c, value=v, label=v) for c, v in zip(_unique_codes(values), values))
    return Feature(name=field, kind=CATEGORICAL, label=label, column=column,
                   description=f"{label} (drafted: review the categories).",
                   categories=cats, nullable=bool(missing.any()))


def leak_warning(name: str, text: pd.Series, target: pd.Series) -> str | None:
    """A warning when a column is missing only in rows of one class (at least 10 of them).

    A value recorded only after the outcome (collateral seized, a recovery amount) is
    missing for the other class and gives the answer away: a model learns it, and it is
    not known when an applicant applies.
    """
    _, missing = _present(text)
    classes = target[missing].unique()
    if missing.sum() >= 10 and len(classes) == 1 and target.nunique() > 1:
        return (f"column {name!r} is missing in {int(missing.sum())} rows, all of class "
                f"{classes[0]!r}: if it is recorded after the outcome it leaks it; "
                "check it before training")
    return None


def draft_spec(csv_path: str | Path, target: str, positive: str,
               protected: tuple[str, ...] = (), name: str | None = None,
               approve_bad: float = 5.0, decline_good: float = 1.0,
               categorical: tuple[str, ...] = (), max_categories: int = 50) -> DatasetSpec:
    """Draft a spec for ``csv_path`` with ``target`` as the label and ``positive`` as default.

    The positive value is matched as training matches it: stripped, ignoring case.
    Protected columns are always kept; other columns that :func:`unusable` refuses are
    left out, with a warning and a note in the spec's description.

    Raises:
        ValueError: the target, a protected or a categorical column is not in the file,
            or the positive value does not occur in the target.
        ml.spec.schema.SpecError: the draft is not a usable spec (e.g. no feature is left).
    """
    raw = read_raw(csv_path)
    for col in (target, *protected, *categorical):
        if col not in raw.columns:
            hint = (": it has a single column, is it separated by something other than "
                    "commas?" if len(raw.columns) == 1 else "")
            raise ValueError(f"column {col!r} is not in {csv_path}{hint}")
    folded = target_values(raw[target])
    spelled = raw[target].astype(str).str.strip()
    known = ~folded.isin(MISSING_TOKENS)
    wanted = positive.strip().casefold()
    if wanted not in set(folded[known]):
        raise ValueError(f"positive class {positive!r} is not among the target's values "
                         f"{sorted(spelled[known].unique())[:20]}")
    negatives = sorted(set(folded[known]) - {wanted})
    features, guarded, left_out = [], [], []
    taken = set(RESERVED_NAMES)
    labels: set[str] = set()
    for col in raw.columns:
        if col == target:
            continue
        if col not in protected:
            reason = unusable(col, raw[col], max_categories)
            if reason:
                log.warning("column %r left out of the draft: %s", col, reason)
                left_out.append(f"{col!r} ({reason})")
                continue
            warning = leak_warning(col, raw[col], folded.where(known))
            if warning:
                log.warning(warning)
        feature = draft_feature(col, raw[col], max_categories, _unique(slug(col), taken),
                                categorical=col in categorical)
        if feature.label.casefold() in labels:  # "Amount" and "amount": tell them apart
            feature = replace(feature, label=f"{feature.label} ({feature.name})")
        labels.add(feature.label.casefold())
        (guarded if col in protected else features).append(feature)
    description = f"Drafted from {Path(csv_path).name}: review every entry before training."
    if left_out:
        description += " Left out: " + "; ".join(left_out) + "."
    spec = DatasetSpec(
        name=name or slug(Path(csv_path).stem),
        target=Target(column=target, positive=_spelling(spelled, folded == wanted),
                      negative=_spelling(spelled, folded == negatives[0])
                      if len(negatives) == 1 else ""),
        features=tuple(features), protected=tuple(guarded),
        cost=CostMatrix(approve_bad=approve_bad, decline_good=decline_good),
        description=description,
    )
    # Through the loader's checks, so a draft that would not load fails here, not later.
    return DatasetSpec.from_dict(spec.to_dict())


def _spelling(values: pd.Series, mask: pd.Series) -> str:
    """The most frequent spelling of one class in the file (``"Yes"`` over ``"yes "``)."""
    return str(values[mask].value_counts().index[0])


def add_arguments(parser) -> None:
    """Options of ``python -m ml spec``."""
    parser.add_argument("csv", help="the data set to describe")
    parser.add_argument("--target", required=True, help="the label column")
    parser.add_argument("--positive", required=True,
                        help="the label value meaning default (case and spaces ignored)")
    parser.add_argument("--protected", nargs="*", default=[],
                        help="columns kept out of the model, used for fairness reports")
    parser.add_argument("--categorical", nargs="*", default=[],
                        help="numeric columns that hold category codes (e.g. region 1, 2, 3)")
    parser.add_argument("--cost", nargs=2, type=float, default=(5.0, 1.0),
                        metavar=("APPROVE_BAD", "DECLINE_GOOD"),
                        help="cost of approving a defaulter and of declining a good "
                             "applicant (default 5 1)")
    parser.add_argument("--max-categories", type=int, default=50,
                        help="text columns with more distinct values are left out")
    parser.add_argument("--name", help="model name (default: from the file name)")
    parser.add_argument("--out", help="write the spec here (default: print it)")


def run(args) -> int:
    """Draft the spec and write or print it."""
    spec = draft_spec(args.csv, args.target, args.positive, tuple(args.protected), args.name,
                      *args.cost, categorical=tuple(args.categorical),
                      max_categories=args.max_categories)
    if args.out:
        spec.save(args.out)
        print(f"spec drafted to {args.out}: review kinds, categories, bounds and labels")
    else:
        import yaml
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True, width=100))
    return 0
