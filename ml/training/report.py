"""Report stage: the model card as Markdown and its plots for the docs.

``python -m ml card [--model DIR] [--out docs/model_card.md]`` renders the artifact's
``model_card.json`` (and ``evaluation.json`` beside it, when present) into Markdown,
copies the artifact's plots to ``img/`` next to the output, and refreshes the summary
between the ``model-card`` markers in the README. Nothing is typed in by hand, so the
docs always show the numbers of a real artifact.

The exploration and model-comparison helpers the notebooks call live in
:mod:`ml.training.explore`.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any


from ml.spec import config
from ml.serving.artifact import read_card, resolve
from ml.spec.schema import CATEGORICAL, DatasetSpec

PLOTS = ("roc.png", "calibration.png", "confusion_matrix.png", "score_distribution.png")
README_START = "<!-- model-card:start -->"
README_END = "<!-- model-card:end -->"
DEFAULT_OUT = config.PROJECT_ROOT / "docs" / "model_card.md"

INTENDED_USE = """\
- **What it does.** Estimates the probability that a consumer credit applicant defaults
  (PD), recommends *approve* or *decline* at the cost-optimal threshold, assigns a risk
  grade and lists the application's features that raised the estimate most.
- **For whom.** Credit officers deciding on applications (through the web form or a
  front-office system calling the API) and risk analysts monitoring the portfolio.
- **How.** As decision support: an officer reviews every decline and may override the
  recommendation; overrides and outcomes are fed back (`POST /feedback`) for monitoring
  and retraining."""

OUT_OF_SCOPE = """\
- Fully automated refusals without human review (GDPR Art. 22; the EU AI Act lists
  creditworthiness scoring as high-risk).
- Other products (mortgages, business loans, credit cards) or other populations,
  countries, currencies or periods than the training data, without re-validation.
- Pricing, limit setting, marketing or collections: the model was neither trained nor
  validated for them.
- Any use of the protected attributes (sex, marital status, nationality) to decide.
- Reason codes as legally sufficient adverse-action notices without review: they are
  what-if comparisons with a typical applicant, not causal explanations."""


# --------------------------------------------------------------------------- formatting


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(test: dict[str, Any], cv: dict[str, Any]) -> str:
    """Test-set figures next to the repeated-CV mean ± std where CV measures them."""
    folds = f"{cv['n_repeats']}×{cv['n_splits']}-fold CV"
    rows = [
        ["ROC AUC", _num(test["roc_auc"]),
         f"{cv['roc_auc_mean']:.3f} ± {cv['roc_auc_std']:.3f}"],
        ["Gini", _num(test["gini"]), f"{2 * cv['roc_auc_mean'] - 1:.3f}"],
        ["KS", _num(test["ks"]), ""],
        ["Brier score", _num(test["brier"]), ""],
        ["Log loss", _num(test["log_loss"]), ""],
        ["Expected cost per applicant", _num(test["expected_cost"]),
         f"{cv['expected_cost_mean']:.3f} ± {cv['expected_cost_std']:.3f}"],
        ["… if every applicant were approved", _num(test["expected_cost_approve_all"]), ""],
        ["… if every applicant were declined", _num(test["expected_cost_reject_all"]), ""],
        ["Approval rate", _pct(test["approval_rate"]), ""],
        ["Bad rate among approved", _pct(test["bad_rate_among_approved"]), ""],
        ["Macro F1", _num(test["macro"]["f1"]), ""],
    ]
    return _table(["Metric", f"Test ({test['rows']} rows)", folds], rows)


def fairness_table(fairness: dict[str, Any]) -> str:
    """Approval and bad rates by protected group, with the four-fifths ratio."""
    blocks = []
    for name, f in fairness.items():
        rows = [[g["label"], g["count"], _pct(g["approval_rate"]), _pct(g["bad_rate"]),
                 _pct(g["bad_rate_among_approved"])] for g in f["groups"]]
        ratio = f["approval_rate_ratio"]
        verdict = ("n/a" if ratio is None else
                   f"{ratio:.2f} — {'meets' if f['four_fifths_rule_met'] else 'below'} "
                   "the four-fifths rule")
        blocks.append(f"**{f['label']}** (`{name}`): lowest / highest approval rate {verdict}.\n\n"
                      + _table(["Group", "Applicants", "Approval rate", "Bad rate",
                                "Bad rate among approved"], rows))
    return "\n\n".join(blocks) if blocks else "No protected attributes in the spec."


def _features_table(spec: DatasetSpec) -> str:
    rows = []
    for f in spec.features:
        if f.kind == CATEGORICAL:
            allowed = f"{len(f.categories)} categories"
        else:
            allowed = f"{_bound(f.minimum)} to {_bound(f.maximum)} {f.unit}".strip()
        rows.append([f"`{f.name}`", f.label, f.kind, allowed,
                     "yes" if f.nullable else "no"])
    return _table(["Feature", "Label", "Kind", "Allowed", "May be missing"], rows)


def _bound(x: float | None) -> str:
    if x is None:
        return "any"
    return str(int(x)) if float(x).is_integer() else str(x)


def _threshold_method(evaluation: dict[str, Any] | None) -> str:
    method = (evaluation or {}).get("out_of_fold", {}).get("method")
    return f"; {method}" if method else ""


def _candidates(evaluation: dict[str, Any] | None) -> str:
    if not evaluation or not evaluation.get("search"):
        return "The artifact has no `evaluation.json`; the search results are not available."
    rows = [[c["family"], f"{c['oof_auc']:.3f}", c["configs_tried"],
             "`" + json.dumps(c["best_params"]) + "`"] for c in evaluation["search"]]
    text = _table(["Family", "Out-of-fold AUC", "Configurations", "Best parameters"], rows)
    calibration = evaluation.get("out_of_fold", {}).get("calibration")
    if calibration:
        text += "\n\nCalibration, out-of-fold log loss: " + ", ".join(
            f"{m} {s['log_loss']:.4f}" for m, s in calibration.items()) + "."
    return text


# --------------------------------------------------------------------------- the card


def render_card(card: dict[str, Any], evaluation: dict[str, Any] | None = None,
                images: list[str] = ()) -> str:
    """The model card as Markdown.

    Args:
        card: the artifact's ``model_card.json``.
        evaluation: its ``evaluation.json`` (search and all-rows fairness), if any.
        images: plot paths relative to the Markdown file, to embed.
    """
    spec = DatasetSpec.from_dict(card["spec"])
    test, cv = card["metrics"]["test"], card["metrics"]["cv"]
    model, data, cost = card["model"], card["data"], card["cost"]
    threshold = card["threshold"]
    cm = test["confusion_matrix"]
    parts = [
        f"# Model card: {card['name']}",
        f"<!-- Generated by `python -m ml card` from artifact {card['version']}. "
        "Do not edit by hand: retrain, then regenerate. -->",
        f"Artifact **{card['version']}**, trained {card['created_at']} from commit "
        f"`{str(card.get('git_commit', 'unknown'))[:12]}` with seed {card.get('seed')}. "
        f"Model file SHA-256 `{card.get('artifact', {}).get('sha256', 'n/a')[:16]}…`.",
        "## Intended use", INTENDED_USE,
        "## Out-of-scope uses", OUT_OF_SCOPE,
        "## Model",
        _table(["", ""], [
            ["Family", model.get("description", model["family"])],
            ["Hyper-parameters", "`" + json.dumps(model.get("params", {})) + "`"],
            ["Calibration", model["calibration"]],
            ["Selection", model.get("selection", "")],
            ["Refit", model.get("refit", "")],
            ["Decision threshold", f"decline when PD ≥ {threshold:.3f} (Bayes threshold of the "
                                   f"cost matrix: {spec.cost.bayes_threshold:.3f})"
                                   + _threshold_method(evaluation)],
            ["Libraries", ", ".join(f"{k} {v}" for k, v in card.get("libraries", {}).items())],
        ]),
        "### Candidates compared", _candidates(evaluation),
        "## Data",
        f"{spec.description}\n\nSource: {spec.source}",
        f"{data['rows']} rows from `{data['file']}` (SHA-256 `{data['sha256'][:16]}…`), "
        f"positive class `{spec.target.positive}` (default) in {_pct(data['positive_rate'])} "
        "of them. Split stratified 60/20/20 into train / validation / test with the seed "
        "above; the test part is scored once, by the final report.",
        f"Costs: approving an applicant who defaults costs {cost['approve_bad']:g}, declining "
        f"one who would have repaid costs {cost['decline_good']:g}; correct decisions cost 0.",
        _features_table(spec),
        "Protected attributes, never given to the model, used only to report fairness: "
        + ", ".join(f"{f.label} (`{f.name}`)" for f in spec.protected) + ".",
        "## Metrics",
        metrics_table(test, cv),
        f"Confusion matrix on the test part at threshold {threshold:.3f}: of the good "
        f"applicants {cm['actual_good'][0]} approved and {cm['actual_good'][1]} declined; "
        f"of the bad ones {cm['actual_bad'][0]} approved and {cm['actual_bad'][1]} declined.",
        f"Variability: over {cv['n_repeats']}×{cv['n_splits']} folds the AUC ranges from "
        f"{min(cv['roc_auc_folds']):.3f} to {max(cv['roc_auc_folds']):.3f} and the cost "
        f"from {min(cv['expected_cost_folds']):.3f} to {max(cv['expected_cost_folds']):.3f}: "
        "differences between models smaller than the standard deviation are noise.",
        "## Risk grades",
        _table(["Grade", "PD below", "Meaning"],
               [[g["grade"], _pct(g["max_pd"]), g["label"]] for g in card["grades"]]),
        "## Fairness",
        f"On the test part ({test['rows']} applicants) at the decision threshold:",
        fairness_table(card["metrics"]["fairness"]),
    ]
    oof = (evaluation or {}).get("fairness_all_rows_out_of_fold")
    if oof:
        parts += ["On all rows, each scored out of fold (larger groups, steadier rates):",
                  fairness_table(oof)]
    parts += ["## Limits and caveats", _caveats(card, spec)]
    if images:
        parts += ["## Plots (test part)",
                  "\n".join(f"![{Path(i).stem.replace('_', ' ')}]({i})" for i in images)]
    return "\n\n".join(parts) + "\n"


def _caveats(card: dict[str, Any], spec: DatasetSpec) -> str:
    test, cv = card["metrics"]["test"], card["metrics"]["cv"]
    lines = [
        f"- **Small data.** {card['data']['rows']} applicants, {test['rows']} in the test "
        f"part: the test AUC {test['roc_auc']:.3f} carries about ±{2 * cv['roc_auc_std']:.2f} "
        "of sampling noise; small groups in the fairness tables (a few dozen applicants) "
        "give rates that are not reliable.",
        "- **Old, foreign data.** German applicants of the 1970s–90s with amounts in "
        "Deutsche Mark; a bank must retrain and re-validate on its own portfolio.",
        "- **Only accepted applicants have outcomes.** The labels come from credits that "
        "were granted (no reject inference), so risk among applicants the bank used to "
        "refuse is extrapolated.",
        "- **Proxies.** The protected attributes are left out, but other features (age, "
        "housing, job, telephone) can correlate with them; the fairness tables are where "
        "that shows. Age is a model feature here: check that local law allows it.",
        f"- **The threshold is the cost matrix's.** With {card['cost']['approve_bad']:g}:"
        f"{card['cost']['decline_good']:g} costs it declines "
        f"{_pct(1 - test['approval_rate'])} of test applicants; other costs (e.g. margins, "
        "recoveries) call for another threshold, not another model.",
        "- **Reason codes** compare the applicant with a typical one, feature by feature; "
        "they are a faithful account of the model's response, not of causes.",
        "- **Drift.** The reference distributions in the card feed `GET /monitoring`; "
        "retrain when they drift or when observed default rates move away from the PDs.",
    ]
    return "\n".join(lines)


def readme_summary(card: dict[str, Any], card_link: str = "docs/model_card.md",
                   images: list[str] = ()) -> str:
    """The short model summary the README embeds between its model-card markers."""
    test, cv = card["metrics"]["test"], card["metrics"]["cv"]
    calibration = card["model"]["calibration"]
    how = "uncalibrated" if calibration == "none" else f"{calibration} calibration"
    text = (f"Model **{card['model'].get('description', card['model']['family'])}** ({how}), "
            f"artifact `{card['version']}`, trained on {card['data']['rows']} applicants. "
            f"Full card: [{card_link}]({card_link}).\n\n"
            + metrics_table(test, cv))
    if images:
        text += "\n\n" + " ".join(f'<img src="{i}" width="24%" alt="{Path(i).stem}">'
                                  for i in images)
    return text


def update_readme(readme: Path, summary: str) -> bool:
    """Replace the text between the README's model-card markers; False if it has none."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _: f"{README_START}\n{summary}\n{README_END}", text)
    readme.write_text(new, encoding="utf-8")
    return True


def copy_plots(artifact_dir: Path, img_dir: Path) -> list[Path]:
    """Copy the artifact's plots into ``img_dir``; returns the copies."""
    copies = []
    for name in PLOTS:
        source = artifact_dir / "plots" / name
        if source.is_file():
            img_dir.mkdir(parents=True, exist_ok=True)
            copies.append(Path(shutil.copyfile(source, img_dir / name)))
    return copies


def write_card(model: str | Path, out: str | Path = DEFAULT_OUT,
               readme: str | Path | None = None) -> Path:
    """Render the card of the artifact at ``model`` to ``out``, its plots to ``img/``
    beside it, and (if given and it has the markers) the README summary."""
    directory = resolve(model)
    card = read_card(directory)
    evaluation_path = directory / "evaluation.json"
    evaluation = (json.loads(evaluation_path.read_text(encoding="utf-8"))
                  if evaluation_path.is_file() else None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    copies = copy_plots(directory, out.parent / "img")
    out.write_text(render_card(card, evaluation, [f"img/{c.name}" for c in copies]),
                   encoding="utf-8")
    if readme is not None:
        readme = Path(readme)
        rel = [Path(_relative(c, readme.parent)).as_posix() for c in copies]
        update_readme(readme, readme_summary(card, _relative(out, readme.parent), rel))
    return out


def _relative(path: Path, start: Path) -> str:
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml card``."""
    parser.add_argument("--model", type=Path, default=config.models_dir(),
                        help="artifact directory, or a models dir with LATEST")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="Markdown file to write (plots go to img/ beside it)")
    parser.add_argument("--readme", type=Path, default=config.PROJECT_ROOT / "README.md",
                        help="README whose model-card block to refresh")
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")


def run(args: argparse.Namespace) -> int:
    """Write the model card from parsed CLI arguments."""
    out = write_card(args.model, args.out, None if args.no_readme else args.readme)
    print(f"model card {out}")
    return 0
