"""The artifact: sealed with its SHA-256, refused when tampered with or built elsewhere."""
from __future__ import annotations

import json
import shutil

import pytest

from ml.serving.artifact import (CARD_FILE, FAST_FILE, LATEST, MODEL_FILE, ArtifactError,
                                 load_artifact, load_serving, read_card, resolve, sha256_of)


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


def test_card_records_the_pickle_hashes(trained_model_dir):
    directory = resolve(trained_model_dir)
    sealed = read_card(directory)["artifact"]
    assert sealed["sha256"] == sha256_of(directory / MODEL_FILE)
    assert sealed["fast_sha256"] == sha256_of(directory / FAST_FILE)


@pytest.mark.parametrize("name, load", [(MODEL_FILE, load_artifact), (FAST_FILE, load_serving)])
def test_loader_refuses_a_tampered_pickle(artifact_copy, name, load):
    with open(artifact_copy / name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load(artifact_copy)


def test_serving_loader_gives_the_compiled_model_only(artifact_copy):
    artifact = load_serving(artifact_copy)
    assert artifact.model is None and artifact.fast is not None
    card = json.loads((artifact_copy / CARD_FILE).read_text())
    card["libraries"]["numpy"] = "1.0.0"
    (artifact_copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="numpy 1.0.0"):
        load_serving(artifact_copy)


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
