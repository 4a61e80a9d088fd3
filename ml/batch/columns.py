"""Feature columns of a record batch → the model's raw matrix, and what is wrong with each cell.

A text column is dictionary-encoded by pyarrow, so only its distinct cells reach Python,
where :func:`ml.spec.cells.read_cell` (the rules training uses) reads each of them once
per file and a cache remembers the answer; every row then gets its value by an index
into that small table. Typed columns (a Parquet file's integers and floats) are taken
as numbers directly. The raw layout is the model's (:meth:`Predictor.score_raw`):
numbers as floats, categories as the model's value for their code, NaN when missing.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml.batch.arrays import to_numpy
from ml.serving.predictor import Predictor
from ml.spec.cells import FINE, INVALID, MISSING, OUTSIDE, bounds, category_lookup, read_cell
from ml.spec.schema import CATEGORICAL, Feature

UNKNOWN = -1.0  # the model's raw value of a code it has never seen (a one-hot row of zeros)


def code_values(predictor: Predictor) -> dict[str, dict[str, float]]:
    """For each categorical model feature, its codes' raw values in the model's layout.

    Asked of the model itself (records → raw matrix), so the batch scorer does not
    depend on how the compiled model numbers its categories.
    """
    features = [predictor.spec.feature(name) for name in predictor.features]
    codes = {f.name: [c.code for c in f.categories] for f in features if f.kind == CATEGORICAL}
    rows = max((len(c) for c in codes.values()), default=0)
    records = [{f.name: (codes[f.name][i % len(codes[f.name])] if f.name in codes else 0.0)
                for f in features} for i in range(rows)]
    raw = predictor.fast.raw_from_records(records) if rows else np.zeros((0, len(features)))
    return {name: {code: float(raw[i, predictor.features.index(name)])
                   for i, code in enumerate(values)}
            for name, values in codes.items()}


class ColumnReader:
    """Reads one feature's column of every batch of a file, each distinct cell once.

    Attributes:
        feature: the feature read.
        LIMIT: distinct cells kept in the cache; past it, new cells are read per batch
            (a column of amounts with cents can have as many distinct cells as rows).
    """

    LIMIT = 200_000

    def __init__(self, feature: Feature, codes: dict[str, float] | None = None):
        self.feature = feature
        self.codes = codes or {}
        self.lookup = category_lookup(feature) if feature.kind == CATEGORICAL else None
        self.cache: dict[str, tuple[float, int]] = {}
        self.missing = (np.nan, FINE if feature.nullable else MISSING)

    def read(self, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Raw values (float64) and problem codes (int8, see :mod:`ml.spec.cells`) of a column."""
        kind = column.type
        if self.feature.kind != CATEGORICAL and (pa.types.is_integer(kind)
                                                 or pa.types.is_floating(kind)
                                                 or pa.types.is_decimal(kind)):
            return self._numbers(column)
        try:
            if not pa.types.is_dictionary(kind):
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                    column = pc.cast(column, pa.string())
                column = pc.dictionary_encode(column)
            distinct = column.dictionary
            if not pa.types.is_string(distinct.type):
                distinct = pc.cast(distinct, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(f"column {self.feature.source_column!r} holds {kind} values, "
                             "which cannot be read as text or numbers") from None
        values, problems = self._distinct(distinct.to_pylist())
        # Null cells (a Parquet file's) point one past the distinct cells: "missing".
        indices = to_numpy(pc.cast(column.indices, pa.int64()), np.int64, fill=len(values))
        values = np.append(values, self.missing[0])
        problems = np.append(problems, np.int8(self.missing[1]))
        return values[indices], problems[indices]

    def _distinct(self, cells: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Raw values and problems of distinct cells (``None``: a null dictionary entry)."""
        values = np.empty(len(cells))
        problems = np.empty(len(cells), dtype=np.int8)
        cache = self.cache
        for i, cell in enumerate(cells):
            known = cache.get(cell) if cell is not None else self.missing
            if known is None:
                known = self._read(cell)
                if len(cache) < self.LIMIT:
                    cache[cell] = known
            values[i], problems[i] = known
        return values, problems

    def _read(self, cell: str) -> tuple[float, int]:
        value, problem = read_cell(self.feature, cell, self.lookup)
        if value is None:
            return np.nan, problem
        if self.lookup is not None:
            return self.codes.get(value, UNKNOWN), problem
        return value, problem

    def _numbers(self, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """A typed numeric column: nulls and NaN are missing, infinities not numbers."""
        values = to_numpy(pc.cast(column, pa.float64()), np.float64, fill=np.nan).copy()
        problems = np.zeros(len(values), dtype=np.int8)
        missing = np.isnan(values)
        problems[missing] = self.missing[1]
        low, high = bounds(self.feature)
        problems[~missing & ((values < low) | (values > high))] = OUTSIDE
        infinite = np.isinf(values)
        problems[infinite] = INVALID
        values[infinite] = np.nan
        return values, problems
