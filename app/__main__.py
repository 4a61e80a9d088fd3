"""``python -m app keys create|list|revoke``: manage the API keys of ``API_KEYS_FILE``.

``create`` prints the new key alone on stdout (so ``KEY=$(python -m app keys create ...)``
works) and only once: the file keeps its SHA-256 hash, never the key.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from app.auth import SCOPES
from app.auth_keys import create_key, list_keys, revoke_key


def parser() -> argparse.ArgumentParser:
    """The command line: ``keys create --name N --scopes S...``, ``keys list``,
    ``keys revoke NAME``; ``--file`` defaults to ``$API_KEYS_FILE``."""
    main = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    commands = main.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="manage API keys")
    keys.add_argument("--file", default=os.environ.get("API_KEYS_FILE"),
                      help="the key file (default: $API_KEYS_FILE)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints it, once")
    create.add_argument("--name", required=True, help="the client's name (its identity)")
    create.add_argument("--scopes", nargs="+", required=True, metavar="SCOPE",
                        choices=[*SCOPES, "all"], help=f"among {', '.join(SCOPES)}; or all")
    actions.add_parser("list", help="list the keys' names and scopes (JSON lines)")
    revoke = actions.add_parser("revoke", help="remove a client's key")
    revoke.add_argument("name")
    return main


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 1 with a one-line reason on stderr otherwise."""
    args = parser().parse_args(argv)
    if not args.file:
        print("error: no key file: set API_KEYS_FILE or pass --file", file=sys.stderr)
        return 1
    try:
        if args.action == "create":
            scopes = SCOPES if "all" in args.scopes else args.scopes
            print(create_key(args.file, args.name, scopes))
        elif args.action == "list":
            for entry in list_keys(args.file):
                print(json.dumps(entry))
        elif not revoke_key(args.file, args.name):
            print(f"error: no key named {args.name!r}", file=sys.stderr)
            return 1
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
