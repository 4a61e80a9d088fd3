"""The prediction store in the API: every /predict result is handed to :mod:`ml.monitoring.store`.

:mod:`ml.monitoring.store` holds the table, the write-behind queue and the reads (the batch jobs
use it too); this module only connects it to the app: the store named by
``DATABASE_URL`` in ``app.extensions``, the ``prediction_made`` receiver that queues
(or writes) the rows and marks the request's log line, and the ``/ready`` report.
"""
from __future__ import annotations

import logging
from typing import Any

from ml.monitoring.store import (DROPPED_ROWS, STORE_ERRORS, PredictionStore, StoreUnavailable,
                                 default_url)

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
    """``prediction_made`` receiver: queue (or, in ``sync`` mode, write) the rows, with the
    server-issued ``prediction_id`` and the caller's identity (``client``); returns what
    became of them, for the request's log line. A failure never fails the request."""
    store: PredictionStore = app.extensions[EXTENSION]
    if store.write == "async":
        try:
            queued = store.enqueue(request_id, records, results, model_name, model_version,
                                   batch, prediction_id=prediction_id, client=client)
        except StoreUnavailable as exc:
            STORE_ERRORS.labels("write").inc()
            DROPPED_ROWS.labels("unavailable").inc(len(records))
            return {"stored": "dropped", "store_error": str(exc)}
        if queued:
            return {"stored": "queued"}
        return {"stored": "dropped", "store_error": "the store's write queue is full"}
    try:
        store.save(request_id, records, results, model_name, model_version, batch,
                   prediction_id=prediction_id, client=client)
    except StoreUnavailable as exc:
        STORE_ERRORS.labels("write").inc()
        log.warning("prediction not stored", extra={"reason": str(exc),
                                                    "backend": store.backend})
        return {"stored": False}
    return {"stored": True}


def readiness() -> str:
    """The store's state for ``GET /ready``: it informs, it never fails readiness."""
    return get_store().status()


def init_app(app: Any) -> None:
    """Open (lazily) the store named by ``DATABASE_URL`` and save every prediction
    (``STORE_WRITE``: write-behind by default)."""
    from app import services

    config = app.config
    store = PredictionStore(config.get("DATABASE_URL") or default_url(),
                            float(config.get("STORE_RETRY_SECONDS", 5)),
                            write=config.get("STORE_WRITE", "async"),
                            flush_seconds=float(config.get("STORE_FLUSH_SECONDS", 0.2)),
                            queue_rows=int(config.get("STORE_QUEUE_ROWS", 10_000)))
    app.extensions[EXTENSION] = store
    app.extensions.setdefault("readiness", {})["store"] = readiness
    services.prediction_made.connect(save_predictions, app, weak=False)
