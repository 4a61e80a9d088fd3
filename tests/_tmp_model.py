"""TEMPORARY: a trained artifact until the lead's ``trained_model_dir`` fixture lands in
tests/conftest.py. Delete this file (and its imports in tests/test_*.py) when it does."""
from __future__ import annotations

import pytest

from ml.train import TrainOptions, train


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    train(TrainOptions(out=out, families=("logistic_regression",), cv_repeats=1, n_jobs=1,
                       plots=False))
    return out
