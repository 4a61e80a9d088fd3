"""Reference distributions on fixed bins, and the Population Stability Index.

Training records, in the model card, how each feature and the score were distributed
over fixed bins; monitoring bins new data the same way and compares with PSI
(per feature it is usually called CSI). Rules of thumb: < 0.10 stable, 0.10–0.25 watch,
> 0.25 act. Runtime code: ``app`` may import it.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ml.spec.schema import CATEGORICAL, DatasetSpec

MISSING = "__missing__"
STABLE, WATCH = 0.10, 0.25
# Empty bins would make PSI infinite; floor proportions at this value.
EPSILON = 1e-4


def numeric_edges(values: np.ndarray, n_bins: int = 10) -> list[float]:
    """Inner quantile edges (unique) for numeric values; the outer bins are open-ended."""
    values = values[~np.isnan(values)]
    if not len(values):
        return []
    qs = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return sorted({float(q) for q in qs})


def proportions(values: Iterable[Any], ref: dict[str, Any]) -> list[float]:
    """Share of ``values`` in each bin of a reference entry (numeric or categorical).

    Numeric bins: ``(-inf, e0], (e0, e1], …, (e_last, inf)`` then a missing bin.
    Categorical bins: the reference's categories (the last is the missing bin);
    unknown codes count as missing.
    """
    if ref["kind"] == CATEGORICAL:
        cats = ref["categories"]
        index = {c: i for i, c in enumerate(cats)}
        counts = np.zeros(len(cats))
        for v in values:
            counts[index.get(v if v is not None else MISSING, len(cats) - 1)] += 1
    else:
        arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        missing = np.isnan(arr)
        edges = np.asarray(ref["edges"])
        bins = np.searchsorted(edges, arr[~missing], side="left")
        counts = np.bincount(bins, minlength=len(edges) + 1).astype(float)
        counts = np.append(counts, missing.sum())
    total = counts.sum()
    return (counts / total).tolist() if total else counts.tolist()


def psi(expected: list[float], actual: list[float]) -> float:
    """Population Stability Index between two binned distributions."""
    e = np.clip(np.asarray(expected, dtype=float), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=float), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def band(value: float) -> str:
    """``stable``, ``watch`` or ``act`` for a PSI value."""
    return "stable" if value < STABLE else "watch" if value <= WATCH else "act"


def build_reference(X: Any, spec: DatasetSpec, scores: np.ndarray) -> dict[str, Any]:
    """Reference bins and proportions for every model feature and for the score.

    Args:
        X: the validated frame the reference describes (training data).
        spec: the dataset spec.
        scores: out-of-sample P(default) for reference applicants.
    """
    features = {}
    for f in spec.features:
        column = X[f.name]
        if f.kind == CATEGORICAL:
            ref = {"kind": CATEGORICAL, "categories": [*f.codes, MISSING]}
            values = [None if isinstance(v, float) and np.isnan(v) else v for v in column]
        else:
            values = column.to_numpy(dtype=float)
            ref = {"kind": "numeric", "edges": numeric_edges(values)}
        ref["proportions"] = proportions(values, ref)
        features[f.name] = ref
    score = {"kind": "numeric", "edges": numeric_edges(np.asarray(scores, dtype=float))}
    score["proportions"] = proportions(scores, score)
    return {"features": features, "score": score, "rows": int(len(X))}


def compare(reference: dict[str, Any], records: list[dict[str, Any]],
            scores: Iterable[float]) -> dict[str, Any]:
    """PSI of the score and CSI of every referenced feature of ``records``, with bands.

    Args:
        reference: the model card's ``reference`` (``features`` and ``score`` bins).
        records: applicants as the API receives them (feature name → value).
        scores: their predicted P(default), in the same order.

    Returns:
        ``{"score": entry, "features": {name: entry}}``, each entry holding ``psi``,
        ``band`` and the ``expected`` and ``actual`` proportions per bin.
    """
    def entry(ref: dict[str, Any], values: Iterable[Any]) -> dict[str, Any]:
        actual = proportions(values, ref)
        value = psi(ref["proportions"], actual)
        return {"psi": value, "band": band(value), "expected": list(ref["proportions"]),
                "actual": actual}

    features = {name: entry(ref, [r.get(name) for r in records])
                for name, ref in reference["features"].items()}
    return {"score": entry(reference["score"], list(scores)), "features": features}
