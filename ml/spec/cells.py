"""How one text cell of a credit file becomes a feature value: the rules every reader shares.

Training (:func:`ml.training.data.convert_column`) and batch scoring
(:mod:`ml.batch.columns`) both read cells through :func:`read_cell`, so a file that
trains a model is scored with the same meaning: surrounding whitespace is ignored, the
:data:`MISSING_TOKENS` (any case) mean "no value", a categorical cell may hold a
category's raw spelling or its code (the raw spelling wins when a value equals another
category's code), and a numeric cell is a plain decimal number (:data:`NUMBER`), finite
and inside the feature's bounds. Pure Python, no pandas: safe for every package.
"""
from __future__ import annotations

import math
import re
from typing import Any

from ml.spec.schema import CATEGORICAL, Feature

MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "?")
"""Cell texts that mean "no value", after stripping and lower-casing."""

NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""A numeric cell, whole (``fullmatch``): ASCII digits only, so ``inf``, ``1_000``, hex
and other scripts' digits, all of which Python's ``float`` accepts, are not numbers."""

# Problem codes of a cell (0: none). A missing cell is a problem only where the spec does
# not allow missing values; an out-of-range number keeps its value (training reports it).
FINE, MISSING, INVALID, OUTSIDE = 0, 1, 2, 3


def is_missing(text: str) -> bool:
    """Whether a cell's text means "no value"."""
    return text.strip().lower() in MISSING_TOKENS


def category_lookup(feature: Feature) -> dict[str, str]:
    """Cell text (stripped) → category code: every code, then every raw value (which win)."""
    lookup = {c.code: c.code for c in feature.categories}
    lookup.update({c.value: c.code for c in feature.categories})
    return lookup


def bounds(feature: Feature) -> tuple[float, float]:
    """The feature's inclusive range, open ends as infinities."""
    low = -math.inf if feature.minimum is None else feature.minimum
    high = math.inf if feature.maximum is None else feature.maximum
    return low, high


def read_cell(feature: Feature, text: str,
              lookup: dict[str, str] | None = None) -> tuple[Any, int]:
    """The value of one cell and its problem code.

    Args:
        feature: the column's feature.
        text: the cell as read from the file.
        lookup: :func:`category_lookup` of ``feature``, when the caller keeps it.

    Returns:
        ``(value, problem)``: a category code or a float, ``None`` when missing or
        invalid; ``problem`` is :data:`FINE`, :data:`MISSING` (missing where the spec
        forbids it), :data:`INVALID` (unknown category, not a number) or
        :data:`OUTSIDE` (a number outside the bounds; the value is kept).
    """
    stripped = text.strip()
    if stripped.lower() in MISSING_TOKENS:
        return None, FINE if feature.nullable else MISSING
    if feature.kind == CATEGORICAL:
        code = (lookup if lookup is not None else category_lookup(feature)).get(stripped)
        return code, FINE if code is not None else INVALID
    if not NUMBER.fullmatch(stripped):
        return None, INVALID
    number = float(stripped)
    if not math.isfinite(number):  # a literal beyond the float range, e.g. 1e400
        return None, INVALID
    low, high = bounds(feature)
    return number, FINE if low <= number <= high else OUTSIDE


def problem_text(feature: Feature, problem: int) -> str:
    """What a problem code means for ``feature``, as the batch scorer's errors file says it."""
    if problem == MISSING:
        return "is missing and the spec does not allow missing values"
    if problem == INVALID:
        return ("is not one of the allowed values" if feature.kind == CATEGORICAL
                else "is not a number")
    if problem == OUTSIDE:
        low, high = bounds(feature)
        return f"is outside [{_fmt(low)}, {_fmt(high)}]"
    return ""


def _fmt(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else str(x)
