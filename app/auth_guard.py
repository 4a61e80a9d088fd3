"""Abuse guards: per-client rate limits, bounded chunked bodies, security headers.

Rate limits (Flask-Limiter) apply per identity (the principal, or the remote address
when authentication is off) to ``POST /predict`` and the form's POST
(``RATELIMIT_PREDICT``) and to ``POST /feedback`` (``RATELIMIT_FEEDBACK``). Counters
live in ``RATELIMIT_STORAGE_URI``: ``memory://`` counts per worker process (so the
effective limit is the setting times the workers), ``redis://...`` shares them across
workers and pods. A client over its limit gets 429 in the one error shape, with
``Retry-After``; other clients are not affected.

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
import secrets
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import error_response

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
    environ = request.environ
    if (request.content_length is not None or not environ.get("wsgi.input_terminated")
            or request.method in ("GET", "HEAD")):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def _too_many(exc: RateLimitExceeded) -> Response:
    """429 in the one error shape, with the seconds until the window frees a request."""
    limiter: Limiter = current_app.extensions[EXTENSION]
    current = limiter.current_limit
    wait = max(1, int(current.reset_at - time.time())) if current else 1
    response = error_response(429, "Too many requests from this client; retry after "
                                   f"{wait} s.")
    response.headers["Retry-After"] = str(wait)
    return response


def init_app(app: Flask) -> None:
    """Bound chunked bodies, limit the scoring and feedback routes, add the headers.

    Call after the routes are registered and after :func:`app.auth.init_app` (limits
    are keyed on the identity the edge check finds).
    """
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", False)
    limiter = Limiter(client_key, app=app, storage_uri=app.config["RATELIMIT_STORAGE_URI"],
                      strategy="fixed-window")
    app.extensions[EXTENSION] = limiter
    app.before_request(_bound_chunked_body)  # after the limit: a limited client sends nothing
    app.after_request(_security_headers)
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    for endpoint, setting in LIMITED.items():
        view = app.view_functions.get(endpoint)
        if view is not None:
            limit = app.config[setting]
            app.view_functions[endpoint] = limiter.limit(lambda limit=limit: limit)(view)
    app.register_error_handler(RateLimitExceeded, _too_many)
