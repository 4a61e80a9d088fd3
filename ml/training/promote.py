"""Applying a reviewed promotion proposal: ``python -m ml promote PROPOSAL.json``.

``python -m ml retrain`` never swaps the served model: it saves a better challenger as
a signed version beside the champion and writes a proposal (:mod:`ml.training.retrain`).
This is the separate, explicit step that applies one after review. It moves ``LATEST``
only when the proposal decides "promote", its challenger artifact is there, its
signature verifies with the trusted keys (:mod:`ml.serving.signing`), its manifest's
SHA-256 and signer are the ones the reviewer saw in the proposal, the model passes its
self-test, and ``LATEST`` still names the champion the challenger was compared with.
Anything else is refused with a one-line reason (exit 2). ``--check`` does all of it but
the move; ``--document-only`` checks the proposal alone (the promote workflow, which has
the proposal but not the artifact) and ``--markdown`` writes the reviewer's summary.

No sklearn here: promoting runs wherever the models directory is, serving image included.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ml.serving import signing
from ml.serving.artifact import CARD_FILE, latest_version, parse_card, write_latest
from ml.spec import config

PROPOSAL_FORMAT = 1
PROPOSAL_KIND = "promotion-proposal"
DECISIONS = ("promote", "keep")
# A version names a directory under the models dir, the model name a path in the
# repository (the promote workflow): no separators, no dot files.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
METRICS = ("expected_cost", "roc_auc", "ks", "brier", "approval_rate",
           "bad_rate_among_approved")


class PromotionError(ValueError):
    """A proposal that cannot be applied; the message says why in one line."""


def artifact_summary(directory: Path, card: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer needs to identify an artifact's exact files: its version, model
    family, threshold, training data and signer, and the SHA-256 of its signed manifest
    (which lists every file's SHA-256, so this one hash pins them all)."""
    signature = json.loads((directory / signing.SIGNATURE).read_text(encoding="utf-8"))
    return {"version": card["version"], "family": card["model"]["family"],
            "threshold": float(card["threshold"]), "data_sha256": card["data"]["sha256"],
            "signer_key_id": signature["key_id"],
            "artifact_sha256": signing.sha256_of(directory / signing.MANIFEST),
            "card_sha256": signing.sha256_of(directory / CARD_FILE)}


def load_proposal(path: Path) -> dict[str, Any]:
    """Read a proposal file and check its shape (not yet the artifact it names)."""
    try:
        proposal = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromotionError(f"cannot read the proposal {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PromotionError(f"{path} is not JSON: {exc}") from None
    check_document(proposal)
    return proposal


def check_document(proposal: Any) -> None:
    """The proposal's own checks: format, decision, and for a promotion, the versions,
    hashes and signer that name the challenger exactly."""
    if not isinstance(proposal, dict) or proposal.get("kind") != PROPOSAL_KIND \
            or proposal.get("format") != PROPOSAL_FORMAT:
        raise PromotionError(f"not a promotion proposal of format {PROPOSAL_FORMAT} "
                             "(python -m ml retrain writes them)")
    decision = proposal.get("decision")
    if decision not in DECISIONS:
        raise PromotionError(f"the proposal's decision is {decision!r}, not one of {DECISIONS}")
    if decision != "promote":
        raise PromotionError(f"the proposal decides to keep the champion "
                             f"({proposal.get('why', 'no reason given')}): nothing to promote")
    if not _NAME.match(str(proposal.get("model_name"))):
        raise PromotionError("the proposal's model name is not a plain name")
    champion, challenger = proposal.get("champion") or {}, proposal.get("challenger") or {}
    if challenger.get("version") is None:
        raise PromotionError("the proposal's challenger was not saved (retrain ran with "
                             "--report-only): run retrain with the signing key to save it")
    for role, summary in (("champion", champion), ("challenger", challenger)):
        if not _VERSION.match(str(summary.get("version"))):
            raise PromotionError(f"the proposal's {role} version is not a version name")
    if not _SHA256.match(str(challenger.get("artifact_sha256"))) \
            or not _KEY_ID.match(str(challenger.get("signer_key_id"))):
        raise PromotionError("the proposal lacks the challenger's artifact SHA-256 or signer")


def check_artifact(proposal: dict[str, Any], models: Path, trusted: Any = None) -> Path:
    """Verify the challenger artifact under ``models`` against the proposal and the
    trusted keys, and self-test it; returns its directory."""
    from ml.serving.predictor import Predictor

    challenger = proposal["challenger"]
    directory = Path(models) / challenger["version"]
    if not directory.is_dir():
        raise PromotionError(f"the challenger {challenger['version']} is not in {models}")
    keys = signing.trusted_keys(trusted)
    manifest = signing.verify(directory, keys)
    actual = signing.sha256_of(directory / signing.MANIFEST)
    if actual != challenger["artifact_sha256"]:
        raise PromotionError(f"artifact {directory.name} is not the reviewed one: its manifest "
                             f"SHA-256 is {actual[:12]}..., the proposal says "
                             f"{challenger['artifact_sha256'][:12]}...")
    if manifest.key_id != challenger["signer_key_id"]:
        raise PromotionError(f"artifact {directory.name} is signed by {manifest.key_id}, the "
                             f"proposal says {challenger['signer_key_id']}")
    if parse_card(manifest.read(CARD_FILE)).get("version") != challenger["version"]:
        raise PromotionError(f"artifact {directory.name} holds another version's card")
    Predictor.load(directory, trusted=keys).self_test()
    return directory


def promote(proposal: dict[str, Any], models: Path, check: bool = False,
            trusted: Any = None) -> dict[str, Any]:
    """Verify the challenger and, unless ``check``, point ``LATEST`` at it.

    Returns:
        What happened: ``promoted``, ``checked`` or ``already promoted``, with versions.
    """
    check_document(proposal)
    directory = check_artifact(proposal, models, trusted)
    champion, version = proposal["champion"]["version"], directory.name
    latest = latest_version(models)
    result = {"models": str(models), "champion": champion, "challenger": version}
    if latest == version:
        return result | {"result": "already promoted"}
    if latest != champion:
        raise PromotionError(f"LATEST is {latest}, but the proposal compared the challenger "
                             f"with {champion}: retrain against the served model again")
    if check:
        return result | {"result": "checked"}
    write_latest(Path(models), version)
    return result | {"result": "promoted"}


def to_markdown(proposal: dict[str, Any]) -> str:
    """The reviewer's summary: the decision and why, both artifacts, the held-out metrics."""
    champion, challenger = proposal["champion"], proposal.get("challenger") or {}
    lines = [f"# Promotion proposal: {proposal['model_name']} {champion['version']} → "
             f"{challenger.get('version') or '(not saved)'}", "",
             f"**Decision: {proposal['decision']}.** {proposal['why']}", "",
             f"Criterion: {proposal['criterion']} (margin {proposal['margin']}); expected-cost "
             f"gain per applicant {proposal['expected_cost_gain']:.4f}.", "",
             "| | champion | challenger |", "|---|---|---|"]
    for field in ("version", "family", "threshold", "data_sha256", "signer_key_id",
                  "artifact_sha256"):
        lines.append(f"| {field} | `{champion.get(field)}` | `{challenger.get(field)}` |")
    held_out = proposal["held_out"]
    for metric in METRICS:
        lines.append(f"| held-out {metric} | {held_out['champion'][metric]:.4f} | "
                     f"{held_out['challenger'][metric]:.4f} |")
    rows = ", ".join(f"{k} {v}" for k, v in proposal["rows"].items())
    lines += ["", f"Rows: {rows}.", "",
              "Apply after review, where the models directory is:", "",
              f"```sh\n{proposal.get('apply') or 'nothing to apply'}\n```", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml promote``."""
    parser.add_argument("proposal", type=Path, help="the proposal JSON (python -m ml retrain "
                        "or python -m ml proposal)")
    parser.add_argument("--models", type=Path, default=None,
                        help="the models dir holding champion and challenger "
                             "(default: $MODEL_DIR, else ./models)")
    parser.add_argument("--check", action="store_true",
                        help="verify everything, do not move LATEST")
    parser.add_argument("--document-only", action="store_true",
                        help="with --check: the proposal alone, not the artifact it names")
    parser.add_argument("--signer", default=None,
                        help="require the challenger to be signed by this key id")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the reviewer's summary (Markdown) here")


def run(args: argparse.Namespace) -> int:
    """Check a proposal and apply it (or only check it); print the result as JSON."""
    if args.document_only and not args.check:
        raise PromotionError("--document-only checks, it never promotes: add --check")
    proposal = load_proposal(args.proposal)
    signer = proposal["challenger"]["signer_key_id"]
    if args.signer is not None and signer != args.signer:
        raise PromotionError(f"the challenger is signed by {signer}, not by {args.signer}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(to_markdown(proposal), encoding="utf-8")
    if args.document_only:
        result = {"result": "document checked", "champion": proposal["champion"]["version"],
                  "challenger": proposal["challenger"]["version"]}
    else:
        result = promote(proposal, args.models or config.models_dir(), check=args.check)
    print(json.dumps(result))
    return 0
