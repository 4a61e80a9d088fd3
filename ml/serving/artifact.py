"""The artifact: a signed directory holding one model, and the loader the API and batch use.

Layout::

    models/
      LATEST                      # the version name of the newest artifact (a stable pointer)
      <version>/
        manifest.json             # every file below with its SHA-256, the signer's key id
        manifest.sig              # Ed25519 signature of manifest.json (ml.serving.signing)
        model_card.json           # everything about the model: threshold, grades, spec...
        compiled_model.json       # the compiled model's structure  } what the API and the
        compiled_model.npz        # its arrays (no pickles)          } batch scorer load
        model.joblib              # the fitted sklearn estimator: training jobs only
        evaluation.json, plots/*.png

:func:`load_serving` verifies the signature and the listing of the whole directory
before it reads anything else, then reads the card and the compiled model from the
verified bytes, with ``json`` and ``np.load(allow_pickle=False)``: loading a model can
never run code. Writing artifacts (which needs sklearn) is training code:
:mod:`ml.training.publish`.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ml.serving import modelfile, signing
from ml.serving.compiled import FastModel
from ml.serving.errors import ArtifactError
from ml.spec.schema import DatasetSpec

MODEL_FILE = "model.joblib"
COMPILED_FILE = "compiled_model.json"
COMPILED_ARRAYS = "compiled_model.npz"
CARD_FILE = "model_card.json"
LATEST = "LATEST"
SERVING_LIBRARIES = ("numpy",)  # the compiled model's arrays are read by numpy
RECORDED_LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib")

sha256_of = signing.sha256_of


class CardFields:
    """What every loaded artifact reads off its model card (``self.card``)."""

    card: dict[str, Any]

    @property
    def name(self) -> str:
        """Model name (the data set's name)."""
        return self.card["name"]

    @property
    def version(self) -> str:
        """Artifact version, unique per training run or re-signing."""
        return self.card["version"]

    @property
    def threshold(self) -> float:
        """Cost-optimal decision threshold on P(default)."""
        return float(self.card["threshold"])


@dataclass
class Artifact(CardFields):
    """A verified artifact: its card and spec, the compiled model, and who signed it."""

    card: dict[str, Any]
    spec: DatasetSpec
    path: Path
    fast: FastModel
    signer: str = ""
    signed_at: str = ""


def library_versions(libraries: tuple[str, ...] = RECORDED_LIBRARIES) -> dict[str, str]:
    """Installed versions of Python and ``libraries`` (default: those a model card records)."""
    versions = {"python": platform.python_version()}
    for lib in libraries:
        versions[lib] = metadata.version(lib)
    return versions


def latest_version(models: str | Path) -> str | None:
    """The version ``models/LATEST`` names, unchecked (None without the file)."""
    pointer = Path(models) / LATEST
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def resolve(path: str | Path) -> Path:
    """The artifact directory for ``path``: itself, or the version its ``LATEST`` names."""
    path = Path(path)
    if (path / CARD_FILE).is_file() or (path / signing.SIGNATURE).is_file():
        return path
    version = latest_version(path)
    if version is not None:
        if version and "/" not in version and version not in (".", "..") \
                and (path / version).is_dir():
            return path / version
        raise ArtifactError(f"{path / LATEST} names {version!r}, which is not an artifact "
                            f"in {path}")
    raise ArtifactError(f"no model artifact at {path}: train one with `python -m ml train`")


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card of the artifact at ``path``, unverified (reports and monitoring jobs
    that only display it; serving decisions use :func:`load_serving`)."""
    card_path = resolve(path) / CARD_FILE
    try:
        return parse_card(card_path.read_bytes())
    except OSError as exc:
        raise ArtifactError(f"cannot read model card {card_path}: {exc}") from exc


def parse_card(data: bytes) -> dict[str, Any]:
    """A model card from its bytes."""
    try:
        card = json.loads(data)
    except ValueError as exc:
        raise ArtifactError(f"cannot read model card: {exc}") from exc
    if not isinstance(card, dict):
        raise ArtifactError("cannot read model card: not a JSON object")
    return card


def verified(path: str | Path, trusted: Any = None) -> tuple[signing.Manifest, dict[str, Any]]:
    """Resolve ``path``, verify its signature (keys: ``trusted``, else ``MODEL_TRUSTED_KEYS``)
    and return the manifest with the card read from verified bytes."""
    directory = resolve(path)
    manifest = signing.verify(directory, signing.trusted_keys(trusted))
    return manifest, parse_card(manifest.read(CARD_FILE))


def load_serving(path: str | Path, check_versions: bool = True, trusted: Any = None) -> Artifact:
    """Verify and load the artifact at ``path`` for scoring; raises :class:`ArtifactError`.

    Args:
        path: an artifact directory, or a models directory with ``LATEST``.
        check_versions: refuse a model compiled with another numpy.
        trusted: trusted public keys (a mapping by key id, or a path as in
            ``MODEL_TRUSTED_KEYS``); default: the ``MODEL_TRUSTED_KEYS`` environment variable.
    """
    manifest, card = verified(path, trusted)
    sealed = card.get("artifact", {})
    if sealed.get("compiled_format") != modelfile.FORMAT:
        raise ArtifactError(f"the artifact's compiled model has format "
                            f"{sealed.get('compiled_format')!r}, this code reads "
                            f"{modelfile.FORMAT}: retrain or `python -m ml resign` it")
    if check_versions:
        check_versions_of(card, SERVING_LIBRARIES)
    fast = modelfile.load(manifest.read(sealed.get("compiled_file", COMPILED_FILE)),
                          manifest.read(sealed.get("compiled_arrays", COMPILED_ARRAYS)))
    return Artifact(card=card, spec=DatasetSpec.from_dict(card["spec"]), path=manifest.directory,
                    fast=fast, signer=manifest.key_id, signed_at=manifest.signed_at)


def check_versions_of(card: dict[str, Any], libraries: tuple[str, ...]) -> None:
    """Refuse a model built with other versions of ``libraries`` than the installed ones."""
    installed = library_versions(libraries)  # each lookup reads package metadata: ~4 ms
    built = card.get("libraries", {})
    wrong = [f"{lib} {built.get(lib)} (installed {installed[lib]})"
             for lib in libraries if built.get(lib) != installed[lib]]
    if wrong:
        raise ArtifactError("refusing to load a model built with other library versions: "
                            + ", ".join(wrong) + "; retrain or install the pinned versions")


def write_latest(root: Path, version: str) -> None:
    """Point ``root/LATEST`` at ``version`` atomically: a reader never sees half a name."""
    tmp = root / f".latest-{os.getpid()}"
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, root / LATEST)
