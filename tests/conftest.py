"""Shared fixtures: the shipped spec and data, and real trained artifacts.

Artifacts are trained once per session by the real trainer, into temporary folders.
"""
from __future__ import annotations

import os

import pytest

from ml import config
from ml.data import load_dataset
from ml.schema import DatasetSpec
from ml.train import TrainOptions, train


@pytest.fixture(scope="session", autouse=True)
def private_prediction_store(tmp_path_factory):
    """Point the default prediction store at a session temp file, not the shared /tmp one."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store')}/predictions.db"
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    yield url
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous


@pytest.fixture(scope="session")
def spec() -> DatasetSpec:
    """The German Credit spec shipped in data/."""
    return DatasetSpec.load(config.DEFAULT_SPEC)


@pytest.fixture(scope="session")
def dataset(spec):
    """The shipped German Credit data, validated."""
    return load_dataset(config.DEFAULT_DATA, spec)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
    """A models dir (with LATEST) holding a quick real artifact: logistic regression only."""
    out = tmp_path_factory.mktemp("models")
    train(TrainOptions(out=out, families=("logistic_regression",), cv_repeats=1, n_jobs=1,
                       plots=False))
    return out


@pytest.fixture(scope="session")
def full_training(tmp_path_factory):
    """The default training run, all families and 5x5 CV: (artifact dir, card)."""
    return train(TrainOptions(out=tmp_path_factory.mktemp("full")))
