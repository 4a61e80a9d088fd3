"""A compiled scorecard: bin edges, category groups, missing bins and points, as arrays.

:func:`ml.training.scorecard.compile_scorecard` builds it from a fitted optbinning
``Scorecard``; the trainer checks it against optbinning on every training row. It
plays the two parts of a :class:`ml.serving.compiled.Member`: :class:`Binning` is the
encoder (a raw matrix → each characteristic's points, one column per feature) and
:class:`Points` the estimator (the points' sum → P(default)), so the model file,
the batch scorer and the what-if machinery treat it like any other family.

Binning, as optbinning's transform does it: a number ``x`` falls in bin
``searchsorted(splits, x, side="right")`` (``np.digitize``, ``right=False``); a category
in the group that lists it; a missing value in the missing bin; a category the
training rows never showed (or a code the spec does not know) scores the points of a
neutral WoE. The score is the points' sum plus the intercept; the PD is
``expit((offset - score) / factor)``, the logistic regression's own decision undone
from the scaling (|Δ| about 1e-14).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.serving.errors import UnsupportedModelError

NUMERIC = "numeric"


@dataclass
class Characteristic:
    """One feature's bins and points, as the compiler hands them over.

    Numeric: ``splits`` (ascending) and ``bin_points`` (one more than splits).
    Categorical: ``code_points`` for every code of the spec, ``neutral`` for others.
    """

    name: str
    kind: str
    missing: float
    splits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bin_points: np.ndarray = field(default_factory=lambda: np.zeros(1))
    code_points: dict[str, float] = field(default_factory=dict)
    neutral: float = 0.0

    @classmethod
    def numeric(cls, name: str, splits: np.ndarray, bin_points: np.ndarray,
                missing: float) -> "Characteristic":
        """A binned number."""
        if len(bin_points) != len(splits) + 1 or np.any(np.diff(splits) <= 0):
            raise UnsupportedModelError(f"scorecard {name!r}: bins and points disagree")
        return cls(name, NUMERIC, float(missing), np.asarray(splits, np.float64),
                   np.asarray(bin_points, np.float64))

    @classmethod
    def categorical(cls, name: str, codes: Sequence[str], groups: Sequence[Sequence[str]],
                    group_points: np.ndarray, missing: float,
                    neutral: float) -> "Characteristic":
        """Grouped categories: each code takes its group's points."""
        points = {code: float(p) for group, p in zip(groups, group_points) for code in group}
        return cls(name, "categorical", float(missing),
                   code_points={c: points.get(c, float(neutral)) for c in codes},
                   neutral=float(neutral))

    @classmethod
    def constant(cls, name: str, kind: str, codes: Sequence[str]) -> "Characteristic":
        """A feature the scorecard left out: 0 points whatever the value."""
        if kind == NUMERIC:
            return cls.numeric(name, np.zeros(0), np.zeros(1), 0.0)
        return cls.categorical(name, codes, [], np.zeros(0), 0.0, 0.0)


class Binning:
    """Raw matrix → points per characteristic (the encoder of a scorecard member).

    Output rows have ``n_out + 1`` columns like :class:`ml.serving.compiled.Encoder`'s:
    one per feature in :attr:`features` order, and a last, spare column of zeros.
    ``table[j]`` (``code_points``) holds categorical feature ``j``'s points by raw value
    + 2 (0: missing, 1: unknown, then the vocabulary).
    """

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str],
                 vocabulary: Mapping[str, Sequence[str]], splits: np.ndarray,
                 split_starts: np.ndarray, bin_points: np.ndarray, missing: np.ndarray,
                 code_points: np.ndarray):
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.features = self.numeric + self.categorical
        self.vocabulary = {c: tuple(vocabulary[c]) for c in self.categorical}
        self.n_out = len(self.features)
        self.splits = np.asarray(splits, dtype=np.float64)
        self.split_starts = np.asarray(split_starts, dtype=np.intp)
        self.bin_points = np.asarray(bin_points, dtype=np.float64)
        self.missing = np.asarray(missing, dtype=np.float64)
        self.table = np.asarray(code_points, dtype=np.float64).reshape(len(self.categorical), -1)
        if (len(self.split_starts) != len(self.numeric) + 1 or len(self.missing) != self.n_out
                or len(self.bin_points) != len(self.splits) + len(self.numeric)):
            raise ValueError("scorecard arrays differ in length")
        self._bins = [(self.splits[a:b], self.bin_points[a + j:b + j + 1])
                      for j, (a, b) in enumerate(zip(self.split_starts, self.split_starts[1:]))]
        self.max_points = self._max_points()
        self._plan = self._record_plan()

    @classmethod
    def build(cls, characteristics: Sequence[Characteristic]) -> "Binning":
        """Pack characteristics (numeric ones first, as the raw matrix orders them)."""
        num = [c for c in characteristics if c.kind == NUMERIC]
        cat = [c for c in characteristics if c.kind != NUMERIC]
        width = max((len(c.code_points) for c in cat), default=0) + 2
        table = np.zeros((len(cat), width))
        for j, c in enumerate(cat):
            table[j, 0], table[j, 1:] = c.missing, c.neutral
            table[j, 2:2 + len(c.code_points)] = list(c.code_points.values())
        return cls([c.name for c in num], [c.name for c in cat],
                   {c.name: list(c.code_points) for c in cat},
                   np.concatenate([c.splits for c in num]) if num else np.zeros(0),
                   np.cumsum([0] + [len(c.splits) for c in num]),
                   np.concatenate([c.bin_points for c in num]) if num else np.zeros(0),
                   np.array([c.missing for c in num + cat]), table)

    def state(self) -> dict[str, Any]:
        """The constructor's arguments (for the model file)."""
        return {"numeric": list(self.numeric), "categorical": list(self.categorical),
                "vocabulary": {k: list(v) for k, v in self.vocabulary.items()},
                "splits": self.splits, "split_starts": self.split_starts,
                "bin_points": self.bin_points, "missing": self.missing,
                "code_points": self.table}

    def same_as(self, other: Any) -> bool:
        """Whether ``other`` is a binning that gives every input the same points."""
        if not isinstance(other, Binning):
            return False
        mine, theirs = self.state(), other.state()
        return all(np.array_equal(mine[k], theirs[k]) if isinstance(mine[k], np.ndarray)
                   else mine[k] == theirs[k] for k in mine)

    def columns_of(self, name: str) -> list[int]:
        """The output column of feature ``name`` (one per characteristic)."""
        return [self.features.index(name)]

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Points of each characteristic for a raw matrix, shape ``(n, n_out + 1)``."""
        n = raw.shape[0]
        z = np.zeros((n, self.n_out + 1))
        for j, (splits, points) in enumerate(self._bins):
            x = raw[:, j]
            z[:, j] = np.where(np.isnan(x), self.missing[j],
                               points[np.searchsorted(splits, x, side="right")])
        k = len(self.numeric)
        c = np.fmax(raw[:, k:self.n_out], -2.0)  # fmax maps NaN (missing) to -2
        c += 2.0
        z[:, k:self.n_out] = self.table[np.arange(len(self.categorical)), c.astype(np.intp)]
        return z

    def encode_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """:meth:`encode` for records, in plain Python (the few rows of a request)."""
        rows = self.points_rows(records)
        return np.array(rows, dtype=np.float64).reshape(len(rows), self.n_out + 1)

    def points_rows(self, records: Iterable[Mapping[str, Any]]) -> list[list[float]]:
        """:meth:`encode_records` as Python lists (the single-request path skips numpy)."""
        numeric, categorical = self._plan
        rows = []
        for rec in records:
            row = []
            for name, splits, points, missing in numeric:
                v = rec[name]
                row.append(missing if v is None or v != v else points[bisect.bisect_right(
                    splits, v)])
            for name, lookup, missing, neutral in categorical:
                v = rec[name]
                row.append(lookup.get(v, neutral) if isinstance(v, str) else
                           (missing if v is None or (isinstance(v, float) and math.isnan(v))
                            else neutral))
            row.append(0.0)
            rows.append(row)
        return rows

    def _record_plan(self) -> tuple[list[tuple], list[tuple]]:
        numeric = [(name, self._bins[j][0].tolist(), self._bins[j][1].tolist(),
                    float(self.missing[j])) for j, name in enumerate(self.numeric)]
        categorical = [(name, {code: float(self.table[j, i + 2])
                               for i, code in enumerate(self.vocabulary[name])},
                        float(self.table[j, 0]), float(self.table[j, 1]))
                       for j, name in enumerate(self.categorical)]
        return numeric, categorical

    def _max_points(self) -> np.ndarray:
        """The points of each characteristic's best attribute: its best bin, or its best
        code of the spec. Reason codes count the points lost against it."""
        best = [float(points.max()) for _, points in self._bins]
        best += [float(self.table[j, 2:2 + len(self.vocabulary[name])].max())
                 for j, name in enumerate(self.categorical)]
        return np.array(best)


class Points:
    """The scorecard's estimator: P(default) from the points' sum, undoing the scaling."""

    has_decision = True

    def __init__(self, intercept: float, factor: float, offset: float):
        self.intercept, self.factor, self.offset = float(intercept), float(factor), float(offset)

    def state(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {"intercept": self.intercept, "factor": self.factor, "offset": self.offset}

    def score(self, z: np.ndarray) -> np.ndarray:
        """Total points of encoded rows (the spare column is 0).

        Added column by column, left to right, as Python's ``sum`` adds a row's list: a
        request's applicant gets the same bits as in a batch (``z.sum(axis=1)`` adds in
        pairs).
        """
        total = np.zeros(len(z))
        for j in range(z.shape[1]):
            total += z[:, j]
        return total + self.intercept

    def decision(self, z: np.ndarray) -> np.ndarray:
        """The logistic regression's log-odds of default."""
        return self.decision_of(self.score(z))

    def decision_of(self, score: np.ndarray) -> np.ndarray:
        """The log-odds of default of total scores."""
        return (self.offset - score) / self.factor

    def proba(self, z: np.ndarray) -> np.ndarray:
        """P(default) of encoded rows."""
        return self.proba_of(self.score(z))

    def proba_of(self, score: np.ndarray) -> np.ndarray:
        """P(default) of total scores."""
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-self.decision_of(score)))
