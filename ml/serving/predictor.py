"""The predictor: one object, shared by the API and the batch scorer, that answers for a model.

``Predictor.load(path)`` verifies the artifact's signature and loads its compiled model
(:mod:`ml.serving.compiled`; written, and checked against sklearn on every training row,
by the trainer), so neither the API nor the batch scorer imports sklearn, scipy or
pandas, or unpickles anything. :meth:`Predictor.self_test` re-scores the card's
self-test record against the PD sklearn gave at training time.

Each applicant gets:

* ``probability_of_default``: P(default), equal to ``model.predict_proba`` to 1e-9.
* ``decision``: ``"decline"`` when the PD is at or above the card's cost-optimal
  ``threshold``, else ``"approve"``.
* ``risk_grade``: the band of the PD in the card's ``grades`` list, whose ``max_pd``
  values are upper bounds, exclusive except the last. The trainer writes::

      A   PD < 0.05   very low risk
      B   PD < 0.10   low risk
      C   PD < 0.20   moderate risk
      D   PD < 0.35   elevated risk
      E   PD < 0.50   high risk
      F   PD ≤ 1.00   very high risk

* ``reasons``: up to four features that raise this applicant's PD the most. For each
  feature, impact = PD(applicant) − PD(applicant with that feature set to the card's
  ``reference.baseline`` value, the typical training applicant). Reasons are the
  features with a positive impact (after rounding to 4 decimals, so no reason shows an
  impact of 0.0), largest first. A baseline applicant has none. All the what-if rows of
  a request are scored in one batched fast-path call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ml.serving.artifact import Artifact, load_serving
from ml.serving.compiled import FastModel
from ml.serving.errors import ArtifactError
from ml.spec.schema import CATEGORICAL, DatasetSpec, Feature, validate_record

MAX_REASONS = 4
SELF_TEST_TOLERANCE = 1e-9
REASON_COLUMNS = tuple(f"reason_{i + 1}" for i in range(MAX_REASONS))
OUTPUT_COLUMNS = ("probability_of_default", "decision", "risk_grade", *REASON_COLUMNS)
DECISIONS = ("approve", "decline")


@dataclass
class Scores:
    """Vectorised results for ``n`` rows (what :meth:`Predictor.score_raw` returns).

    Attributes:
        probability: P(default), shape ``(n,)``.
        decline: whether the PD is at or above the threshold, shape ``(n,)``.
        grade: index into :attr:`Predictor.grades`, shape ``(n,)``.
        reasons: index into :attr:`Predictor.features` of each reason, largest impact
            first, -1 where there is none; shape ``(n, MAX_REASONS)``, or ``None`` when
            reasons were not asked for.
        impacts: the impacts of those reasons (unrounded; 0 where there is none).
    """

    probability: np.ndarray
    decline: np.ndarray
    grade: np.ndarray
    reasons: np.ndarray | None = None
    impacts: np.ndarray | None = None


class Predictor:
    """Scores applicants with one verified model artifact; safe to share between threads.

    Attributes:
        name: the model's name (the data set's).
        version: the artifact version.
        threshold: decline when P(default) is at or above this.
        spec: the dataset spec embedded in the card.
        card: the model card.
        grades: the card's risk grades, ``{"grade", "max_pd", "label"}`` dicts.
        features: the model's input features, in the fast path's column order.
        fast: the compiled :class:`ml.serving.compiled.FastModel`.
        signer: the key id that signed the artifact (empty when built in memory).
    """

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.card: dict[str, Any] = artifact.card
        self.spec: DatasetSpec = artifact.spec
        self.name: str = artifact.name
        self.version: str = artifact.version
        self.threshold: float = _check_threshold(self.card.get("threshold"))
        self.grades: list[dict[str, Any]] = _check_grades(self.card.get("grades"))
        self._bounds = np.array([float(g["max_pd"]) for g in self.grades])
        self._letters = np.array([str(g["grade"]) for g in self.grades], dtype=object)
        self.signer: str = artifact.signer
        self.fast: FastModel = artifact.fast
        if set(self.fast.features) != set(self.spec.feature_names):
            raise ArtifactError("the model's input columns differ from the spec's features: "
                                f"{sorted(set(self.fast.features) ^ set(self.spec.feature_names))}")
        self.features: tuple[str, ...] = self.fast.features
        self._feature_specs: list[Feature] = [self.spec.feature(n) for n in self.features]
        baseline = _card_record(self.card, ("reference", "baseline"), self.spec)
        self._baseline = self.fast.baseline(baseline)

    @classmethod
    def load(cls, path: str | Path, check_versions: bool = True,
             trusted: Any = None) -> "Predictor":
        """Verify and load the artifact at ``path`` (a version or a models dir).

        ``trusted``: the trusted public keys (see :func:`ml.serving.artifact.load_serving`);
        default ``MODEL_TRUSTED_KEYS``. Raises :class:`ArtifactError` (a
        :class:`ml.serving.errors.SignatureError` when the signature does not hold).
        """
        return cls(load_serving(path, check_versions=check_versions, trusted=trusted))

    # ------------------------------------------------------------------ per request

    def predict(self, records: Sequence[dict[str, Any]],
                reasons: bool = True) -> list[dict[str, Any]]:
        """Score validated records (see :func:`ml.spec.schema.validate_record`).

        Returns one dict per record: ``probability_of_default`` (float), ``decision``
        (``"approve"``/``"decline"``), ``risk_grade`` and, unless ``reasons`` is false,
        ``reasons``: a list of ``{"feature", "label", "value", "impact", "text"}``.
        """
        if not records:
            return []
        if reasons:
            what_if = self.fast.predict_records(records, self._baseline)
            scores = self._scores(what_if[:, 0], what_if)
        else:
            scores = self._scores(self.fast.predict_records(records), None)
        # Plain Python values in one go: per-element numpy indexing costs ~10x more.
        out = [{"probability_of_default": pd_value, "decision": DECISIONS[decline],
                "risk_grade": grade}
               for pd_value, decline, grade in zip(scores.probability.tolist(),
                                                   scores.decline.tolist(),
                                                   self._letters[scores.grade].tolist())]
        if reasons:
            for result, record, chosen, impacts in zip(out, records, scores.reasons.tolist(),
                                                       scores.impacts.tolist()):
                result["reasons"] = [self._reason(record, j, impact)
                                     for j, impact in zip(chosen, impacts) if j >= 0]
        return out

    def _reason(self, record: dict[str, Any], j: int, impact: float) -> dict[str, Any]:
        feature = self._feature_specs[j]
        value = value_label(feature, record[feature.name])
        return {"feature": feature.name, "label": feature.label, "value": value,
                "impact": round(impact, 4),
                "text": f"{feature.label}: {value} raises the estimated default risk"}

    # ------------------------------------------------------------------ batches

    def score_raw(self, raw: np.ndarray, reasons: bool = True) -> Scores:
        """Score a raw matrix laid out as :attr:`features` (see :mod:`ml.serving.compiled`)."""
        if reasons:
            what_if = self.fast.predict_raw(raw, self._baseline)
            return self._scores(what_if[:, 0], what_if)
        return self._scores(self.fast.predict_raw(raw), None)

    def output_columns(self, scores: Scores) -> dict[str, np.ndarray]:
        """The output columns for some :class:`Scores`, as arrays (a frame or a table's).

        ``probability_of_default``, ``decision``, ``risk_grade`` and ``reason_1`` …
        ``reason_4`` (feature names, ``""`` if none), in :data:`OUTPUT_COLUMNS` order.
        """
        n = len(scores.probability)
        columns: dict[str, np.ndarray] = {
            "probability_of_default": scores.probability,
            "decision": np.array(DECISIONS, dtype=object)[scores.decline.astype(np.intp)],
            "risk_grade": self._letters[scores.grade],
        }
        names = np.array([*self.features, ""], dtype=object)  # -1 picks the ""
        for k, column in enumerate(REASON_COLUMNS):
            columns[column] = (names[scores.reasons[:, k]] if scores.reasons is not None
                               else np.full(n, "", dtype=object))
        return columns

    def _scores(self, probability: np.ndarray, what_if: np.ndarray | None) -> Scores:
        scores = Scores(probability=probability, decline=probability >= self.threshold,
                        grade=self.grade_index(probability))
        if what_if is not None:
            scores.reasons, scores.impacts = top_reasons(probability[:, None] - what_if[:, 1:])
        return scores

    # ------------------------------------------------------------------ grades, checks

    def grade(self, pd_value: float) -> str:
        """The risk grade of one PD (bands in the module docstring)."""
        return str(self._letters[self.grade_index(np.array([pd_value]))[0]])

    def grade_index(self, probability: np.ndarray) -> np.ndarray:
        """Index into :attr:`grades` of each PD: the first band whose ``max_pd`` exceeds it."""
        index = np.searchsorted(self._bounds, probability, side="right")
        return np.minimum(index, len(self._bounds) - 1)

    def self_test(self) -> None:
        """Re-score the card's ``self_test`` record; raise :class:`ArtifactError` if it differs.

        The card holds the PD sklearn gave at training time, so this checks the pickle,
        the library versions and the fast path together (the API's ``/ready`` uses it).
        """
        record = _card_record(self.card, ("self_test", "record"), self.spec)
        expected = self.card["self_test"].get("probability_of_default")
        if not isinstance(expected, (int, float)) or isinstance(expected, bool):
            raise ArtifactError("model card self_test has no probability_of_default")
        got = float(self.fast.predict_records([record])[0])
        if not abs(got - float(expected)) <= SELF_TEST_TOLERANCE:
            raise ArtifactError(f"self-test failed: the model gives P(default) {got!r} for the "
                                f"card's self-test record, the card says {float(expected)!r}")


def top_reasons(impact: np.ndarray, k: int = MAX_REASONS) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest positive impacts of each row: (feature indices, impacts).

    Impacts that round to 0.0000 do not count. Ties keep feature order. Missing
    reasons are -1 with impact 0.
    """
    n, width = impact.shape
    keep = np.round(impact, 4) > 0
    order = np.argsort(np.where(keep, -impact, np.inf), axis=1, kind="stable")[:, :k]
    rows = np.arange(n)[:, None]  # plain fancy indexing: take_along_axis costs 4x more
    kept = keep[rows, order]
    chosen = np.where(kept, order, -1)
    values = np.where(kept, impact[rows, order], 0.0)
    if width < k:  # fewer features than reason slots
        chosen = np.hstack([chosen, np.full((n, k - width), -1, dtype=chosen.dtype)])
        values = np.hstack([values, np.zeros((n, k - width))])
    return chosen, values


def value_label(feature: Feature, value: Any) -> str:
    """A feature value for people: the category's label, or the number with its unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if feature.kind == CATEGORICAL:
        return feature.category_label(str(value))
    number = float(value)
    text = str(int(number)) if number.is_integer() else f"{number:.10g}"
    return f"{text} {feature.unit}" if feature.unit else text


def _card_record(card: dict[str, Any], path: tuple[str, ...], spec: DatasetSpec) -> dict:
    node: Any = card
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    where = ".".join(path)
    if not isinstance(node, dict):
        raise ArtifactError(f"model card has no {where} (a record of every feature)")
    problems = validate_record(spec, node)
    if problems:
        shown = "; ".join(f"{p['field']} {p['problem']}" for p in problems[:5])
        raise ArtifactError(f"model card {where} is not a valid record: {shown}")
    return node


def _check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ArtifactError(f"model card threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_grades(grades: Any) -> list[dict[str, Any]]:
    try:
        bounds = [float(g["max_pd"]) for g in grades]
        names = [str(g["grade"]) for g in grades]
    except (TypeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"model card grades are malformed: {exc!r}") from exc
    if not names or any(b >= c for b, c in zip(bounds, bounds[1:])) or bounds[-1] < 1.0:
        raise ArtifactError("model card grades must be bands with increasing max_pd, "
                            "the last reaching 1.0")
    return list(grades)
