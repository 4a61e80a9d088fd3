"""Run every benchmark against the latest trained model and print their figures.

``make bench`` calls this. Each benchmark measures its own baseline in the same run
(the machines are shared and noisy), so read the ratios, not the absolute numbers.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ml.spec.config import models_dir

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Train the default model if none exists, then run the three benchmarks in turn."""
    models = models_dir()
    if not (models / "LATEST").is_file():
        subprocess.run([sys.executable, "-m", "ml", "train"], check=True)
    runs = [
        ["bench_fastpath.py", "--model", str(models)],
        ["bench_score.py", "--model", str(models)],
        ["bench_http.py", "--model-dir", str(models)],
    ]
    failed = 0
    for script, *args in runs:
        print(f"\n=== {script} ===", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / script), *args]).returncode
    return failed


if __name__ == "__main__":
    sys.exit(main())
