"""Project paths and defaults, all derived from one root (no work at import time)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"
MODELS_DIR = PROJECT_ROOT / "models"
REPORTS_DIR = PROJECT_ROOT / "reports"

DEFAULT_DATA = DATA_DIR / "german_credit.csv"
DEFAULT_SPEC = DATA_DIR / "german_credit.spec.yaml"
DEFAULT_SEED = 42


def models_dir() -> Path:
    """Where artifacts live: ``MODEL_DIR`` from the environment, else ``models/``."""
    return Path(os.environ.get("MODEL_DIR", MODELS_DIR))
