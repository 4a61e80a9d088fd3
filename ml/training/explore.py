"""Exploration and model-comparison helpers: what the notebooks call.

The notebooks hold no logic of their own (bad rate by category, correlations, a quick
comparison of candidate models, cost curves, and their plots are all here), so what
they show is code that is tested and reused.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml.spec import config
from ml.spec.schema import CATEGORICAL, DatasetSpec


def bad_rate_by_category(frame: pd.DataFrame, y: np.ndarray, feature: str,
                         spec: DatasetSpec | None = None) -> pd.DataFrame:
    """Applicants and bad rate per category of ``feature`` (labels from ``spec``).

    Missing values form their own row, labelled ``missing``.
    """
    codes = frame[feature].astype(object).where(frame[feature].notna(), "missing")
    table = (pd.DataFrame({"category": codes.to_numpy(), "bad": np.asarray(y)})
             .groupby("category", sort=False)["bad"].agg(applicants="size", bad_rate="mean"))
    if spec is not None:
        f = spec.feature(feature)
        table.insert(0, "label", [f.category_label(c) for c in table.index])
    return table.sort_values("bad_rate", ascending=False)


def numeric_summary(frame: pd.DataFrame, y: np.ndarray, spec: DatasetSpec) -> pd.DataFrame:
    """Per numeric feature: median for good and bad applicants, and the spec's bounds."""
    y = np.asarray(y)
    rows = []
    for f in spec.numeric:
        column = frame[f.name]
        rows.append({"feature": f.name, "label": f.label, "min": column.min(),
                     "max": column.max(), "median_good": column[y == 0].median(),
                     "median_bad": column[y == 1].median(), "missing": int(column.isna().sum()),
                     "spec_min": f.minimum, "spec_max": f.maximum})
    return pd.DataFrame(rows).set_index("feature")


def cramers_v(a: pd.Series, b: pd.Series) -> float:
    """Association of two categorical columns, 0 (none) to 1 (one determines the other)."""
    from scipy.stats import chi2_contingency

    table = pd.crosstab(a, b)
    if min(table.shape) < 2:
        return 0.0
    chi2 = chi2_contingency(table, correction=False)[0]
    return float(np.sqrt(chi2 / (table.to_numpy().sum() * (min(table.shape) - 1))))


def correlations(frame: pd.DataFrame, y: np.ndarray, spec: DatasetSpec) -> pd.DataFrame:
    """Spearman correlations between the numeric features and the target (``default``)."""
    numbers = frame[[f.name for f in spec.numeric]].copy()
    numbers["default"] = np.asarray(y)
    return numbers.corr(method="spearman")


def target_association(frame: pd.DataFrame, y: np.ndarray, spec: DatasetSpec) -> pd.Series:
    """Cramér's V of each categorical feature (model and protected) with the target."""
    target = pd.Series(np.asarray(y), index=frame.index)
    names = [f.name for f in (*spec.features, *spec.protected) if f.kind == CATEGORICAL]
    return pd.Series({n: cramers_v(frame[n], target) for n in names}).sort_values(
        ascending=False)


def compare_candidates(spec: DatasetSpec, parts: Any, seed: int = config.DEFAULT_SEED,
                       families: dict[str, dict[str, Any]] | None = None
                       ) -> dict[str, np.ndarray]:
    """Fit a few cheap candidates on the train part; their P(default) on validation.

    Args:
        spec: the dataset spec.
        parts: a :class:`ml.training.data.Split`.
        seed: random seed.
        families: family → ``step__param`` overrides (default: a logistic regression
            and a 100-tree random forest, a few seconds in all).
    """
    from ml.training.pipeline import build_pipeline

    families = families or {"logistic_regression": {"model__C": 0.1},
                            "random_forest": {"model__n_estimators": 100,
                                              "model__min_samples_leaf": 3}}
    out = {}
    for family, params in families.items():
        model = build_pipeline(spec, family, seed, params).fit(parts.X_train, parts.y_train)
        out[family] = model.predict_proba(parts.X_val)[:, 1]
    return out


def candidate_table(y: np.ndarray, predictions: dict[str, np.ndarray],
                    spec: DatasetSpec) -> pd.DataFrame:
    """Per candidate: AUC, Brier, and the cost at its own best threshold and at Bayes'."""
    from ml.training.evaluate import best_threshold, classification_metrics

    rows = []
    for name, p in predictions.items():
        t = best_threshold(y, p, spec.cost)
        m = classification_metrics(y, p, t, spec.cost)
        bayes = classification_metrics(y, p, spec.cost.bayes_threshold, spec.cost)
        rows.append({"candidate": name, "roc_auc": m["roc_auc"], "brier": m["brier"],
                     "best_threshold": t, "cost_at_best": m["expected_cost"],
                     "cost_at_bayes": bayes["expected_cost"],
                     "approval_rate_at_best": m["approval_rate"],
                     "cost_approve_all": m["expected_cost_approve_all"],
                     "cost_reject_all": m["expected_cost_reject_all"]})
    return pd.DataFrame(rows).set_index("candidate")


def plot_bad_rates(table: pd.DataFrame, title: str, ax: Any = None) -> Any:
    """Horizontal bars of a :func:`bad_rate_by_category` table; returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 0.4 * len(table) + 1))[1]
    labels = table["label"] if "label" in table else table.index
    ax.barh(list(labels), table["bad_rate"])
    ax.set_xlabel("bad rate")
    ax.set_title(title)
    ax.invert_yaxis()
    return ax


def plot_numeric_distributions(frame: pd.DataFrame, y: np.ndarray, spec: DatasetSpec,
                               columns: int = 3) -> Any:
    """Histograms of each numeric feature, good and bad applicants overlaid; the figure."""
    import matplotlib.pyplot as plt

    features = spec.numeric
    rows = -(-len(features) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    y = np.asarray(y)
    for ax, f in zip(axes.flat, features):
        values = frame[f.name]
        bins = np.histogram_bin_edges(values.dropna(), bins=20)
        for label, mask in (("good", y == 0), ("bad", y == 1)):
            ax.hist(values[mask].dropna(), bins=bins, alpha=0.6, density=True, label=label)
        ax.set_title(f"{f.label}" + (f" ({f.unit})" if f.unit else ""), fontsize=10)
    for ax in list(axes.flat)[len(features):]:
        ax.set_visible(False)
    axes.flat[0].legend()
    fig.tight_layout()
    return fig


def plot_correlations(matrix: pd.DataFrame, ax: Any = None) -> Any:
    """A correlation matrix (e.g. :func:`correlations`) as an annotated heat map."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 6))[1]
    image = ax.imshow(matrix.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=8)
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            ax.text(j, i, f"{matrix.iat[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.figure.colorbar(image, ax=ax)
    return ax


def plot_roc_curves(y: np.ndarray, predictions: dict[str, np.ndarray], ax: Any = None) -> Any:
    """ROC curves of several candidates on one axes."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    ax = ax or plt.subplots(figsize=(5, 5))[1]
    for name, p in predictions.items():
        RocCurveDisplay.from_predictions(y, p, name=name, ax=ax)
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_title("ROC on the validation part")
    return ax


def plot_cost_curves(y: np.ndarray, predictions: dict[str, np.ndarray], spec: DatasetSpec,
                     ax: Any = None) -> Any:
    """Expected cost per applicant against the threshold, with approve-all, reject-all
    and the Bayes threshold for reference."""
    import matplotlib.pyplot as plt

    from ml.training.evaluate import cost_curve, expected_cost

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    y = np.asarray(y)
    for name, p in predictions.items():
        thresholds, costs = cost_curve(y, p, spec.cost)
        ax.plot(thresholds, costs, label=name)
    ax.axhline(expected_cost(y, np.zeros(len(y), bool), spec.cost), color="grey",
               linestyle="--", label="approve all")
    ax.axhline(expected_cost(y, np.ones(len(y), bool), spec.cost), color="grey",
               linestyle=":", label="decline all")
    ax.axvline(spec.cost.bayes_threshold, color="black", linewidth=0.8,
               label=f"Bayes threshold {spec.cost.bayes_threshold:.3f}")
    ax.set_xlabel("threshold on P(default)")
    ax.set_ylabel("expected cost per applicant")
    ax.legend()
    return ax
