"""Signed artifacts: an Ed25519 signature over a manifest of every file's SHA-256.

The trainer writes ``manifest.json`` (each file of the artifact directory with its
SHA-256, the card's hash called out, the signer's key id) and ``manifest.sig`` (the
Ed25519 signature of the manifest's exact bytes). A loader calls :func:`verify` before
it reads anything else: the signature must be by a trusted key, and the directory must
hold exactly the listed files with the listed hashes. Files are then read through
:meth:`Manifest.read`, which hashes the very bytes it returns, so nothing can be swapped
between the check and the use. A hash beside the file it protects stops accidents;
only a signature stops someone who can write the models directory (issue 18).

Keys: a key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
Trusted public keys come from ``MODEL_TRUSTED_KEYS``: files (PEM, several keys per file
allowed) or directories of ``*.pem``/``*.pub`` files, separated by ``os.pathsep`` (trust
several keys at once to rotate). The trainer's private key comes from the PEM file named
by ``MODEL_SIGNING_KEY_FILE`` or the PEM text in ``MODEL_SIGNING_KEY``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

from ml.serving.errors import ArtifactError, SignatureError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MANIFEST_FORMAT = 1
TRUSTED_KEYS_ENV = "MODEL_TRUSTED_KEYS"
SIGNING_KEY_FILE_ENV = "MODEL_SIGNING_KEY_FILE"
SIGNING_KEY_ENV = "MODEL_SIGNING_KEY"
PUBLIC_KEY_SUFFIXES = (".pem", ".pub")
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)

TrustedKeys = Mapping[str, Ed25519PublicKey]


class SigningKeyError(ArtifactError):
    """No usable private signing key is configured."""


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key: short, stable, unique enough."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of some bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- keys


def trusted_keys(source: str | os.PathLike | TrustedKeys | None = None,
                 ) -> dict[str, Ed25519PublicKey]:
    """The trusted public keys by key id, from ``source`` or else ``MODEL_TRUSTED_KEYS``.

    Raises:
        SignatureError: nothing configured, a path that does not exist, or no key in it.
    """
    if isinstance(source, Mapping):
        return dict(source)
    source = os.fspath(source) if source is not None else os.environ.get(TRUSTED_KEYS_ENV, "")
    if not source:
        raise SignatureError(f"no trusted public keys: set {TRUSTED_KEYS_ENV} to a file or "
                             "directory of Ed25519 public keys (PEM)")
    keys: dict[str, Ed25519PublicKey] = {}
    for part in filter(None, source.split(os.pathsep)):
        path = Path(part)
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix in PUBLIC_KEY_SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise SignatureError(f"{TRUSTED_KEYS_ENV}: {path} does not exist")
        for file in files:
            for key in _public_keys(file):
                keys[key_id(key)] = key
    if not keys:
        raise SignatureError(f"{TRUSTED_KEYS_ENV}={source} holds no Ed25519 public key")
    return keys


def _public_keys(path: Path) -> list[Ed25519PublicKey]:
    keys = []
    for block in _PEM_BLOCK.findall(path.read_bytes()):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise SignatureError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{path}: a {type(key).__name__}, not an Ed25519 public key")
        keys.append(key)
    return keys


def signing_key(path: str | os.PathLike | None = None) -> Ed25519PrivateKey:
    """The trainer's private key: ``path``, else ``MODEL_SIGNING_KEY_FILE``, else the PEM in
    ``MODEL_SIGNING_KEY``.

    Raises:
        SigningKeyError: none configured, unreadable, or not an unencrypted Ed25519 key.
    """
    path = path or os.environ.get(SIGNING_KEY_FILE_ENV)
    if path:
        try:
            pem, where = Path(path).read_bytes(), str(path)
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
    elif os.environ.get(SIGNING_KEY_ENV):
        pem, where = os.environ[SIGNING_KEY_ENV].encode(), SIGNING_KEY_ENV
    else:
        raise SigningKeyError(f"no signing key: set {SIGNING_KEY_FILE_ENV} to an Ed25519 "
                              f"private key (PEM), or put the PEM in {SIGNING_KEY_ENV}; "
                              "`python -m ml keygen` makes a development pair")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair as PEM (the private key readable by its owner only).

    Returns:
        The new key's id.
    """
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """A verified artifact directory: its listed files, and who signed it when."""

    directory: Path
    files: dict[str, str]
    key_id: str
    signed_at: str

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, checked against the manifest as they are returned."""
        expected = self.files.get(name)
        if expected is None:
            raise SignatureError(f"{name} is not listed in the signed manifest of "
                                 f"{self.directory.name}")
        try:
            data = (self.directory / name).read_bytes()
        except OSError as exc:
            raise SignatureError(f"{name} cannot be read: {exc.strerror}") from None
        if sha256_bytes(data) != expected:
            raise SignatureError(f"{name} differs from the signed manifest of "
                                 f"{self.directory.name}")
        return data


def listed_files(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (but the manifest and its signature) with its SHA-256."""
    return {p.relative_to(directory).as_posix(): sha256_of(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in (MANIFEST, SIGNATURE)}


def sign(directory: Path, key: Ed25519PrivateKey, card_file: str) -> Manifest:
    """Write ``manifest.json`` for the files now in ``directory`` and sign it.

    Call it last, once every file of the artifact is written: a file added later makes
    the artifact refused.
    """
    files = listed_files(directory)
    if card_file not in files:
        raise ArtifactError(f"cannot sign {directory}: it has no {card_file}")
    signed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {"format": MANIFEST_FORMAT, "artifact": directory.name, "key_id": key_id(key),
                "signed_at": signed_at, "card_sha256": files[card_file], "files": files}
    body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (directory / MANIFEST).write_bytes(body)
    signature = {"algorithm": "Ed25519", "key_id": key_id(key),
                 "signature": base64.b64encode(key.sign(body)).decode()}
    (directory / SIGNATURE).write_text(json.dumps(signature, indent=1) + "\n", encoding="utf-8")
    return Manifest(directory, files, key_id(key), signed_at)


def verify(directory: Path, trusted: TrustedKeys) -> Manifest:
    """Check the signature and the listing of ``directory``; read nothing else first.

    Raises:
        SignatureError: with a one-line reason: no signature, a key not trusted, a wrong
            signature, or a file that differs from, was added to or removed from the
            signed listing.
    """
    name = directory.name
    sig_id, signature = _read_signature(directory)
    if sig_id not in trusted:
        raise SignatureError(f"artifact {name} is signed by key {sig_id}, which is not trusted "
                             f"(trusted: {', '.join(sorted(trusted)) or 'none'})")
    try:
        body = (directory / MANIFEST).read_bytes()
    except OSError:
        raise SignatureError(f"artifact {name} has a signature but no {MANIFEST}") from None
    try:
        trusted[sig_id].verify(signature, body)
    except InvalidSignature:
        raise SignatureError(f"artifact {name}: the signature does not match {MANIFEST} "
                             f"(changed after signing, or not signed by key {sig_id})") from None
    manifest = json.loads(body)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("key_id") != sig_id:
        raise SignatureError(f"artifact {name}: {MANIFEST} has format "
                             f"{manifest.get('format')!r}, this code reads {MANIFEST_FORMAT}")
    listed: dict[str, str] = manifest["files"]
    actual = listed_files(directory)
    for problem, names in (("was added after signing", sorted(set(actual) - set(listed))),
                           ("is listed in the signed manifest but missing",
                            sorted(set(listed) - set(actual))),
                           ("differs from the signed manifest",
                            sorted(n for n in listed if n in actual and actual[n] != listed[n]))):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise SignatureError(f"artifact {name}: file {names[0]} {problem}{more}")
    return Manifest(directory, listed, sig_id, str(manifest.get("signed_at", "")))


def _read_signature(directory: Path) -> tuple[str, bytes]:
    """The key id and signature bytes of ``manifest.sig``."""
    path = directory / SIGNATURE
    if not path.is_file():
        raise SignatureError(f"artifact {directory.name} is not signed (no {SIGNATURE}); "
                             "sign it with the trainer or `python -m ml resign`")
    try:
        sig = json.loads(path.read_text(encoding="utf-8"))
        if sig.get("algorithm") != "Ed25519":
            raise ValueError(f"algorithm {sig.get('algorithm')!r}")
        return str(sig["key_id"]), base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"artifact {directory.name}: {SIGNATURE} is malformed "
                             f"({exc})") from None
