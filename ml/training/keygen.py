"""``python -m ml keygen``: a new Ed25519 key pair for signing artifacts (development use).

``make run`` calls it when ``.keys/`` holds no key, so the quick start stays one command.
A production key is generated the same way, once, by whoever holds the CD secret; its
public half is what the API trusts (``docs/deploy.md``, "Signing").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ml.serving import signing
from ml.spec import config

DEV_KEYS = config.PROJECT_ROOT / ".keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml keygen``."""
    parser.add_argument("--private", type=Path, default=DEV_KEYS / "signing.pem",
                        help="where to write the private key (must not exist)")
    parser.add_argument("--public", type=Path, default=DEV_KEYS / "trusted" / "signing.pub",
                        help="where to write the public key (a trusted-keys directory)")


def run(args: argparse.Namespace) -> int:
    """Write the pair and print the new key id."""
    if args.private.exists():
        raise ValueError(f"{args.private} exists: refusing to overwrite a signing key")
    print(f"key {signing.generate_key_pair(args.private, args.public)}: private {args.private}, "
          f"public {args.public}")
    return 0
