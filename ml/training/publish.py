"""Writing artifacts: the sklearn model, its compiled form and card, signed; and re-signing.

The training side of :mod:`ml.serving.artifact` (layout there). :func:`save_artifact`
compiles the model, checks the compiled form against sklearn on every training row,
writes every file, signs the manifest (:mod:`ml.serving.signing`) and only then moves
``LATEST``. A decision-changing edit (a new threshold or grade table) is never made in
place: :func:`resign` writes it as a new version, signed, with a record of what changed
and from which version (``python -m ml resign``). :func:`load_artifact` gives training
jobs (reports, retraining) the sklearn model, after the same verification as serving.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import joblib

from ml.serving import modelfile, signing
from ml.serving.artifact import (CARD_FILE, CardFields, COMPILED_ARRAYS, COMPILED_FILE, MODEL_FILE,
                                 check_versions_of, verified, write_latest)
from ml.serving.errors import ArtifactError
from ml.serving.predictor import Predictor
from ml.spec import config
from ml.spec.schema import DatasetSpec
from ml.training.compile import check_against, compile_model
from ml.training.data import (records_to_frame)

# Pickles of these are tied to the exact version that wrote them.
PINNED_LIBRARIES = ("scikit-learn", "numpy", "joblib")
TRAINER_IMAGE_ENV = "TRAINER_IMAGE_DIGEST"


@dataclass
class TrainedArtifact(CardFields):
    """A verified artifact with its sklearn model (training jobs only)."""

    model: Any
    card: dict[str, Any]
    spec: DatasetSpec
    path: Path
    signer: str = ""


def new_version(now: datetime | None = None) -> str:
    """A fresh, sortable artifact version: UTC time plus a random suffix."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def provenance(key: Any, data_sha256: str, git_commit: str) -> dict[str, Any]:
    """Who built and signed the model from what: data hash, commit, image, signer key id."""
    return {"data_sha256": data_sha256, "git_commit": git_commit,
            "trainer_image": os.environ.get(TRAINER_IMAGE_ENV) or "unknown",
            "signer_key_id": signing.key_id(key)}


def git_commit() -> str:
    """The commit the code was built from: ``GIT_COMMIT`` (set by image builds) or git."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=config.PROJECT_ROOT, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_artifact(path: str | Path, check_versions: bool = True,
                  trusted: Any = None) -> TrainedArtifact:
    """Verify the artifact's signature, then unpickle its sklearn model from verified bytes.

    Raises:
        ArtifactError: unsigned, tampered, untrusted, or built with other library versions.
    """
    manifest, card = verified(path, trusted)
    if check_versions:
        check_versions_of(card, PINNED_LIBRARIES)
    model = joblib.load(io.BytesIO(manifest.read(card.get("artifact", {}).get("file",
                                                                              MODEL_FILE))))
    return TrainedArtifact(model=model, card=card, spec=DatasetSpec.from_dict(card["spec"]),
                           path=manifest.directory, signer=manifest.key_id)


def save_artifact(model: Any, card: dict[str, Any], root: str | Path, check_frame: Any = None,
                  update_latest: bool = True, key: Any = None,
                  extras: Callable[[Path], None] | None = None) -> Path:
    """Write, sign and publish ``root/<card['version']>/``; returns the directory.

    Args:
        model: the fitted sklearn model; compiled here, and checked against sklearn on
            every row of ``check_frame`` when given (|Δ| ≤ 1e-9).
        card: the model card; completed with the files' names and formats.
        root: the models directory.
        update_latest: move ``LATEST`` to the new version once it is signed.
        key: the Ed25519 private key; default :func:`ml.serving.signing.signing_key`.
        extras: writes more files (plots, evaluation) into the directory before signing.
    """
    key = key or signing.signing_key()
    fast = compile_model(model, DatasetSpec.from_dict(card["spec"]))
    if check_frame is not None:
        check_against(model, fast, check_frame)
    root = Path(root)
    directory = root / card["version"]
    directory.mkdir(parents=True, exist_ok=False)
    joblib.dump(model, directory / MODEL_FILE)
    structure, arrays = modelfile.dump(fast)
    (directory / COMPILED_FILE).write_bytes(structure)
    (directory / COMPILED_ARRAYS).write_bytes(arrays)
    card = {**card, "artifact": {"file": MODEL_FILE, "compiled_file": COMPILED_FILE,
                                 "compiled_arrays": COMPILED_ARRAYS,
                                 "compiled_format": modelfile.FORMAT}}
    card.setdefault("provenance", {})["signer_key_id"] = signing.key_id(key)
    write_card(directory, card)
    if extras is not None:
        extras(directory)
    signing.sign(directory, key, CARD_FILE)
    if update_latest:
        write_latest(root, card["version"])
    return directory


def write_card(directory: Path, card: dict[str, Any]) -> None:
    """Write ``model_card.json`` (numpy values as plain JSON)."""
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2, default=_jsonable),
                                       encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays inside the card."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- re-signing


def resign(source: str | Path, root: str | Path | None = None, threshold: float | None = None,
           grades: list[dict[str, Any]] | None = None, note: str = "", key: Any = None,
           update_latest: bool = True, trusted: Any = None) -> Path:
    """A new signed version of a trusted artifact, with a new threshold and/or grade table.

    The source is verified first (it must be signed by a trusted key), its sklearn model
    is compiled again and checked against the card's records, the card records what
    changed, from which version and signer, and why (``note``); the new version is
    self-tested before ``LATEST`` moves. The source is never modified.
    """
    key = key or signing.signing_key()
    src = load_artifact(source, trusted=trusted)
    card = json.loads(json.dumps(src.card))
    changes: dict[str, Any] = {}
    if threshold is not None and threshold != card.get("threshold"):
        changes["threshold"] = {"from": card.get("threshold"), "to": threshold}
        card["threshold"] = threshold
    if grades is not None and grades != card.get("grades"):
        changes["grades"] = {"from": card.get("grades"), "to": grades}
        card["grades"] = grades
    card.pop("artifact", None)
    card["version"] = new_version()
    card["resigned"] = {"from_version": src.version, "from_signer": src.signer,
                        "changes": changes, "note": note,
                        "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    card.setdefault("provenance", {})["git_commit_resign"] = git_commit()
    records = [card["reference"]["baseline"], card["self_test"]["record"]]
    root = Path(root) if root is not None else src.path.parent
    directory = save_artifact(src.model, card, root, key=key, update_latest=False,
                              check_frame=records_to_frame(records, src.spec),
                              extras=lambda d: _copy_extras(src.path, d))
    try:
        Predictor.load(directory, trusted={signing.key_id(key): key.public_key()}).self_test()
    except ArtifactError:
        shutil.rmtree(directory)
        raise
    if update_latest:
        write_latest(root, card["version"])
    return directory


def _copy_extras(source: Path, target: Path) -> None:
    """Copy the files a new version inherits unchanged (evaluation, plots)."""
    own = {signing.MANIFEST, signing.SIGNATURE, CARD_FILE, MODEL_FILE, COMPILED_FILE,
           COMPILED_ARRAYS}
    for name in signing.listed_files(source):
        if name not in own:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml resign``."""
    parser.add_argument("--model", type=Path, default=config.models_dir(),
                        help="the artifact, or a models dir with LATEST (default: ./models)")
    parser.add_argument("--threshold", type=float, help="new decision threshold on P(default)")
    parser.add_argument("--grades", type=Path,
                        help='JSON file: [{"grade": "A", "max_pd": 0.05, "label": "..."}, ...]')
    parser.add_argument("--note", default="", help="why: the change request or approval id")
    parser.add_argument("--out", type=Path, help="models dir to write to (default: the source's)")
    parser.add_argument("--no-latest", action="store_true", help="do not move LATEST")


def run(args: argparse.Namespace) -> int:
    """Re-sign from parsed CLI arguments and print the new version."""
    grades = None
    if args.grades is not None:
        grades = json.loads(args.grades.read_text(encoding="utf-8"))
    directory = resign(args.model, args.out, args.threshold, grades, args.note,
                       update_latest=not args.no_latest)
    card = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"artifact": str(directory), "version": card["version"],
                      "from_version": card["resigned"]["from_version"],
                      "changes": sorted(card["resigned"]["changes"]),
                      "signer_key_id": card["provenance"]["signer_key_id"]}))
    return 0
