"""Artifact stage: the fitted model sealed with its model card, and the loader that checks it.

Layout::

    models/
      LATEST                      # the version name of the newest artifact (a stable pointer)
      <version>/
        model.joblib              # the fitted sklearn estimator, pickled whole
        fast_model.pkl            # the same model compiled to numpy arrays (ml.serving.fastpath)
        model_card.json           # everything about it, including both files' SHA-256
        plots/*.png

The loaders refuse to unpickle a file whose SHA-256 differs from the card's, or that was
built with other versions of the libraries whose pickles are not portable.
:func:`load_artifact` gives the sklearn model (training, reports, the batch scorer);
:func:`load_serving` gives only the compiled model, so a server never imports sklearn,
scipy or pandas: it is ready in about a second and its workers share less memory.
This module is runtime code: ``app`` may import it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ml.spec.schema import DatasetSpec

MODEL_FILE = "model.joblib"
FAST_FILE = "fast_model.pkl"
CARD_FILE = "model_card.json"
LATEST = "LATEST"
# Pickles of these are tied to the exact version that wrote them.
PINNED_LIBRARIES = ("scikit-learn", "numpy", "joblib")
SERVING_LIBRARIES = ("numpy",)  # a compiled model is numpy arrays and plain Python
RECORDED_LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib")


class ArtifactError(RuntimeError):
    """The artifact is missing, tampered with, or built with incompatible libraries."""


@dataclass
class Artifact:
    """A loaded, verified model with its card and spec.

    ``model`` is the sklearn estimator (``None`` when loaded for serving) and ``fast``
    the compiled :class:`ml.serving.fastpath.FastModel` (``None`` when not loaded).
    """

    model: Any
    card: dict[str, Any]
    spec: DatasetSpec
    path: Path
    fast: Any = None

    @property
    def name(self) -> str:
        """Model name (the data set's name)."""
        return self.card["name"]

    @property
    def version(self) -> str:
        """Artifact version, unique per training run."""
        return self.card["version"]

    @property
    def threshold(self) -> float:
        """Cost-optimal decision threshold on P(default)."""
        return float(self.card["threshold"])


def library_versions() -> dict[str, str]:
    """Installed versions of Python and the libraries recorded in a model card."""
    versions = {"python": platform.python_version()}
    for lib in RECORDED_LIBRARIES:
        versions[lib] = metadata.version(lib)
    return versions


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(path: str | Path) -> Path:
    """The artifact directory for ``path``: itself, or the version its ``LATEST`` names."""
    path = Path(path)
    if (path / CARD_FILE).is_file():
        return path
    pointer = path / LATEST
    if pointer.is_file():
        version = pointer.read_text(encoding="utf-8").strip()
        if version and "/" not in version and (path / version / CARD_FILE).is_file():
            return path / version
        raise ArtifactError(f"{pointer} names {version!r}, which is not an artifact in {path}")
    raise ArtifactError(f"no model artifact at {path}: train one with `python -m ml train`")


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card of the artifact at ``path`` (no unpickling)."""
    card_path = resolve(path) / CARD_FILE
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read model card {card_path}: {exc}") from exc


def load_artifact(path: str | Path, check_versions: bool = True) -> Artifact:
    """Load and verify the sklearn model of an artifact; raises :class:`ArtifactError`.

    Checks, before unpickling: the card is readable, the pickle's SHA-256 matches the
    card, and (unless ``check_versions`` is false) scikit-learn, numpy and joblib are
    the versions the model was built with.
    """
    import joblib

    directory = resolve(path)
    card = read_card(directory)
    model_path = _verified(directory, card, "file", "sha256", MODEL_FILE)
    if check_versions:
        _check_versions(card, PINNED_LIBRARIES)
    model = joblib.load(model_path)
    return Artifact(model=model, card=card, spec=DatasetSpec.from_dict(card["spec"]),
                    path=directory)


def has_serving_model(path: str | Path) -> bool:
    """Whether the artifact at ``path`` carries a compiled model this code can read.

    Older artifacts have none, and one compiled with another layout
    (:data:`ml.serving.fastpath.FORMAT`) would be misread.
    """
    from ml.serving.fastpath import FORMAT

    sealed = read_card(path).get("artifact", {})
    return bool(sealed.get("fast_file")) and sealed.get("fast_format") == FORMAT


def load_serving(path: str | Path, check_versions: bool = True) -> Artifact:
    """Load and verify the compiled model of an artifact (no sklearn); ``model`` is ``None``.

    The same checks as :func:`load_artifact`, on ``fast_model.pkl`` and numpy. The
    sklearn pickle is hash-checked too (not loaded): an artifact with any damaged file
    is refused as a whole.
    """
    import pickle

    directory = resolve(path)
    card = read_card(directory)
    _verified(directory, card, "file", "sha256", MODEL_FILE)
    fast_path = _verified(directory, card, "fast_file", "fast_sha256", FAST_FILE)
    if check_versions:
        _check_versions(card, SERVING_LIBRARIES)
    with open(fast_path, "rb") as fh:
        fast = pickle.load(fh)  # noqa: S301 - its SHA-256 matched the card's just above
    return Artifact(model=None, card=card, spec=DatasetSpec.from_dict(card["spec"]),
                    path=directory, fast=fast)


def _verified(directory: Path, card: dict[str, Any], file_key: str, hash_key: str,
              default: str) -> Path:
    """The path of one of the artifact's pickles, after checking its SHA-256."""
    path = directory / card.get("artifact", {}).get(file_key, default)
    if not path.is_file():
        raise ArtifactError(f"model file {path} is missing")
    expected = card.get("artifact", {}).get(hash_key)
    actual = sha256_of(path)
    if expected != actual:
        raise ArtifactError(f"refusing to load {path}: its SHA-256 {actual[:12]}… does not "
                            f"match the model card's {str(expected)[:12]}… (tampered or corrupted)")
    return path


def _check_versions(card: dict[str, Any], libraries: tuple[str, ...]) -> None:
    installed = library_versions()
    built = card.get("libraries", {})
    wrong = [f"{lib} {built.get(lib)} (installed {installed[lib]})"
             for lib in libraries if built.get(lib) != installed[lib]]
    if wrong:
        raise ArtifactError("refusing to load a model built with other library versions: "
                            + ", ".join(wrong) + "; retrain or install the pinned versions")


def save_artifact(model: Any, card: dict[str, Any], root: str | Path,
                  update_latest: bool = True, check_frame: Any = None) -> Path:
    """Write ``model``, its compiled form and ``card`` to ``root/<card['version']>/``.

    The model is compiled with :func:`ml.serving.fastpath.compile_model` and, when
    ``check_frame`` is given, checked against sklearn on every row of it (|Δ| ≤ 1e-9).
    The card is completed with both files' names and SHA-256. ``LATEST`` is then
    moved to the new version atomically, so a server reading it never sees half a name.
    """
    import pickle

    import joblib

    from ml.serving.fastpath import FORMAT, check_against, compile_model

    fast = compile_model(model)
    if check_frame is not None:
        check_against(model, fast, check_frame)
    root = Path(root)
    directory = root / card["version"]
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILE
    joblib.dump(model, model_path)
    fast_path = directory / FAST_FILE
    with open(fast_path, "wb") as fh:
        pickle.dump(fast, fh, protocol=pickle.HIGHEST_PROTOCOL)
    card = {**card, "artifact": {"file": MODEL_FILE, "sha256": sha256_of(model_path),
                                 "fast_file": FAST_FILE, "fast_sha256": sha256_of(fast_path),
                                 "fast_format": FORMAT}}
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2, default=_jsonable),
                                       encoding="utf-8")
    if update_latest:
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".latest-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(card["version"] + "\n")
        os.replace(tmp, root / LATEST)
    return directory


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays inside the card."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
