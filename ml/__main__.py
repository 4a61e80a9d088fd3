"""Command line: ``python -m ml <command>``; each command lives in its stage's module.

Modules are imported only for the command that runs, so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Failures a user can fix, said in one line: (module, exception class). Looked up only if
# the command imported that module (none of them can be raised otherwise), so that the
# monitor job does not load the training stage (and pandas) just to name its error.
USER_ERRORS = (("ml.training.data", "DataError"), ("ml.spec.schema", "SpecError"),
               ("ml.serving.errors", "ArtifactError"))
# (ml.training.promote.PromotionError is a ValueError: a refused proposal exits 2.)

COMMANDS = {
    "spec": ("ml.training.draft", "draft a dataset spec for a new CSV, to review"),
    "train": ("ml.training.train", "train, evaluate and write a model artifact"),
    "score": ("ml.batch.score", "score a portfolio CSV with a model artifact"),
    "card": ("ml.training.report", "write the model card (Markdown and plots) for the docs"),
    "db": ("ml.monitoring.migrate", "apply the prediction store's schema migrations"),
    "monitor": ("ml.monitoring.monitor", "drift and outcome report of the prediction store"),
    "retrain": ("ml.training.retrain",
                "train a challenger with fed-back outcomes; propose it if better"),
    "proposal": ("ml.monitoring.proposals", "print a stored promotion proposal (newest or by id)"),
    "promote": ("ml.training.promote",
                "apply a reviewed promotion proposal: verify the challenger, move LATEST"),
    "resign": ("ml.training.publish",
               "a new signed version of an artifact with a new threshold or grade table"),
    "keygen": ("ml.training.keygen", "generate an Ed25519 key pair for signing artifacts"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run one command, turn known failures into exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # The jobs that read the prediction store (monitor, retrain) meet database errors
        # (ml.monitoring.store.StoreUnavailable or raw SQLAlchemy ones); say so in one line instead
        # of a traceback, without importing either module for the other commands.
        if not type(exc).__module__.startswith(("sqlalchemy", "ml.monitoring.store")):
            raise
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        print(f"error: the prediction store is unavailable: {cause}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes of USER_ERRORS that the command loaded, plus the built-in ones."""
    loaded = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS
                   if module in sys.modules)
    return loaded + (ValueError, FileNotFoundError)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in tests
    sys.exit(main())
