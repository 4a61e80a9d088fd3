"""Signed artifacts: what the API and the batch scorer refuse, key rotation, re-signing.

Every tampering case is checked on both loaders a production system runs: the API
(``create_app``: ``/ready`` 503 with the reason) and the batch scorer (``python -m ml
score`` exits 2 with the reason). Neither may run anything from the artifact.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from ml.serving import signing
from ml.serving.artifact import CARD_FILE, COMPILED_ARRAYS, COMPILED_FILE, LATEST, MODEL_FILE
from ml.serving.errors import SignatureError
from ml.serving.predictor import Predictor
from ml.training.publish import load_artifact, resign

from helpers import CLIENT_HEADERS

ROOT = Path(__file__).resolve().parent.parent
FILES = (MODEL_FILE, COMPILED_FILE, COMPILED_ARRAYS, CARD_FILE, "evaluation.json")


class Exploit:
    """Unpickling this writes a marker file: the side effect that must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from the artifact ran"))


@pytest.fixture
def models(trained_model_dir, tmp_path):
    """A private copy of the session's models dir; returns (models dir, version dir)."""
    root = tmp_path / "models"
    shutil.copytree(trained_model_dir, root)
    return root, root / (root / LATEST).read_text().strip()


@pytest.fixture
def other_key(tmp_path):
    """A key pair nobody trusts: (private key, public key path)."""
    signing.generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    return signing.signing_key(tmp_path / "other.pem"), tmp_path / "other.pub"


def resign_in_place(directory: Path, key=None) -> None:
    """What an attacker with the key would do: sign the directory as it is now."""
    signing.sign(directory, key or signing.signing_key(), CARD_FILE)


def edit_card(directory: Path, change) -> None:
    card = json.loads((directory / CARD_FILE).read_text())
    change(card)
    (directory / CARD_FILE).write_text(json.dumps(card))


def flip_a_byte(name: str):
    def damage(directory: Path, _key) -> None:
        data = bytearray((directory / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (directory / name).write_bytes(bytes(data))
    return damage


def malicious_pickle(directory: Path, _key) -> None:
    with open(directory / MODEL_FILE, "wb") as fh:
        pickle.dump(Exploit(directory.parent.parent / "pwned"), fh)


TAMPERING = {
    **{f"a byte of {name}": (flip_a_byte(name), f"file {name} differs") for name in FILES},
    "threshold raised in the card": (
        lambda d, k: edit_card(d, lambda c: c.update(threshold=0.99)), "model_card.json differs"),
    "grade table edited": (
        lambda d, k: edit_card(d, lambda c: c["grades"][0].update(max_pd=0.3)),
        "model_card.json differs"),
    "spec bound edited": (
        lambda d, k: edit_card(d, lambda c: c["spec"]["features"][1].update(maximum=10 ** 6)),
        "model_card.json differs"),
    "a file added": (lambda d, k: (d / "sitecustomize.py").write_text("print(1)"),
                     "sitecustomize.py was added after signing"),
    "a file removed": (lambda d, k: (d / "evaluation.json").unlink(),
                       "evaluation.json is listed in the signed manifest but missing"),
    "the manifest edited": (
        lambda d, k: (d / signing.MANIFEST).write_text(
            (d / signing.MANIFEST).read_text().replace('"format": 1', '"format": 1 ')),
        "the signature does not match"),
    "signed by another key": (lambda d, k: (edit_card(d, lambda c: c.update(threshold=0.99)),
                                            resign_in_place(d, k)), "which is not trusted"),
    "no signature": (lambda d, k: (d / signing.SIGNATURE).unlink(), "is not signed"),
    "a malicious pickle": (malicious_pickle, "file model.joblib differs"),
    "a malicious pickle signed by another key": (
        lambda d, k: (malicious_pickle(d, k), resign_in_place(d, k)), "which is not trusted"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_the_api_and_the_batch_scorer_refuse_a_tampered_artifact(models, other_key, tmp_path,
                                                                 case):
    root, directory = models
    damage, reason = TAMPERING[case]
    damage(directory, other_key[0])

    ready = create_app({"MODEL_DIR": str(root)}).test_client().get("/ready")
    assert ready.status_code == 503
    message = ready.get_json()["message"]
    assert reason in message and "SignatureError" in message and "\n" not in message

    portfolio = tmp_path / "in.csv"
    portfolio.write_text("a,b\n1,2\n")
    scored = subprocess.run([sys.executable, "-m", "ml", "score", "--model", str(root),
                             str(portfolio), str(tmp_path / "out.csv")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert scored.returncode == 2
    assert reason in scored.stderr and "Traceback" not in scored.stderr
    assert not (tmp_path / "out.csv").exists()
    assert not (root.parent / "pwned").exists()  # nothing from the artifact ran


def test_serving_never_unpickles_even_a_pickle_signed_by_a_trusted_key(models, tmp_path):
    """The API and the batch scorer read only the card and the compiled model (JSON and
    npz): a trusted signer's malicious sklearn pickle serves normally and never runs."""
    root, directory = models
    malicious_pickle(directory, None)
    resign_in_place(directory)
    client = create_app({"MODEL_DIR": str(root)}).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = CLIENT_HEADERS["Authorization"]
    assert client.get("/ready").status_code == 200
    example = client.get("/model").get_json()["example"]
    assert client.post("/predict", json=example).status_code == 200
    assert not (root.parent / "pwned").exists()
    load_artifact(root)  # a training job does unpickle: the exploit is real, sign nothing unseen
    assert (root.parent / "pwned").exists()


def test_model_shows_the_verified_signer(trained_model_dir, signing_keys):
    client = create_app({"MODEL_DIR": str(trained_model_dir)}).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = CLIENT_HEADERS["Authorization"]
    body = client.get("/model").get_json()
    expected = signing.key_id(signing.signing_key(signing_keys[0]))
    assert body["signature"]["key_id"] == expected
    assert body["provenance"]["signer_key_id"] == expected
    assert set(body["provenance"]) >= {"data_sha256", "git_commit", "trainer_image"}
    assert body["provenance"]["data_sha256"] == body["data"]["sha256"]


def test_either_of_two_trusted_keys_loads_and_an_untrusted_one_does_not(models, other_key,
                                                                        signing_keys, tmp_path):
    """Key rotation: trust the old and the new key for a while."""
    root, directory = models
    old_public = next(signing_keys[1].iterdir())
    both = f"{old_public}{os.pathsep}{other_key[1]}"
    assert Predictor.load(root, trusted=both).signer == signing.key_id(signing.signing_key())
    resign_in_place(directory, other_key[0])
    assert Predictor.load(root, trusted=both).signer == signing.key_id(other_key[0])
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    shutil.copy(other_key[1], rotated / "new.pem")
    shutil.copy(old_public, rotated / "old.pem")
    assert Predictor.load(root, trusted=str(rotated)).signer == signing.key_id(other_key[0])
    with pytest.raises(SignatureError, match="not trusted"):
        Predictor.load(root, trusted=str(old_public))


@pytest.mark.parametrize("setting, message", [
    ("", "no trusted public keys"),
    ("/nonexistent/keys", "does not exist"),
    ("EMPTY", "holds no Ed25519 public key"),
])
def test_without_usable_trusted_keys_nothing_loads(trained_model_dir, tmp_path, monkeypatch,
                                                   setting, message):
    if setting == "EMPTY":
        (tmp_path / "empty.pem").write_text("no key here\n")
        setting = str(tmp_path / "empty.pem")
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, setting)
    ready = create_app({"MODEL_DIR": str(trained_model_dir)}).test_client().get("/ready")
    assert ready.status_code == 503 and message in ready.get_json()["message"]


def test_resign_writes_a_new_signed_version_and_never_edits_in_place(models):
    root, directory = models
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    new = resign(root, threshold=0.42, note="CR-123 approved by the risk committee")
    assert new != directory and (root / LATEST).read_text().strip() == new.name
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    predictor = Predictor.load(root)
    predictor.self_test()
    assert predictor.threshold == 0.42 and predictor.version == new.name
    record = predictor.card["resigned"]
    assert record["from_version"] == directory.name and record["note"].startswith("CR-123")
    assert record["changes"]["threshold"]["to"] == 0.42
    assert (new / "evaluation.json").read_bytes() == (directory / "evaluation.json").read_bytes()


def test_resign_from_the_command_line(models, tmp_path):
    root, directory = models
    grades = json.loads((directory / CARD_FILE).read_text())["grades"]
    grades[0]["max_pd"] = 0.04
    (tmp_path / "grades.json").write_text(json.dumps(grades))
    done = subprocess.run([sys.executable, "-m", "ml", "resign", "--model", str(root),
                           "--grades", str(tmp_path / "grades.json"), "--note", "CR-7"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["changes"] == ["grades"] and out["from_version"] == directory.name
    assert Predictor.load(root).grades[0]["max_pd"] == 0.04


def test_resign_refuses_an_untrusted_source_and_a_bad_threshold(models, other_key):
    root, directory = models
    with pytest.raises(Exception, match="threshold"):
        resign(root, threshold=1.5)
    assert (root / LATEST).read_text().strip() == directory.name
    assert {p.name for p in root.iterdir()} == {LATEST, directory.name}
    resign_in_place(directory, other_key[0])
    with pytest.raises(SignatureError, match="not trusted"):
        resign(root, threshold=0.3)


def test_training_without_a_signing_key_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.delenv(signing.SIGNING_KEY_FILE_ENV)
    monkeypatch.delenv(signing.SIGNING_KEY_ENV, raising=False)
    done = subprocess.run([sys.executable, "-m", "ml", "train", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "no signing key" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_signing_key_may_come_from_the_environment_as_pem(monkeypatch, signing_keys):
    monkeypatch.delenv(signing.SIGNING_KEY_FILE_ENV)
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, signing_keys[0].read_text())
    assert signing.key_id(signing.signing_key()) == signing.key_id(
        signing.signing_key(signing_keys[0]))


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path):
    args = [sys.executable, "-m", "ml", "keygen", "--private", str(tmp_path / "k.pem"),
            "--public", str(tmp_path / "trusted" / "k.pub")]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert first.returncode == 0
    key_id = signing.key_id(signing.signing_key(tmp_path / "k.pem"))
    assert key_id in first.stdout
    assert list(signing.trusted_keys(str(tmp_path / "trusted"))) == [key_id]
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
