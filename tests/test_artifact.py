"""The artifact: sealed with its SHA-256, refused when tampered with or built elsewhere."""
from __future__ import annotations

import json
import shutil

import pytest

from ml.artifact import (CARD_FILE, LATEST, MODEL_FILE, ArtifactError, load_artifact, read_card,
                         resolve, sha256_of)


@pytest.fixture
def artifact_copy(trained_model_dir, tmp_path):
    """A private copy of the session artifact that a test may damage."""
    target = tmp_path / "models"
    shutil.copytree(trained_model_dir, target)
    return resolve(target)


def test_latest_pointer_resolves_to_the_version(trained_model_dir):
    version = (trained_model_dir / LATEST).read_text().strip()
    assert resolve(trained_model_dir) == trained_model_dir / version
    assert load_artifact(trained_model_dir).version == version


def test_card_records_the_pickle_hash(trained_model_dir):
    directory = resolve(trained_model_dir)
    assert read_card(directory)["artifact"]["sha256"] == sha256_of(directory / MODEL_FILE)


def test_loader_refuses_a_tampered_pickle(artifact_copy):
    with open(artifact_copy / MODEL_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_artifact(artifact_copy)


def test_loader_refuses_other_library_versions(artifact_copy):
    card = json.loads((artifact_copy / CARD_FILE).read_text())
    card["libraries"]["scikit-learn"] = "0.24.2"
    (artifact_copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="scikit-learn 0.24.2"):
        load_artifact(artifact_copy)
    assert load_artifact(artifact_copy, check_versions=False).version == card["version"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / MODEL_FILE).unlink(), "missing"),
    (lambda d: (d / CARD_FILE).write_text("{not json"), "cannot read model card"),
    (lambda d: (d.parent / LATEST).write_text("../../etc"), "not an artifact"),
    (lambda d: shutil.rmtree(d.parent), "no model artifact"),
])
def test_loader_explains_what_is_wrong(artifact_copy, damage, message):
    root = artifact_copy.parent
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(root)
