"""The prediction store in the API: every /predict result is handed to :mod:`ml.monitoring.store`.

:mod:`ml.monitoring.store` holds the tables, the spool and the reads (the batch jobs use it
too); this module only connects it to the app: the store named by ``DATABASE_URL`` in
``app.extensions``, the ``prediction_made`` receiver that spools (or writes) the rows and
marks the request's log line, and the ``/ready`` report.
"""
from __future__ import annotations

import logging
from typing import Any

from ml.monitoring.store import PredictionStore, StoreUnavailable, default_url

log = logging.getLogger(__name__)

EXTENSION = "prediction_store"


def get_store() -> PredictionStore:
    """The current app's store."""
    from flask import current_app

    return current_app.extensions[EXTENSION]


def save_predictions(app: Any, request_id: str, records: list[dict[str, Any]],
                     results: list[dict[str, Any]], model_name: str, model_version: str,
                     batch: bool, prediction_id: str | None = None, client: str | None = None,
                     **_: Any) -> dict[str, Any]:
    """``prediction_made`` receiver: spool the rows before the answer (or, in ``sync``
    mode, insert them, and spool them if that fails), with the server-issued
    ``prediction_id`` and the caller's identity (``client``); returns what became of them
    for the request's log line: ``stored: "spooled" | true | "dropped"``. A failure never
    fails the request."""
    store: PredictionStore = app.extensions[EXTENSION]
    args = (request_id, records, results, model_name, model_version, batch)
    ids = {"prediction_id": prediction_id, "client": client}
    # Sync inserts wait while older rows are spooled: the store keeps the answer order.
    if store.write == "sync" and store.backlog() == 0:
        try:
            store.save(*args, **ids)
            return {"stored": True}
        except StoreUnavailable as exc:  # counted by the store
            log.warning("prediction not stored at once; spooled", extra={
                "reason": str(exc), "backend": store.backend})
    if store.enqueue(*args, **ids):
        return {"stored": "spooled"}
    return {"stored": "dropped", "store_error": "the prediction spool refused the rows"}


def readiness() -> str:
    """The store's state for ``GET /ready`` (``ok`` or ``degraded``): it informs, it never
    fails readiness, since predictions are answered (and spooled) during an outage."""
    return get_store().status()


def init_app(app: Any) -> None:
    """Open (lazily) the store named by ``DATABASE_URL`` and save every prediction
    (``STORE_WRITE``: spooled by default)."""
    from app import services

    config = app.config
    store = PredictionStore(config.get("DATABASE_URL") or default_url(),
                            float(config.get("STORE_RETRY_SECONDS", 5)),
                            write=config.get("STORE_WRITE", "async"),
                            flush_seconds=float(config.get("STORE_FLUSH_SECONDS", 0.2)),
                            spool_dir=config.get("STORE_SPOOL_DIR") or None,
                            fsync=bool(config.get("STORE_SPOOL_FSYNC", False)),
                            deadline_seconds=float(config.get("STORE_DEADLINE_SECONDS", 5)))
    store.prepare()  # SQLite only: its schema upgraded once, here, before workers fork
    app.extensions[EXTENSION] = store
    app.extensions.setdefault("readiness", {})["store"] = readiness
    services.prediction_made.connect(save_predictions, app, weak=False)
