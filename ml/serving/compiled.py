"""The compiled model: a fitted sklearn credit model as numpy arrays, scored without sklearn.

:func:`ml.training.compile.compile_model` reads the fitted sklearn objects once and
builds a :class:`FastModel` from the numbers they use; this module only scores. It
gives the same P(default) as ``model.predict_proba(frame)[:, 1]`` to 1e-9 (tested on
every training row, for every family) and imports neither sklearn, scipy nor pandas.
:mod:`ml.serving.modelfile` writes and reads it as JSON plus ``.npz`` arrays (data,
never code). Why it exists and its figures: ``docs/design.md``.

Inputs come in a *raw* matrix, one float64 column per model input feature in
:attr:`FastModel.features` order: numbers as they are (NaN = missing); categories as
their index in :attr:`FastModel.vocabulary` (NaN = missing, -1 = unknown code).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ml.serving.errors import UnsupportedModelError
from ml.serving.trees import TreeBank

UNKNOWN = -1.0
"""Raw value of a category code the encoder has never heard of (one-hot row of zeros)."""


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic function, as ``scipy.special.expit`` computes it for float64."""
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -709 gives exactly 0.0
        return 1.0 / (1.0 + np.exp(-x))


def _is_missing(value: Any) -> bool:
    """``None`` or a float NaN: what the imputers treat as missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


class Encoder:
    """A fitted ``ColumnTransformer`` as arrays: raw matrix → the estimator's input.

    Numeric columns: fill NaN with ``fill``, then ``(x - mean) / scale`` (the
    imputer and scaler's own operations, in their order: bit-identical). One-hot
    columns come from ``table[feature, raw value + 2]``; missing (-2 after NaN
    replacement) maps to the fill value's column and unknown (-1) to a spare column
    ``n_out`` past the end, which no estimator reads.
    """

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str],
                 vocabulary: Mapping[str, Sequence[str]], n_out: int, num_out: np.ndarray,
                 fill: np.ndarray, mean: np.ndarray, scale: np.ndarray, table: np.ndarray):
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.features = self.numeric + self.categorical
        self.vocabulary = {c: tuple(vocabulary[c]) for c in self.categorical}
        self.n_out = int(n_out)
        self.num_out = np.asarray(num_out, dtype=np.intp)
        self.fill, self.mean, self.scale = (np.asarray(a, dtype=np.float64)
                                            for a in (fill, mean, scale))
        self.table = np.asarray(table, dtype=np.intp).reshape(len(self.categorical), -1)
        self.table_rows = np.arange(len(self.categorical), dtype=np.intp)
        where = {f: i for i, f in enumerate(self.features)}
        self.num_pos = np.array([where[c] for c in self.numeric], dtype=np.intp)
        self.cat_pos = np.array([where[c] for c in self.categorical], dtype=np.intp)
        self._plan = self._record_plan()

    def state(self) -> dict[str, Any]:
        """The constructor's arguments (for the model file)."""
        return {"numeric": list(self.numeric), "categorical": list(self.categorical),
                "vocabulary": {k: list(v) for k, v in self.vocabulary.items()},
                "n_out": self.n_out, "num_out": self.num_out, "fill": self.fill,
                "mean": self.mean, "scale": self.scale, "table": self.table}

    def same_as(self, other: "Encoder") -> bool:
        """Whether ``other`` encodes every input exactly as this one does."""
        mine, theirs = self.state(), other.state()
        return all(np.array_equal(mine[k], theirs[k]) if isinstance(mine[k], np.ndarray)
                   else mine[k] == theirs[k] for k in mine)

    def columns_of(self, name: str) -> list[int]:
        """The output columns that feature ``name`` sets."""
        if name in self.vocabulary:
            j = self.categorical.index(name)
            return sorted({int(c) for c in self.table[j]} - {self.n_out})
        return [int(self.num_out[self.numeric.index(name)])]

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """The estimator's input for a raw matrix, shape ``(n, n_out + 1)`` (last: the spare)."""
        n = raw.shape[0]
        z = np.zeros((n, self.n_out + 1))
        x = raw[:, self.num_pos]
        np.copyto(x, self.fill, where=np.isnan(x))
        x -= self.mean
        x /= self.scale
        z[:, self.num_out] = x
        c = np.fmax(raw[:, self.cat_pos], -2.0)  # fmax maps NaN (missing) to -2
        c += 2.0
        z[np.arange(n)[:, None], self.table[self.table_rows, c.astype(np.intp)]] = 1.0
        return z

    def encode_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """:meth:`encode` for records, in plain Python: faster for the few rows of a request.

        Python float arithmetic is IEEE double arithmetic, so ``(v - mean) / scale``
        gives the same bits as the numpy version.
        """
        numeric, categorical, blank = self._plan
        rows = []
        for rec in records:
            z = blank.copy()
            for name, col, fill, mean, scale in numeric:
                v = rec[name]
                if v is None or v != v:
                    v = fill
                z[col] = (v - mean) / scale
            for name, lookup, missing in categorical:
                v = rec[name]
                col = lookup.get(v) if isinstance(v, str) else (missing if _is_missing(v) else -1)
                if col is not None and col >= 0:
                    z[col] = 1.0
            rows.append(z)
        return np.array(rows, dtype=np.float64).reshape(len(rows), self.n_out + 1)

    def _record_plan(self) -> tuple[list[tuple], list[tuple], list[float]]:
        numeric = [(name, int(col), float(fill), float(mean), float(scale))
                   for name, col, fill, mean, scale in zip(
                       self.numeric, self.num_out, self.fill, self.mean, self.scale)]
        categorical = []
        for j, name in enumerate(self.categorical):
            cols = [int(c) if c != self.n_out else -1 for c in self.table[j]]
            lookup = {code: cols[i + 2] for i, code in enumerate(self.vocabulary[name])}
            categorical.append((name, lookup, cols[0]))
        return numeric, categorical, [0.0] * (self.n_out + 1)


# --------------------------------------------------------------------------- estimators


class Linear:
    """Binary logistic regression: ``expit(z @ coef + intercept)``."""

    has_decision = True

    def __init__(self, coef: np.ndarray, intercept: float):
        self.coef = np.asarray(coef, dtype=np.float64)  # includes 0.0 for the spare column
        self.intercept = float(intercept)

    def state(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {"coef": self.coef, "intercept": self.intercept}

    def decision(self, z: np.ndarray) -> np.ndarray:
        # Not z @ coef: BLAS rounds a row differently depending on its position in the
        # batch, and one applicant must get one PD wherever it stands.
        return (z * self.coef).sum(axis=1) + self.intercept

    def proba(self, z: np.ndarray) -> np.ndarray:
        return expit(self.decision(z))


class Forest:
    """Binary random forest / extra trees: each leaf holds P(default), P = mean over trees."""

    has_decision = False

    def __init__(self, bank: TreeBank):
        self.bank = bank

    def state(self) -> dict[str, Any]:
        """The constructor's arguments (besides the bank)."""
        return {}

    def proba(self, z: np.ndarray) -> np.ndarray:
        return self.bank.sums(z) / self.bank.n_trees


class Boosting:
    """Binary histogram gradient boosting: ``expit(baseline + sum of leaf values)``."""

    has_decision = True

    def __init__(self, bank: TreeBank, baseline: float):
        self.bank = bank
        self.baseline = float(baseline)

    def state(self) -> dict[str, Any]:
        """The constructor's arguments (besides the bank)."""
        return {"baseline": self.baseline}

    def decision(self, z: np.ndarray) -> np.ndarray:
        return self.baseline + self.bank.sums(z)

    def proba(self, z: np.ndarray) -> np.ndarray:
        return expit(self.decision(z))


class Sigmoid:
    """Platt calibration: ``expit(-(a t + b))``."""

    def __init__(self, a: float, b: float):
        self.a, self.b = float(a), float(b)

    def state(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {"a": self.a, "b": self.b}

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return expit(-(self.a * t + self.b))


class Isotonic:
    """Isotonic calibration: ``np.interp`` on ``t`` clipped to ``[lo, hi]``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lo: float, hi: float):
        self.x, self.y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.lo, self.hi = float(lo), float(hi)

    def state(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {"x": self.x, "y": self.y, "lo": self.lo, "hi": self.hi}

    def __call__(self, t: np.ndarray) -> np.ndarray:
        if len(self.x) == 1:
            return np.full(len(t), self.y[0])
        return np.interp(np.clip(t, self.lo, self.hi), self.x, self.y)


ESTIMATORS = {"linear": Linear, "forest": Forest, "boosting": Boosting}
CALIBRATORS = {"sigmoid": Sigmoid, "isotonic": Isotonic}


# --------------------------------------------------------------------------- members


class Member:
    """One preprocessing + estimator pipeline, optionally followed by its calibrator."""

    def __init__(self, encoder: Encoder, estimator: Any, calibrator: Any = None):
        self.encoder = encoder
        self.estimator = estimator
        self.calibrator = calibrator

    def proba(self, z: np.ndarray) -> np.ndarray:
        """P(default) for encoded rows."""
        if self.calibrator is None:
            return self.estimator.proba(z)
        t = self.estimator.decision(z) if self.estimator.has_decision else self.estimator.proba(z)
        return self.calibrated(t)

    def calibrated(self, t: np.ndarray) -> np.ndarray:
        """The calibrator's output, with sklearn's snap of (1, 1 + 1e-5] to 1."""
        p = self.calibrator(t)
        p[(p > 1.0) & (p <= 1.0 + 1e-5)] = 1.0
        return p

    def what_if_linear(self, z: np.ndarray, zb: np.ndarray,
                       by_feature: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """A linear member's P(x) and P(x with each feature set to the baseline's).

        No what-if rows are built: swapping feature j changes the decision by
        ``sum((zb - z) * coef)`` over j's columns, one ``reduceat`` for all of them
        (``by_feature``: the columns grouped by feature, and each group's start).
        """
        decision = self.estimator.decision(z)
        order, starts = by_feature
        shift = np.add.reduceat(((zb - z) * self.estimator.coef)[:, order], starts, axis=1)
        t = np.concatenate([decision[:, None], decision[:, None] + shift], axis=1)
        return expit(t) if self.calibrator is None else self.calibrated(t.reshape(-1)).reshape(
            t.shape)


class Baseline:
    """A reference applicant, pre-encoded for :meth:`FastModel.predict_raw` and friends.

    Build one with :meth:`FastModel.baseline`.
    """

    def __init__(self, model: "FastModel", record: Mapping[str, Any]):
        self.record = dict(record)
        self.raw = model.raw_from_records([record])[0]
        self.encoded = []
        for m in model.members:
            z = m.encoder.encode_records([record])[0]
            # mask[j]: the encoded columns of feature j (float32 transposed for counting)
            mask = np.zeros((len(model.features), len(z)), dtype=bool)
            groups = [m.encoder.columns_of(name) for name in model.features]
            for j, columns in enumerate(groups):
                mask[j, columns] = True
            # The encoded columns grouped by feature, and where each group starts.
            by_feature = (np.concatenate(groups).astype(np.intp),
                          np.cumsum([0] + [len(g) for g in groups[:-1]]).astype(np.intp))
            self.encoded.append((z, mask, mask.T.astype(np.float32), by_feature))


# --------------------------------------------------------------------------- the model


class FastModel:
    """P(default) for raw matrices and records, without pandas or sklearn.

    Built by :func:`ml.training.compile.compile_model` or read by
    :func:`ml.serving.modelfile.load`. Calls never mutate the object, so one instance
    can serve many threads.

    Every ``predict_*`` method takes an optional :class:`Baseline`. Without it the
    result has shape ``(n,)``; with it, shape ``(n, 1 + len(features))``: column 0 is
    each row's P(default) and column ``1 + j`` the same with ``features[j]`` set to the
    baseline's value (one batched evaluation, for reason codes).

    Attributes:
        features: model input features, in the column order of raw matrices.
        numeric: the numeric ones among them.
        categorical: the categorical ones.
        vocabulary: for each categorical feature, the codes in index order (a raw value
            ``i`` means ``vocabulary[name][i]``).
        kind: family and calibration, e.g. ``"random_forest+isotonic"``.
        members: the averaged :class:`Member` pipelines (one unless calibrated or a blend).
    """

    # Rows per block when a baseline multiplies the rows by 1 + len(features).
    BLOCK_ROWS = 65536
    # From this many records on, they are read column by column into a raw matrix and
    # encoded with numpy; below it, record by record in plain Python is faster.
    COLUMNWISE_RECORDS = 16

    def __init__(self, members: list[Member], kind: str):
        self.members = members
        self.kind = kind
        first = members[0].encoder
        self.features: tuple[str, ...] = first.features
        self.numeric: tuple[str, ...] = first.numeric
        self.categorical: tuple[str, ...] = first.categorical
        self.vocabulary: dict[str, tuple[str, ...]] = first.vocabulary
        if any(m.encoder.features != self.features or m.encoder.vocabulary != self.vocabulary
               for m in members[1:]):
            raise UnsupportedModelError("the averaged members disagree on their input columns")
        self._lookup = [(name, {c: float(i) for i, c in enumerate(self.vocabulary[name])})
                        if name in self.vocabulary else (name, None) for name in self.features]
        # For each member, the first member with the same preprocessing (a blend's members
        # are fitted on the same rows, so theirs usually is): it is encoded only once.
        self._encoder_of = [next(j for j in range(i + 1)
                                 if members[j].encoder.same_as(m.encoder))
                            for i, m in enumerate(members)]

    def _encode(self, encoders: list[Any], rows: Any) -> list[np.ndarray]:
        """Each member's encoded rows, computed once per distinct encoder."""
        out: list[np.ndarray] = []
        for i, first in enumerate(self._encoder_of):
            out.append(out[first] if first < i else encoders[i](rows))
        return out

    def baseline(self, record: Mapping[str, Any]) -> Baseline:
        """Pre-encode a reference record (all features present) for the ``baseline=`` argument."""
        return Baseline(self, record)

    def predict_raw(self, raw: np.ndarray, baseline: Baseline | None = None) -> np.ndarray:
        """P(default) for each row of a raw matrix (shape ``(n, len(features))``)."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.features):
            raise ValueError(f"raw matrix must have shape (n, {len(self.features)})")
        return self._predict([m.encoder.encode for m in self.members], raw, baseline)

    def predict_records(self, records: Sequence[Mapping[str, Any]],
                        baseline: Baseline | None = None) -> np.ndarray:
        """P(default) for validated records (``{feature: value}``, ``None`` = missing)."""
        if len(records) >= self.COLUMNWISE_RECORDS:
            return self.predict_raw(self.raw_from_records(records), baseline)
        return self._predict([m.encoder.encode_records for m in self.members], records,
                             baseline)

    def _predict(self, encoders: list[Any], rows: Any, baseline: Baseline | None) -> np.ndarray:
        if baseline is None:
            return self._mean([m.proba(z) for m, z in zip(self.members,
                                                          self._encode(encoders, rows))])
        width = 1 + len(self.features)
        step = max(1, self.BLOCK_ROWS // width)
        parts = [self._what_if(self._encode(encoders, rows[start:start + step]), baseline)
                 for start in range(0, len(rows), step)]
        return np.concatenate(parts) if parts else np.zeros((0, width))

    def _what_if(self, zs: list[np.ndarray], baseline: Baseline) -> np.ndarray:
        """P(x) and each one-feature swap to the baseline, for one block of encoded rows."""
        if all(isinstance(m.estimator, Linear) for m in self.members):
            return self._mean([m.what_if_linear(z, zb, by_feature)
                               for m, z, (zb, _, _, by_feature) in zip(self.members, zs,
                                                                       baseline.encoded)])
        # Only features whose value differs from the baseline's need a what-if row; for
        # the others the swap changes nothing. Members sharing an encoding share its rows.
        n, width = len(zs[0]), 1 + len(self.features)
        distinct = [i for i, first in enumerate(self._encoder_of) if first == i]
        differ = np.zeros((n, len(self.features)), dtype=bool)
        for i in distinct:
            zb, _, columns, _ = baseline.encoded[i]
            differ |= ((zs[i] != zb).astype(np.float32) @ columns) > 0
        row, feature = np.nonzero(differ)
        rows_of = {}
        for i in distinct:
            zb, mask, _, _ = baseline.encoded[i]
            rows_of[i] = np.concatenate([zs[i], np.where(mask[feature], zb, zs[i][row])])
        p = self._mean([m.proba(rows_of[first])
                        for m, first in zip(self.members, self._encoder_of)])
        out = np.repeat(p[:n, None], width, axis=1)
        out[row, 1 + feature] = p[n:]
        return out

    def _mean(self, probs: list[np.ndarray]) -> np.ndarray:
        if len(probs) == 1:
            return probs[0]
        total = np.zeros_like(probs[0])
        for p in probs:  # in order, as CalibratedClassifierCV.predict_proba sums them
            total += p
        return total / len(probs)

    def raw_from_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Raw matrix of records; a category code not in the vocabulary counts as unknown."""
        records = records if isinstance(records, Sequence) else list(records)
        raw = np.empty((len(records), len(self.features)))
        for j, (name, lookup) in enumerate(self._lookup):
            column = [rec[name] for rec in records]
            if lookup is None:
                raw[:, j] = np.array(column, dtype=np.float64)  # None becomes NaN
            else:
                raw[:, j] = [lookup.get(v, UNKNOWN) if isinstance(v, str)
                             else (math.nan if _is_missing(v) else UNKNOWN) for v in column]
        return raw

    def category_index(self, name: str, codes: Iterable[Any]) -> np.ndarray:
        """Raw values of codes of feature ``name``: index, NaN if missing, -1 if unknown.

        ``codes`` may be any iterable (a list, an object array, a pandas or pyarrow
        column's values); ``None`` and NaN-like values (also pandas' ``NA``) are missing.
        """
        lookup = dict(self._lookup)[name]
        return np.array([lookup.get(v, UNKNOWN) if isinstance(v, str)
                         else (math.nan if _missing_like(v) else UNKNOWN) for v in codes],
                        dtype=np.float64)


def _missing_like(value: Any) -> bool:
    """``None``, NaN, or a value whose ``!=`` is not a bool (pandas' ``NA``)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:
        return True
