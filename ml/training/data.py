"""Data stage: read a credit CSV, validate it against its spec, split it.

The validated frame holds category *codes* (never the raw CSV spellings), floats for
numeric columns with NaN where a value is missing, and the target as 0/1 (1 = the
spec's positive class, i.e. default).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ml.serving.signing import sha256_of
from ml.spec.cells import (INVALID, MISSING_TOKENS, OUTSIDE, bounds, category_lookup,
                           read_cell)
from ml.spec.schema import CATEGORICAL, DatasetSpec, Feature


class DataError(ValueError):
    """The data does not meet its spec; ``problems`` names each column and what is wrong."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("data does not meet its spec:\n  - " + "\n  - ".join(problems))


@dataclass
class Dataset:
    """A validated frame: features (model + protected columns, by spec name) and target."""

    X: pd.DataFrame
    y: np.ndarray
    spec: DatasetSpec
    sha256: str = ""
    path: str = ""


@dataclass
class Split:
    """Stratified train / validation / test parts of one data set."""

    X_train: pd.DataFrame
    y_train: np.ndarray
    X_val: pd.DataFrame
    y_val: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray


def read_raw(path: str | Path) -> pd.DataFrame:
    """Read a CSV with every column as text, so validation sees what the file says."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)


def load_dataset(path: str | Path, spec: DatasetSpec) -> Dataset:
    """Read and validate a CSV against ``spec``; raises :class:`DataError` listing every problem."""
    raw = read_raw(path)
    X, y = validate_frame(raw, spec)
    return Dataset(X=X, y=y, spec=spec, sha256=sha256_of(path), path=str(path))


def validate_frame(raw: pd.DataFrame, spec: DatasetSpec,
                   require_target: bool = True) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Turn a text frame into the validated frame, or raise :class:`DataError`."""
    problems: list[str] = []
    columns: dict[str, pd.Series] = {}
    for f in (*spec.features, *spec.protected):
        if f.source_column not in raw.columns:
            problems.append(f"column {f.source_column!r}: missing from the file")
            continue
        series, problem = convert_column(raw[f.source_column], f)
        if problem:
            problems.append(f"column {f.source_column!r}: {problem}")
        columns[f.name] = series
    y = None
    if require_target:
        y, target_problems = _convert_target(raw, spec)
        problems += target_problems
    if problems:
        raise DataError(problems)
    return pd.DataFrame(columns, index=raw.index), y


def convert_column(text: pd.Series, feature: Feature) -> tuple[pd.Series, str | None]:
    """Convert one text column to codes or floats; also say what is wrong with it, if anything.

    Each distinct cell is read by :func:`ml.spec.cells.read_cell`, the rules the batch
    scorer applies too. Returns the converted column (invalid cells as missing) and a
    problem description or ``None``. The description counts offending rows and shows at
    most a few distinct offending values (this is the data owner's own file, not a client
    request).
    """
    stripped = text.astype(str).str.strip()
    lookup = category_lookup(feature) if feature.kind == CATEGORICAL else None
    distinct = pd.unique(stripped.to_numpy())
    read = [read_cell(feature, cell, lookup) for cell in distinct]
    position = pd.Index(distinct).get_indexer(stripped.to_numpy())
    problem = np.array([p for _, p in read], dtype=np.int8)[position]
    missing = stripped.str.lower().isin(MISSING_TOKENS).to_numpy()
    bad = problem == INVALID
    problems = []
    if feature.kind == CATEGORICAL:
        codes = np.array([np.nan if v is None else v for v, _ in read], dtype=object)
        if bad.any():
            shown = sorted(stripped[bad].unique())[:5]
            problems.append(f"{int(bad.sum())} rows have unknown categories {shown}")
        out = pd.Series(codes[position], index=text.index, dtype=object)
    else:
        numbers = np.array([np.nan if v is None else v for v, _ in read], dtype=np.float64)
        if bad.any():
            shown = sorted(stripped[bad].unique())[:5]
            problems.append(f"{int(bad.sum())} rows are not numeric {shown}")
        outside = problem == OUTSIDE
        if outside.any():
            low, high = bounds(feature)
            problems.append(f"{int(outside.sum())} rows lie outside [{low}, {high}]")
        out = pd.Series(numbers[position], index=text.index, dtype=float)
    if missing.any() and not feature.nullable:
        problems.append(f"{int(missing.sum())} rows are missing a value and the spec does not "
                        "allow missing values (set nullable: true)")
    return out, "; ".join(problems) or None


def target_values(column: pd.Series) -> pd.Series:
    """The target as classes are compared: stripped and case-folded (``" Yes"`` is ``"yes"``)."""
    return column.astype(str).str.strip().str.casefold()


def _convert_target(raw: pd.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray | None, list[str]]:
    col = spec.target.column
    if col not in raw.columns:
        return None, [f"target column {col!r}: missing from the file"]
    values = target_values(raw[col])
    unlabelled = int(values.isin(MISSING_TOKENS).sum())
    if unlabelled:
        return None, [f"target column {col!r}: {unlabelled} rows have no value; drop them "
                      "(a model learns only from known outcomes)"]
    classes = sorted(values.unique())
    if len(classes) != 2:
        return None, [f"target column {col!r}: must have exactly two classes, found {len(classes)}"
                      f" {classes[:10]}"]
    positive = spec.target.positive.strip().casefold()
    if positive not in classes:
        return None, [f"target column {col!r}: positive class {spec.target.positive!r} not found "
                      f"among {classes}"]
    y = (values == positive).to_numpy(dtype=np.int64)
    problems = []
    for label, count in ((spec.target.positive, int(y.sum())),
                         ("the other class", int(len(y) - y.sum()))):
        if count < spec.min_class_rows:
            problems.append(f"target column {col!r}: {label} has only {count} rows "
                            f"(at least {spec.min_class_rows} needed)")
    return y, problems


def split(data: Dataset, seed: int, val_size: float = 0.2, test_size: float = 0.2) -> Split:
    """Stratified train / validation / test split with a fixed seed (60/20/20 by default)."""
    # Imported here: the batch scorer reads data.py's cell rules and must not pay sklearn's
    # import (seconds) to score ten rows.
    from sklearn.model_selection import train_test_split

    X_rest, X_test, y_rest, y_test = train_test_split(
        data.X, data.y, test_size=test_size, stratify=data.y, random_state=seed)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest, y_rest, test_size=val_size / (1 - test_size), stratify=y_rest,
        random_state=seed)
    return Split(X_train, y_train, X_val, y_val, X_test, y_test)


def records_to_frame(records: Sequence[dict[str, Any]], spec: DatasetSpec) -> pd.DataFrame:
    """Records as a validated frame (codes as object with NaN, numbers as float64)."""
    columns = {}
    for f in spec.features:
        values = [r.get(f.name) for r in records]
        if f.kind == CATEGORICAL:
            columns[f.name] = pd.Series([np.nan if v is None else v for v in values],
                                        dtype=object)
        else:
            columns[f.name] = pd.Series(np.array(values, dtype=np.float64))
    return pd.DataFrame(columns)
