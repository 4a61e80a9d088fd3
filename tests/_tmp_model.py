"""TEMPORARY: a trained artifact and a Predictor shim until ml/predictor.py and the
lead's ``trained_model_dir`` fixture land. Delete when they do."""
from __future__ import annotations

import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ml.artifact import ArtifactError, library_versions, load_artifact, save_artifact
from ml.config import DEFAULT_DATA, DEFAULT_SPEC
from ml.data import load_dataset
from ml.pipeline import build_pipeline
from ml.schema import DatasetSpec

GRADES = [{"grade": "A", "max_pd": 0.1, "label": "very low"},
          {"grade": "B", "max_pd": 0.2, "label": "low"},
          {"grade": "C", "max_pd": 0.3, "label": "moderate"},
          {"grade": "D", "max_pd": 0.45, "label": "elevated"},
          {"grade": "E", "max_pd": 0.6, "label": "high"},
          {"grade": "F", "max_pd": 1.0, "label": "very high"}]


class Predictor:
    def __init__(self, artifact):
        self.artifact = artifact
        self.model = artifact.model
        self.card = artifact.card
        self.spec = artifact.spec
        self.name = artifact.name
        self.version = artifact.version
        self.threshold = artifact.threshold
        self.grades = self.card["grades"]
        self._names = self.spec.feature_names

    @classmethod
    def load(cls, path):
        return cls(load_artifact(path))

    def _pd(self, records):
        frame = pd.DataFrame([[r[n] for n in self._names] for r in records], columns=self._names)
        return self.model.predict_proba(frame)[:, 1]

    def predict(self, records, reasons=True):
        out = []
        for r, p in zip(records, self._pd(records)):
            p = float(p)
            grade = next(g["grade"] for g in self.grades if p <= g["max_pd"])
            res = {"probability_of_default": round(p, 6),
                   "decision": "decline" if p >= self.threshold else "approve",
                   "risk_grade": grade}
            if reasons:
                f = self.spec.features[0]
                res["reasons"] = [{"feature": f.name, "label": f.label, "value": r[f.name],
                                   "impact": 0.1, "text": f"{f.label} raises the risk"}]
            out.append(res)
        return out

    def self_test(self):
        got = self.predict([self.card["example"]], reasons=False)[0]["probability_of_default"]
        if abs(got - self.card["self_test"]["probability_of_default"]) > 1e-6:
            raise ArtifactError("self-test PD not reproduced")


def install_shim():
    try:
        import ml.predictor  # noqa: F401
    except ImportError:
        mod = types.ModuleType("ml.predictor")
        mod.Predictor = Predictor
        sys.modules["ml.predictor"] = mod


def train_tmp_model(root: Path) -> Path:
    spec = DatasetSpec.load(DEFAULT_SPEC)
    data = load_dataset(DEFAULT_DATA, spec)
    pipe = build_pipeline(spec, "logistic_regression", 42, {"model__C": 0.3})
    pipe.fit(data.X[spec.feature_names], data.y)
    example = {f.name: (v.item() if hasattr(v, "item") else v)
               for f, v in zip(spec.features, data.X[spec.feature_names].iloc[0])}
    for f in spec.numeric:
        if f.integer:
            example[f.name] = int(example[f.name])
    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-tmp"
    card = {"name": spec.name, "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(), "threshold": 1 / 6,
            "grades": GRADES, "metrics": {"test": {"roc_auc": 0.78}},
            "spec": spec.to_dict(), "example": example, "libraries": library_versions(),
            "model": {"family": "logistic_regression", "params": {"model__C": 0.3},
                      "calibration": None}}
    p = float(pipe.predict_proba(pd.DataFrame([example])[spec.feature_names])[0, 1])
    card["self_test"] = {"record": example, "probability_of_default": round(p, 6)}
    save_artifact(pipe, card, root)
    return root


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
    install_shim()
    return train_tmp_model(tmp_path_factory.mktemp("models"))
