"""The model card's scorecard sections: points table, information value, score by class, bands.

:func:`card_section` runs at training time and stores plain figures in the card (the
card is rendered later without the model); :func:`markdown` turns them into the
card's sections. Every family gets the score distribution by class and the score
bands of the risk grades; a scorecard also gets its points table and the information
value (IV) of each characteristic.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ml.spec.schema import DatasetSpec, Scaling
from ml.training.scorecard import is_scorecard

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
# The usual reading of a characteristic's IV (upper bounds, exclusive).
IV_READING = ((0.02, "useless"), (0.1, "weak"), (0.3, "medium"), (0.5, "strong"),
              (float("inf"), "suspicious: too good to be true, check for leakage"))
TABLE_COLUMNS = ("Bin", "Count", "Event rate", "WoE", "IV", "Points")

REASONS_TEXT = (
    "Reason codes: for a scorecard, the characteristics where the applicant lost the most "
    "points against that characteristic's best attribute (its best bin or category), "
    "largest loss first, at most four, with their labels: the usual adverse-action method; "
    "`impact` is in points. For the other families, the features that raise the PD the "
    "most against the typical applicant (`reference.baseline`), at most four; `impact` is "
    "the PD difference.")


def iv_reading(iv: float) -> str:
    """The usual reading of an information value."""
    return next(text for bound, text in IV_READING if iv < bound)


def card_section(model: Any, spec: DatasetSpec, y_test: np.ndarray,
                 p_test: np.ndarray) -> dict[str, Any]:
    """Figures for the card: scaling, the test part's score quantiles by class and, for a
    scorecard, its table and each characteristic's IV."""
    score = spec.scaling.score(p_test)
    labels = (spec.target.negative or "negative", spec.target.positive)
    section: dict[str, Any] = {
        "scaling": vars(spec.scaling).copy(),
        "score_by_class": {
            label: {"rows": int((y_test == k).sum()),
                    "mean": float(score[y_test == k].mean()) if (y_test == k).any() else None,
                    "quantiles": {str(q): float(np.quantile(score[y_test == k], q))
                                  for q in QUANTILES} if (y_test == k).any() else {}}
            for k, label in enumerate(labels)},
    }
    if is_scorecard(model):
        section.update(points_table(model))
    return section


def points_table(model: Any) -> dict[str, Any]:
    """A fitted scorecard's table rows and the IV of every characteristic it binned."""
    table = model.table(style="detailed")
    rows = [{"characteristic": str(r["Variable"]), "bin": str(r["Bin"]),
             **{c: float(r[c]) for c in TABLE_COLUMNS[1:]}}
            for _, r in table.iterrows()]
    process = model.binning_process_
    selected = set(process.get_support(names=True))
    # Each binned variable's table was built by the fit (the process reads IV from it).
    iv = {name: {"iv": float(process.get_binned_variable(name).binning_table.iv),
                 "selected": name in selected} for name in process.variable_names}
    return {"table": rows, "information_value": iv}


def markdown(card: dict[str, Any]) -> list[str]:
    """The card's scorecard sections as Markdown blocks (empty for an older card)."""
    section = card.get("scorecard")
    if not section:
        return []
    scaling = Scaling(**section["scaling"])
    parts = ["## Score in points",
             f"Every answer carries a score: {scaling.base_points:g} points at good:bad odds "
             f"of {scaling.base_odds:g}:1, {scaling.pdo:g} more points double the odds "
             "(score = offset + factor × ln((1 − PD) / PD)); higher is safer.",
             _bands(card["grades"], scaling), _by_class(section["score_by_class"]),
             REASONS_TEXT]
    if "information_value" in section:
        parts += ["### Information value per characteristic", _iv(section),
                  "### Scorecard", _points(section["table"])]
    return parts


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bands(grades: list[dict[str, Any]], scaling: Scaling) -> str:
    rows = []
    for g in grades:
        bound = float(g["max_pd"])
        rows.append([g["grade"], f"{100 * bound:.0f} %",
                     "—" if bound >= 1 else f"{scaling.score_one(bound):.0f}", g["label"]])
    return "Score bands of the risk grades:\n\n" + _table(
        ["Grade", "PD below", "Score above", "Meaning"], rows)


def _by_class(by_class: dict[str, Any]) -> str:
    header = ["Class", "Rows", "Mean"] + [f"P{int(100 * q)}" for q in QUANTILES]
    rows = [[label, s["rows"], "—" if s["mean"] is None else f"{s['mean']:.0f}"]
            + [f"{s['quantiles'][str(q)]:.0f}" if s["quantiles"] else "—" for q in QUANTILES]
            for label, s in by_class.items()]
    return "Score distribution by class (test part):\n\n" + _table(header, rows)


def _iv(section: dict[str, Any]) -> str:
    rows = [[name, f"{v['iv']:.3f}", iv_reading(v["iv"]), "yes" if v["selected"] else "no"]
            for name, v in sorted(section["information_value"].items(),
                                  key=lambda item: -item[1]["iv"])]
    return ("Reading: < 0.02 useless, 0.02–0.1 weak, 0.1–0.3 medium, 0.3–0.5 strong, "
            "> 0.5 suspicious.\n\n" + _table(["Characteristic", "IV", "Reading", "In the model"],
                                             rows))


def _points(rows: list[dict[str, Any]]) -> str:
    return _table(["Characteristic", "Bin", "Count", "Bad rate", "WoE", "IV", "Points"],
                  [[r["characteristic"], r["bin"], f"{r['Count']:.0f}",
                    f"{100 * r['Event rate']:.1f} %", f"{r['WoE']:.3f}", f"{r['IV']:.3f}",
                    f"{r['Points']:.1f}"] for r in rows])
