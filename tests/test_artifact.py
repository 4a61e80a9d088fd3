"""The artifact: signed, refused when tampered with or built elsewhere, explained when missing."""
from __future__ import annotations

import json
import shutil

import pytest

from ml.serving import signing
from ml.serving.artifact import (CARD_FILE, COMPILED_ARRAYS, LATEST, MODEL_FILE, ArtifactError,
                                 load_serving, read_card, resolve, sha256_of)
from ml.training.publish import load_artifact


@pytest.fixture
def artifact_copy(trained_model_dir, tmp_path):
    """A private copy of the session artifact that a test may damage."""
    target = tmp_path / "models"
    shutil.copytree(trained_model_dir, target)
    return resolve(target)


def edit_card_and_resign(directory, change) -> dict:
    """Change the card and sign again with the trusted test key (so only the change counts)."""
    card = json.loads((directory / CARD_FILE).read_text())
    change(card)
    (directory / CARD_FILE).write_text(json.dumps(card))
    signing.sign(directory, signing.signing_key(), CARD_FILE)
    return card


def test_latest_pointer_resolves_to_the_version(trained_model_dir):
    version = (trained_model_dir / LATEST).read_text().strip()
    assert resolve(trained_model_dir) == trained_model_dir / version
    assert load_artifact(trained_model_dir).version == version


def test_the_signed_manifest_lists_every_file_with_its_hash(trained_model_dir):
    directory = resolve(trained_model_dir)
    manifest = json.loads((directory / signing.MANIFEST).read_text())
    files = [p for p in directory.rglob("*") if p.is_file()
             and p.name not in (signing.MANIFEST, signing.SIGNATURE)]
    assert {p.relative_to(directory).as_posix(): sha256_of(p) for p in files} == manifest["files"]
    assert manifest["card_sha256"] == sha256_of(directory / CARD_FILE)
    assert read_card(directory)["provenance"]["signer_key_id"] == manifest["key_id"]


@pytest.mark.parametrize("name, load", [(MODEL_FILE, load_artifact),
                                        (COMPILED_ARRAYS, load_serving)])
def test_loader_refuses_a_tampered_file(artifact_copy, name, load):
    with open(artifact_copy / name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match=f"{name} differs from the signed manifest"):
        load(artifact_copy)


def test_serving_loader_gives_the_compiled_model_only(artifact_copy):
    artifact = load_serving(artifact_copy)
    assert not hasattr(artifact, "model") and artifact.fast is not None
    edit_card_and_resign(artifact_copy, lambda c: c["libraries"].update(numpy="1.0.0"))
    with pytest.raises(ArtifactError, match="numpy 1.0.0"):
        load_serving(artifact_copy)


def test_loader_refuses_other_library_versions(artifact_copy):
    card = edit_card_and_resign(artifact_copy,
                                lambda c: c["libraries"].update({"scikit-learn": "0.24.2"}))
    with pytest.raises(ArtifactError, match="scikit-learn 0.24.2"):
        load_artifact(artifact_copy)
    assert load_artifact(artifact_copy, check_versions=False).version == card["version"]
    assert load_serving(artifact_copy).version == card["version"]  # serving reads no pickle


def _unreadable_card(directory):
    (directory / CARD_FILE).write_text("{not json")
    signing.sign(directory, signing.signing_key(), CARD_FILE)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / MODEL_FILE).unlink(), "missing"),
    (_unreadable_card, "cannot read model card"),
    (lambda d: (d.parent / LATEST).write_text("../../etc"), "not an artifact"),
    (lambda d: shutil.rmtree(d.parent), "no model artifact"),
])
@pytest.mark.parametrize("load", [load_artifact, load_serving])
def test_loader_explains_what_is_wrong(artifact_copy, damage, message, load):
    root = artifact_copy.parent
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=message):
        load(root)
