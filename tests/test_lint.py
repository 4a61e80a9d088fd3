"""The code base stays flake8-clean (settings in setup.cfg), so CI catches style drift."""
from __future__ import annotations

import subprocess
import sys

from ml.spec.config import PROJECT_ROOT


def test_flake8_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "flake8", "ml", "app", "tests", "benchmarks"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
