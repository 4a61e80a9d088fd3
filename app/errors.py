"""Every error is JSON of one shape: ``{"error", "message", "details": [{"field", "problem"}]}``.

One handler for werkzeug's ``HTTPException`` (404, 405, 413, ...), one for the API's
own :class:`APIError`, and a last one so that even a bug answers in the same shape,
without a stack trace. No message ever repeats what the client sent: requests carry
personal data.
"""
from __future__ import annotations

import json
import logging
from typing import Iterable, Mapping

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import HTTP_STATUS_CODES

from app import logs

log = logging.getLogger(__name__)

# Over-long bodies up to this size are read and dropped before the 413 is sent.
DRAIN_LIMIT = 16 * 1024 * 1024
# What a bug answers (no traceback, no detail).
UNEXPECTED = "The server could not process the request."


class APIError(Exception):
    """A request the API refuses: an HTTP status, a sentence, and the problems by field."""

    def __init__(self, status: int, message: str,
                 details: Iterable[dict[str, str]] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})  # e.g. WWW-Authenticate, Retry-After


def error_body(status: int, message: str,
               details: Iterable[dict[str, str]] = ()) -> dict:
    """The error document for ``status``: its reason phrase, a sentence, the problems."""
    return {"error": HTTP_STATUS_CODES.get(status, "Unknown Error"),
            "message": message, "details": list(details)}


def error_response(status: int, message: str,
                   details: Iterable[dict[str, str]] = ()) -> Response:
    """A JSON error response in the API's one shape."""
    response = Response(json.dumps(error_body(status, message, details)), status=status,
                        mimetype="application/json")
    # Errors can follow a credential check or carry a request's problems: never cached.
    response.headers["Cache-Control"] = "no-store"
    return response


def handle_api_error(exc: APIError) -> Response:
    """Answer an :class:`APIError` as it asks; its problems (never values) go to the log."""
    if exc.details and "request_info" in g:
        logs.annotate(problems=exc.details[:20])
    response = error_response(exc.status, exc.message, exc.details)
    response.headers.update(exc.headers)
    return response


def handle_http_exception(exc: HTTPException) -> Response:
    """Answer werkzeug's HTTP errors (404, 405, 413, ...) as JSON instead of HTML."""
    status = exc.code or 500
    if status == 413:
        _discard_body()
    response = error_response(status, exc.description or HTTP_STATUS_CODES.get(status, ""))
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _discard_body(most: int = DRAIN_LIMIT) -> None:
    """Read and drop an over-long body, so the client gets to read the 413.

    Answering before the body is read and then closing the socket makes the client's
    send fail (broken pipe) before it reads the answer. Bodies declared bigger than
    ``most`` bytes are not worth the work: for those the connection is just closed.
    """
    length = request.content_length
    if not length or length > most:
        return
    stream = request.environ.get("wsgi.input")
    try:
        while length > 0:
            chunk = stream.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)
    except (OSError, ValueError):  # pragma: no cover - the client went away
        pass


def handle_unexpected(exc: Exception) -> Response:
    """A bug: log it with its traceback, answer a plain 500 without one."""
    log.exception("unhandled error")
    return error_response(500, UNEXPECTED)


def init_app(app: Flask) -> None:
    """Register the three handlers."""
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
