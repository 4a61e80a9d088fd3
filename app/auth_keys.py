"""API keys: only their SHA-256 hashes are kept, in the file named by ``API_KEYS_FILE``.

The file (JSON, or YAML for any other extension; in OpenShift a mounted Secret) holds::

    keys:
      - name: scoring-batch        # the client's name: its identity is key:scoring-batch
        sha256: 9f86d0...          # hex SHA-256 of the key; the key itself is never stored
        scopes: [score, feedback]
        created_at: "2026-12-03T13:00:00Z"

A key is 32 random bytes, URL-safe base64, prefixed ``crk_`` (so a leaked one is
recognisable in a scanner). A presented key is hashed and compared with every stored
hash by ``hmac.compare_digest``, without stopping at a match, so the time taken does
not depend on which entry matched. The server re-reads the file when its mtime, size or
inode change (checked on each request with one ``stat``), so a revocation applies
without a restart. :func:`create_key`, :func:`list_keys` and :func:`revoke_key` back
``python -m app keys``; they replace the file atomically (write, then rename).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from datetime import datetime, timezone
from typing import Any, Iterable

import yaml

from app.auth import SCOPES, Identity

log = logging.getLogger(__name__)

PREFIX = "crk_"


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_file(path: str) -> list[dict[str, Any]]:
    """The entries of a key file (an absent file has none).

    Raises:
        ValueError: the file is not a mapping with a ``keys`` list of valid entries.
    """
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}  # YAML reads JSON too
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a mapping with a 'keys' list")
    for entry in entries:
        _check_entry(path, entry)
    return entries


def _check_entry(path: str, entry: Any) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError(f"{path}: every key needs a name")
    digest = entry.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        raise ValueError(f"{path}: key {entry['name']!r} needs a sha256 of 64 hex digits")
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not set(scopes) <= set(SCOPES):
        raise ValueError(f"{path}: key {entry['name']!r} needs scopes among {', '.join(SCOPES)}")


def write_file(path: str, entries: list[dict[str, Any]]) -> None:
    """Replace the key file atomically, readable by its owner (and group) only."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".keys-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            if path.endswith(".json"):
                json.dump({"keys": entries}, out, indent=2)
            else:
                yaml.safe_dump({"keys": entries}, out, sort_keys=False)
        os.chmod(temp, 0o640)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def create_key(path: str, name: str, scopes: Iterable[str]) -> str:
    """Generate a key for client ``name``, store its hash, return the key (shown once).

    Raises:
        ValueError: the name is taken, or a scope is unknown.
    """
    scopes = list(dict.fromkeys(scopes))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError("the name must be 1-64 letters, digits or ._-")
    entries = read_file(path)
    if any(e["name"] == name for e in entries):
        raise ValueError(f"a key named {name!r} exists; revoke it first")
    key = PREFIX + secrets.token_urlsafe(32)
    entries.append({"name": name, "sha256": hash_key(key), "scopes": scopes,
                    "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    write_file(path, entries)
    return key


def list_keys(path: str) -> list[dict[str, Any]]:
    """Name, scopes and creation time of each key (never the hash)."""
    return [{"name": e["name"], "scopes": e["scopes"], "created_at": e.get("created_at")}
            for e in read_file(path)]


def revoke_key(path: str, name: str) -> bool:
    """Remove the key of client ``name``; False when there is none."""
    entries = read_file(path)
    kept = [e for e in entries if e["name"] != name]
    if len(kept) == len(entries):
        return False
    write_file(path, kept)
    return True


class KeyFile:
    """The server's view of the key file, re-read when it changes.

    Args:
        path: the file; it must be readable when the app starts.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._entries: list[tuple[bytes, Identity]] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> "KeyFile":
        """Load ``path`` now, so a missing or broken file stops the start.

        Raises:
            RuntimeError: the file is missing or invalid (one line: gunicorn prints it).
        """
        keys = cls(path)
        if not os.path.exists(path):
            raise RuntimeError(f"API_KEYS_FILE {path} does not exist "
                               "(create a key: python -m app keys create)")
        try:
            keys._reload()
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise RuntimeError(f"API_KEYS_FILE {path} cannot be read: "
                               f"{str(exc).splitlines()[0]}") from None
        return keys

    def _reload(self) -> None:
        stat = os.stat(self.path)
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        with self._lock:
            entries = [(bytes.fromhex(e["sha256"]),
                        Identity("key:" + e["name"], "api_key", frozenset(e["scopes"])))
                       for e in read_file(self.path)]
            self._entries, self._signature = entries, signature
        log.info("API keys loaded", extra={"keys": len(entries)})

    def _current(self) -> list[tuple[bytes, Identity]]:
        """The entries, re-read if the file changed; if it became unreadable, none (fail
        closed: a half-written or removed file must not keep revoked keys alive)."""
        try:
            self._reload()
        except (OSError, ValueError, yaml.YAMLError) as exc:
            if self._entries:
                log.error("API key file unreadable; refusing every key",
                          extra={"reason": type(exc).__name__})
            self._entries, self._signature = [], None
        return self._entries

    def lookup(self, key: str) -> Identity | None:
        """The identity of a presented key, None when no stored hash matches."""
        return self.lookup_digest(hashlib.sha256(key.encode("utf-8")).digest())

    def lookup_digest(self, digest: bytes) -> Identity | None:
        """The identity whose stored hash is ``digest`` (a signed-in session keeps the
        hash, never the key), None when none matches (or the key was revoked)."""
        found = None
        for stored, identity in self._current():
            if hmac.compare_digest(stored, digest):
                found = identity
        return found
