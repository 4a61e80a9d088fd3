"""The fast lane: valid ``POST /predict`` requests answered below Flask.

For one applicant, Flask's own work per request (request and app contexts, URL
matching, the before/after hooks, the request and response objects, the context-local
lookups) cost about as much CPU as decoding, validating and scoring the applicant, and
the benchmark's throughput is bounded by CPU (``benchmarks/bench_http.py``). So a small
WSGI middleware in front of the Flask app answers the requests that are plainly fine:
``POST /predict``, ``Content-Type: application/json``, a declared length within
``MAX_CONTENT_LENGTH``, no query string or just ``reasons=true|false``, a model that is
ready, and a body that decodes, validates and scores. It calls the same functions as
the Flask view (:func:`app.services.score_body`, :func:`~app.services.record_prediction`,
:func:`~app.services.response_body`) and writes the same headers, log line, metrics
and stored rows (:mod:`app.logs`, :mod:`app.metrics`, the ``prediction_made`` signal).

Everything else goes to Flask untouched, with the body handed back when it was read:
any problem at all (bad JSON, a wrong field, a 413, an unknown route, a model that is
not ready, even a bug while scoring) is answered by the view and :mod:`app.errors`, the
one place that knows errors. ``tests/test_fastlane.py`` sends the same requests to an
app with and without the lane and compares answers, log lines, metrics and stored rows.
``FAST_LANE=false`` turns it off.
"""
from __future__ import annotations

import io
import logging
import time
from typing import Any, Callable, Iterable

from flask import Flask

from app import logs, metrics, services
from app.errors import UNEXPECTED, APIError, error_body
from app.model import EXTENSION

log = logging.getLogger(__name__)

ENDPOINT, METHOD = "/predict", "POST"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class PredictLane:
    """WSGI middleware: answers valid single or batch predictions, passes the rest on.

    Args:
        app: the Flask app whose model, settings and signal receivers are used.
        fallback: the WSGI app that answers everything else (Flask's ``wsgi_app``).
    """

    def __init__(self, app: Flask, fallback: WSGIApp) -> None:
        self.app, self.fallback = app, fallback

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        """Answer ``environ`` if it is a plainly valid prediction, else let Flask answer."""
        started = time.perf_counter()
        taken = self._take(environ)
        if taken is None:
            return self.fallback(environ, start_response)
        predictor, reasons, length = taken
        config = self.app.config
        body = b""
        try:
            body = environ["wsgi.input"].read(length)
            if len(body) != length:  # the client sent less than it declared
                raise APIError(400, "short body")
            records, results, batch = services.score_body(
                predictor, body, reasons, config["MAX_BATCH"], config["MAX_REASONS"])
        except Exception:  # noqa: BLE001 - Flask answers it (a bad body, a lost client, a bug)
            environ["wsgi.input"] = io.BytesIO(body)
            return self.fallback(environ, start_response)
        request_id = logs.sane_request_id(environ.get("HTTP_X_REQUEST_ID"))
        try:
            fields = services.record_prediction(self.app, request_id, predictor, records,
                                                results, batch, config["LOG_FEATURES"])
            status, data = 200, services.to_json(services.response_body(
                predictor, results, batch, request_id)).encode()
        except Exception:  # noqa: BLE001 - a bug after scoring: a JSON 500, as app.errors does
            log.exception("unhandled error")
            fields, status = {}, 500
            data = services.to_json(error_body(500, UNEXPECTED)).encode()
        elapsed = time.perf_counter() - started
        metrics.observe_request(ENDPOINT, METHOD, status, elapsed)
        logs.log_request(request_id, METHOD, ENDPOINT, status, elapsed * 1000.0,
                         {**logs.common_fields(self.app), **fields})
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if status == 200:  # credit decisions are personal data: no shared cache may keep them
            headers.append(("Cache-Control", "no-store"))
        start_response("200 OK" if status == 200 else "500 INTERNAL SERVER ERROR",
                       headers + logs.response_headers(request_id, elapsed * 1000.0))
        return [data]

    def _take(self, environ: dict[str, Any]) -> tuple[Any, bool, int] | None:
        """``(predictor, reasons, body length)`` when the lane answers this request."""
        if environ.get("PATH_INFO") != ENDPOINT or environ.get("REQUEST_METHOD") != METHOD:
            return None
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        limit = self.app.config.get("MAX_CONTENT_LENGTH")  # None: Flask's "no limit"
        if length <= 0 or (limit is not None and length > limit):
            return None
        query = environ.get("QUERY_STRING", "")
        if not query:
            reasons = True
        elif query.startswith("reasons=") and not any(c in query for c in "&;%+"):
            try:
                reasons = services.parse_reasons({"reasons": query[len("reasons="):]})
            except APIError:
                return None
        else:
            return None
        predictor = self.app.extensions[EXTENSION].predictor
        if predictor is None:
            return None
        return predictor, reasons, length


def init_app(app: Flask) -> None:
    """Put the lane in front of Flask, unless ``FAST_LANE`` is off. Call after the model,
    metrics and store are set up."""
    if app.config.get("FAST_LANE", True):
        app.wsgi_app = PredictLane(app, app.wsgi_app)  # type: ignore[method-assign]
