"""Prometheus metrics: requests, latency, decisions, PDs, and which model is served.

Under gunicorn each worker is its own process, so the metrics use prometheus_client's
multiprocess mode: ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
anything imports prometheus_client, every process writes its samples there, and a
scrape of any worker sums them all. Without that variable (tests, ``flask run``) the
default in-process registry is used.

The metric objects are module-level on purpose: prometheus_client registers each name
once per process, however many apps a test session builds.

The monitoring gauges (drift, decision mix, live outcome metrics, the card's reference
figures, the report's time) are not set by anyone: :class:`ReportCollector` reads the
newest report the monitor job saved in the store when Prometheus scrapes, so they move
without anyone calling ``GET /monitoring``. Each worker keeps what it read for
``MONITORING_CACHE_SECONDS`` and waits at most ``MONITORING_METRICS_DEADLINE_SECONDS`` for
the store; a dead database costs one scrape per TTL that deadline, and the cached gauges
keep being served with their age.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter as Tally
from typing import Any, Iterator

import numpy as np

from flask import Flask, Response, current_app
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import GaugeMetricFamily, Metric

from app import logs
from app.model import EXTENSION
from ml.monitoring.reports import newest_report
from ml.monitoring.store import STORE_ERRORS, PredictionStore, StoreUnavailable

log = logging.getLogger(__name__)
REPORT_EXTENSION = "monitoring_report_gauges"
# The outcome metrics exported live (from the report) and as the card's reference.
OUTCOME_METRICS = ("roc_auc", "ks", "brier", "bad_rate_among_approved", "expected_cost")

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


class ReportCollector:
    """The gauges of the newest stored monitoring report, read at scrape time.

    Args:
        store: the prediction store holding the reports.
        card: the served model's card (its name selects the reports; its test metrics are
            the reference figures); None without a model (nothing is exported).
        ttl: seconds a read report is reused before the store is asked again.
        deadline: longest wait of a scrape for the store.
    """

    def __init__(self, store: PredictionStore, card: dict[str, Any] | None, ttl: float,
                 deadline: float) -> None:
        self.store, self.card, self.ttl, self.deadline = store, card, ttl, deadline
        self._stored: dict[str, Any] | None = None
        self._read_at: float | None = None  # monotonic time of the last successful read
        self._tried_at: float | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the newest report if the cached one is older than the TTL. One thread
        reads at a time; the others serve the cache meanwhile. A failed read keeps the
        cache (and is retried after the TTL, so a dead store costs one deadline per TTL)."""
        now = time.monotonic()
        if self._tried_at is not None and now - self._tried_at < self.ttl:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._tried_at = now
            self._stored = newest_report(self.store, self.card["name"], self.deadline)
            self._read_at = time.monotonic()
        except StoreUnavailable as exc:
            STORE_ERRORS.labels("metrics").inc()
            log.warning("monitoring report not read; serving the cached gauges",
                        extra={"reason": str(exc)})
        finally:
            self._lock.release()

    def collect(self) -> Iterator[Metric]:
        """The report's gauges (the prometheus_client collector protocol)."""
        if self.card is None:
            return
        self.refresh()
        reference = GaugeMetricFamily(
            "credit_api_reference_metric", "The served model card's figure on its test set, "
            "to compare with credit_api_outcome_metric.", labels=["metric"])
        test = (self.card.get("metrics") or {}).get("test") or {}
        for name in OUTCOME_METRICS:
            if isinstance(test.get(name), (int, float)):
                reference.add_metric([name], float(test[name]))
        yield reference
        age = GaugeMetricFamily(
            "credit_api_monitoring_cache_age_seconds", "Seconds since this process last read "
            "the newest monitoring report from the store (grows while the store fails).")
        if self._read_at is not None:
            age.add_metric([], time.monotonic() - self._read_at)
        yield age
        yield from report_families(self._stored)

    def describe(self) -> list[Metric]:
        """Nothing: describing would make a registry call :meth:`collect` (a read)."""
        return []


def report_families(stored: dict[str, Any] | None) -> Iterator[Metric]:
    """Gauge families of a stored report (``ml.monitoring.reports.newest_report``); every
    family is yielded, empty when the report lacks its figures (the minimum window)."""
    def family(name: str, text: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=list(labels))

    stamp = family("credit_api_monitoring_report_timestamp_seconds", "When the newest "
                   "monitoring report was written (Unix time).", ("model", "version"))
    rows = family("credit_api_monitoring_rows", "Predictions in the newest report's window.")
    labelled = family("credit_api_monitoring_labelled", "Predictions with a fed-back outcome "
                      "in the newest report's window.")
    score = family("credit_api_score_psi", "PSI of the predicted PD against the training "
                   "reference, in the newest monitoring report.")
    psi = family("credit_api_psi", "PSI (CSI) of a feature against the training reference, "
                 "in the newest monitoring report.", ("feature",))
    shares = family("credit_api_decision_share", "Share of each decision in the newest "
                    "monitoring report's window.", ("decision",))
    outcome = family("credit_api_outcome_metric", "Performance on the labelled outcomes of "
                     "the newest monitoring report's window.", ("metric",))
    if stored is not None:
        report = stored["report"]
        stamp.add_metric([stored["model_name"], stored["model_version"]],
                         stored["created_at"].timestamp())
        rows.add_metric([], stored["rows"])
        labelled.add_metric([], stored["labelled"])
        if report.get("drift"):
            score.add_metric([], report["drift"]["score"]["psi"])
            for name, entry in report["drift"]["features"].items():
                psi.add_metric([name], entry["psi"])
        for decision, entry in (report.get("decisions") or {}).items():
            shares.add_metric([decision], entry["share"])
        metrics = (report.get("outcomes") or {}).get("metrics") or {}
        for name in OUTCOME_METRICS:
            if isinstance(metrics.get(name), (int, float)):
                outcome.add_metric([name], float(metrics[name]))
    yield from (stamp, rows, labelled, score, psi, shares, outcome)


class _Exposed:
    """What one scrape exports: the shared samples plus the report's gauges."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition() -> Response:
    """The metrics page, summed over all gunicorn workers when there are several, with the
    newest monitoring report's gauges (read by this worker)."""
    shared = multiprocess.MultiProcessCollector(None) if multiprocess_mode() else REGISTRY
    report = current_app.extensions.get(REPORT_EXTENSION)
    exposed = _Exposed(shared, *([report] if report is not None else []))
    return Response(generate_latest(exposed), mimetype=None,  # type: ignore[arg-type]
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
