"""Prometheus metrics: requests, latency, decisions, PDs, and which model is served.

Under gunicorn each worker is its own process, so the metrics use prometheus_client's
multiprocess mode: ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
anything imports prometheus_client, every process writes its samples there, and a
scrape of any worker sums them all. Without that variable (tests, ``flask run``) the
default in-process registry is used.

The metric objects are module-level on purpose: prometheus_client registers each name
once per process, however many apps a test session builds.
"""
from __future__ import annotations

import os
from collections import Counter as Tally
from typing import Any

import numpy as np

from flask import Flask, Response
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest, multiprocess)

from app import logs
from app.model import EXTENSION

REQUESTS = Counter("credit_api_requests", "HTTP requests by route, method and status.",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("credit_api_request_duration_seconds",
                    "Time to answer a request, by route, in seconds.", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                             2.5, 5.0))
DECISIONS = Counter("credit_api_decisions", "Credit decisions made, by decision.",
                    ["decision"])
PD = Histogram("credit_api_probability_of_default", "Predicted probabilities of default.",
               buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
MODEL_INFO = Gauge("credit_api_model_info", "The model being served (value 1).",
                   ["name", "version"], multiprocess_mode="livemax")
MODEL_READY = Gauge("credit_api_model_ready",
                    "1 when the model loaded and passed its self-test, else 0.",
                    multiprocess_mode="livemax")


# Labelled children by label values: ``labels()`` builds and checks its key on every call.
# A child keeps working across fork (prometheus_client re-opens its file in the child).
_REQUEST_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_DECISION_CHILDREN: dict[str, Any] = {}


def _decisions(decision: str) -> Any:
    child = _DECISION_CHILDREN.get(decision)
    if child is None:
        child = _DECISION_CHILDREN[decision] = DECISIONS.labels(decision)
    return child


def multiprocess_mode() -> bool:
    """Whether samples are shared through ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def observe_predictions(results: list[dict[str, Any]]) -> None:
    """Count the decisions and record the PDs of one request's results.

    One increment per decision and per PD bucket, not per applicant, so a large batch
    costs about as much as a small one.
    """
    if len(results) == 1:
        _decisions(results[0]["decision"]).inc()
        PD.observe(results[0]["probability_of_default"])
        return
    for decision, count in Tally(r["decision"] for r in results).items():
        _decisions(decision).inc(count)
    observe_many(PD, [r["probability_of_default"] for r in results])


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, as one increment per bucket.

    prometheus_client has no bulk observe; this fills the same per-bucket values that
    :meth:`Histogram.observe` does (the first bucket whose upper bound is at least the
    value, and the sum), which a test checks against ``observe`` itself.
    """
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist()):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(sum(values)))


def exposition() -> Response:
    """The metrics page, summed over all gunicorn workers when there are several."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=None,
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and record its latency."""
    key = (endpoint, method, status)
    children = _REQUEST_CHILDREN.get(key)
    if children is None:  # bounded: routes x methods x statuses
        children = _REQUEST_CHILDREN[key] = (REQUESTS.labels(endpoint, method, str(status)),
                                             LATENCY.labels(endpoint))
    children[0].inc()
    children[1].observe(seconds)


def init_app(app: Flask) -> None:
    """Publish which model is served, count every request, and serve ``GET /metrics``.

    Call after :func:`app.model.init_app`.
    """
    predictor = app.extensions[EXTENSION].predictor
    MODEL_READY.set(1 if predictor else 0)
    if predictor:
        MODEL_INFO.labels(predictor.name, predictor.version).set(1)
    logs.on_request_end(app, observe_request)  # measured once, with the log line
    app.add_url_rule("/metrics", "metrics", exposition, methods=["GET"])
