"""Abuse guards: per-client rate limits, bounded chunked bodies, security headers.

Rate limits apply per identity (the principal, or the remote address when
authentication is off) to ``POST /predict`` and the form's POST (``RATELIMIT_PREDICT``)
and to ``POST /feedback`` (``RATELIMIT_FEEDBACK``), each route counted on its own, with
the fixed-window limiter of ``limits`` (the library under Flask-Limiter; its extension
cost ~150 µs per request, about 40 % of a prediction, see docs/design.md). Counters
live in ``RATELIMIT_STORAGE_URI``: ``memory://`` counts per worker process (so the
effective limit is the setting times the workers), ``redis://...`` shares them across
workers and pods. A client over its limit gets 429 in the one error shape, with
``Retry-After``; other clients are not affected. If the counters' store fails, requests
go on (counted in the log): an outage of Redis must not stop scoring.

A chunked body (no ``Content-Length``) is read up to ``MAX_CONTENT_LENGTH`` + 1 bytes
before the view runs: over the limit it gets 413, as a declared one does, instead of
being cut at the limit (werkzeug's behaviour) and failing as invalid JSON.

Every HTML page gets a Content-Security-Policy without inline scripts (Swagger UI's one
inline script carries a per-response nonce), ``frame-ancestors 'none'``,
``X-Frame-Options``, ``Referrer-Policy``; every response gets ``nosniff``, and JSON is
never stored by a cache. These few headers are set here rather than by Flask-Talisman,
which would also redirect to HTTPS (TLS ends at the Route) and build a CSP nonce for
every JSON answer.
"""
from __future__ import annotations

import io
import logging
import math
import secrets
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from limits import parse_many, storage, strategies
from limits.storage import MemoryStorage
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import APIError

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'{styles}; "
       "script-src 'self'{nonce}; form-action 'self'{forms}; frame-ancestors 'none'; "
       "base-uri 'none'; object-src 'none'")
EXTENSION = "rate_limiter"
LIMITED = {"api.predict": "RATELIMIT_PREDICT", "web.submit": "RATELIMIT_PREDICT",
           "monitoring.feedback": "RATELIMIT_FEEDBACK"}


def client_key() -> str:
    """Whose counter a request counts on: the caller's principal, else its address."""
    identity = g.get("identity")
    if identity is not None and identity.kind != "none":
        return identity.principal
    return "addr:" + (request.remote_addr or "unknown")


def csp_nonce() -> str:
    """This response's script nonce (templates: ``<script nonce="{{ csp_nonce() }}">``)."""
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype == "text/html":
        nonce = g.get("csp_nonce")
        # Swagger UI styles itself inline; scripts stay nonce-only.
        headers["Content-Security-Policy"] = CSP.format(
            styles=" 'unsafe-inline'" if nonce else "",
            nonce=f" 'nonce-{nonce}'" if nonce else "",
            forms=current_app.config.get("CSP_FORM_ACTION_EXTRA", ""))  # app.sso: the SSO
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
    elif response.mimetype == "application/json" and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
    return response


def _bound_chunked_body() -> None:
    """Read a body without Content-Length up to the limit; 413 past it."""
    req = request._get_current_object()  # one context lookup, not one per use
    environ = req.environ
    if (req.content_length is not None or not environ.get("wsgi.input_terminated")
            or req.method in ("GET", "HEAD")):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


class SweptMemoryStorage(MemoryStorage):
    """``limits``' in-process counters, with expired counters swept inside the counting
    call (at most every :attr:`SWEEP_SECONDS`) instead of on a timer thread.

    The library's ``memory://`` storage starts a new ``threading.Timer`` 10 ms after the
    last one ended, so a busy worker creates about a hundred threads a second, and each
    start waits, in a request, for the new thread to take the GIL. The counting is the
    library's own (a counter is checked against its expiry whenever it is read); only
    the freeing of memory held by expired counters moves into the request. If a future
    ``limits`` renames the hook, :func:`counter_storage` falls back to the plain storage.
    """

    SWEEP_SECONDS = 1.0

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        super().__init__(uri, **options)
        self._swept = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the library's hook
        now = time.monotonic()
        if now - self._swept >= self.SWEEP_SECONDS:
            self._swept = now
            try:
                self._MemoryStorage__expire_events()
            except KeyError:  # pragma: no cover - a race: another thread's read dropped
                pass  # the same expired counter mid-sweep; the next sweep goes on


def counter_storage(uri: str) -> storage.Storage:
    """The counters' storage for ``uri``: :class:`SweptMemoryStorage` for ``memory://``
    (when this ``limits`` has the hooks it overrides), else the library's own choice."""
    if uri.split("://", 1)[0] == "memory" and all(
            callable(getattr(MemoryStorage, name, None))
            for name in ("_MemoryStorage__schedule_expiry", "_MemoryStorage__expire_events")):
        return SweptMemoryStorage(uri)
    return storage.storage_from_string(uri)


class RateLimits:
    """Per-client, per-route fixed-window limits.

    Args:
        uri: the counters' storage (``memory://``, ``redis://host:6379``, ...).
        limits: endpoint -> limit text (``100/second``, ``10/second;1000/hour``).
    """

    def __init__(self, uri: str, limits: dict[str, str]) -> None:
        self.limiter = strategies.FixedWindowRateLimiter(counter_storage(uri))
        self.limits = {endpoint: parse_many(text) for endpoint, text in limits.items()}

    def check(self) -> None:
        """Count this request; 429 with ``Retry-After`` when its client is over a limit."""
        endpoint = request.endpoint
        items = self.limits.get(endpoint or "")
        if not items:
            return
        key = client_key()
        for item in items:
            try:
                if self.limiter.hit(item, endpoint, key):
                    continue
                reset = self.limiter.get_window_stats(item, endpoint, key).reset_time
            except Exception as exc:  # the counters' store is down: serve, and say so
                log.warning("rate limit not checked", extra={"reason": type(exc).__name__})
                return
            wait = max(1, math.ceil(reset - time.time()))
            raise APIError(429, f"Too many requests from this client; retry after {wait} s.",
                           headers={"Retry-After": str(wait)})


def init_app(app: Flask) -> None:
    """Bound chunked bodies, limit the scoring and feedback routes, add the headers.

    Call after the routes are registered and after :func:`app.auth.init_app` (limits
    are keyed on the identity the edge check finds).
    """
    limits = RateLimits(app.config["RATELIMIT_STORAGE_URI"],
                        {endpoint: app.config[setting] for endpoint, setting in LIMITED.items()})
    app.extensions[EXTENSION] = limits
    app.before_request(limits.check)
    app.before_request(_bound_chunked_body)  # after the limit: a limited client sends nothing
    app.after_request(_security_headers)
    app.jinja_env.globals["csp_nonce"] = csp_nonce
