"""The model resource: loaded once, signature-checked and self-tested when the app is created.

The artifact must be signed by a key in ``MODEL_TRUSTED_KEYS`` (or the app setting of
that name), checked before anything of it is read (:mod:`ml.serving.signing`).

The loaded :class:`ml.serving.predictor.Predictor` lives in ``app.extensions["credit_model"]``
(with gunicorn's ``preload_app`` the workers share the master's copy). When loading or
the self-test fails, the app still starts: liveness stays green, readiness and
predictions answer 503 with the reason, so the platform does not crash-loop the pod
and the reason is visible in ``/ready`` and in the logs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from app import logs
from app.errors import APIError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ml.serving.predictor import Predictor

EXTENSION = "credit_model"

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    """The predictor when it is ready to serve, else ``None`` and why not."""

    predictor: "Predictor | None" = None
    error: str = "model not loaded yet"
    load_seconds: float = 0.0

    @property
    def ready(self) -> bool:
        """Whether the model loaded and passed its self-test."""
        return self.predictor is not None


def load_model(model_dir: str, trusted_keys: str | None = None) -> ModelState:
    """Load the artifact at ``model_dir`` and run its self-test; never raises.

    Any failure (missing artifact, no or a wrong signature, an untrusted key, a file
    that differs from the signed manifest, wrong library versions, a self-test that does
    not reproduce the card's PD) is caught and kept as the state's ``error``, one line:
    the server must stay up to report it.
    """
    started = time.perf_counter()
    try:
        from ml.serving.predictor import Predictor

        predictor = Predictor.load(model_dir, trusted=trusted_keys or None)
        predictor.self_test()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its reason
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.error("model not loaded", extra={"model_dir": str(model_dir), "reason": reason})
        return ModelState(error=reason, load_seconds=time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    log.info("model loaded", extra={"model_dir": str(model_dir), "model_name": predictor.name,
                                    "model_version": predictor.version,
                                    "signer_key_id": predictor.signer,
                                    "load_seconds": round(elapsed, 3)})
    return ModelState(predictor=predictor, error="", load_seconds=elapsed)


def get_state() -> ModelState:
    """The current app's model state."""
    return current_app.extensions[EXTENSION]


def get_predictor() -> "Predictor":
    """The current app's predictor; raises a 503 :class:`APIError` when there is none."""
    state: ModelState = current_app.extensions[EXTENSION]
    if state.predictor is None:
        raise APIError(503, "The model is not loaded; see GET /ready for the reason.")
    return state.predictor


def init_app(app: Flask) -> None:
    """Load the model named by ``MODEL_DIR`` into ``app.extensions``, trusting the keys of
    ``MODEL_TRUSTED_KEYS`` (an app setting, else the environment variable)."""
    state = load_model(app.config["MODEL_DIR"], app.config.get("MODEL_TRUSTED_KEYS"))
    app.extensions[EXTENSION] = state
    logs.set_common_fields(app, model_version=state.predictor.version if state.ready else None)
