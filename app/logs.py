"""JSON logs on stdout, and the one log line written for every request.

OpenShift collects stdout, so every log record, ours and gunicorn's, is one JSON object
on one line. Logging is configured before the Flask app exists (Flask's logging docs),
so records written while the model loads are already JSON.

Each request gets an id (the caller's ``X-Request-ID`` when it is a sane token, else a
fresh one), echoed as a response header, and one ``request`` line with its endpoint,
status and latency. Views add fields to that line with :func:`annotate` (for
predictions: the PD and decision); feature values only when ``LOG_FEATURES`` is on.
"""
from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import sys
import time
from typing import Any, Callable, Mapping

from flask import Flask, Request, Response, g, request

REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and a few separators, at most 128 characters: a UUID, a trace id or a
# ULID fits; anything else (spaces, quotes, control characters, huge values) is replaced
# so it can never forge a log line or carry data.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_RESERVED = frozenset(vars(logging.makeLogRecord({})))

_COMMON = "request_log_fields"
_LISTENERS = "request_end_listeners"
# Built once: json.dumps with options builds a new encoder per call.
_LINE = json.JSONEncoder(default=str, separators=(",", ":"))

log = logging.getLogger("app.request")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record``; fields passed as ``extra=`` become top-level keys."""
        extra = {key: value for key, value in record.__dict__.items()
                 if key not in _RESERVED and key[0] != "_"}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname, record.name, record.getMessage(),
                         record.process, extra)


def json_line(created: float, level: str, logger: str, message: str, pid: int | None,
              fields: Mapping[str, Any]) -> str:
    """One log line: time, level, logger, message, pid (which gunicorn worker), then
    ``fields`` (any that would overwrite those five are left out)."""
    entry: dict[str, Any] = {"timestamp": timestamp(created), "level": level,
                             "logger": logger, "message": message, "pid": pid}
    for key, value in fields.items():
        if key not in entry:
            entry[key] = value
    return _LINE.encode(entry)


def timestamp(created: float) -> str:
    """ISO 8601 UTC time with milliseconds, e.g. ``2026-11-23T21:45:00.123Z``."""
    seconds, fraction = divmod(created, 1.0)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{int(fraction * 1000):03d}Z")


class StdoutHandler(logging.StreamHandler):
    """A stream handler bound to whatever ``sys.stdout`` is at emit time.

    Binding late keeps test runners' output capture working when many apps are built.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D401 - property
        """The current ``sys.stdout``."""
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A ``dictConfig`` sending every logger through one JSON handler on stdout.

    Also used by ``gunicorn.conf.py`` (``logconfig_dict``) so gunicorn's own records
    are JSON too.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"()": StdoutHandler, "formatter": "json"}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def configure_logging(level: str = "INFO") -> None:
    """Route all logging to stdout as JSON at ``level``; safe to call more than once."""
    logging.config.dictConfig(logging_config(level))


def sane_request_id(value: str | None) -> str:
    """``value`` when it is a short token of safe characters, else a new id."""
    if value and _SANE_ID.fullmatch(value):
        return value
    return new_request_id()


def new_request_id() -> str:
    """32 hex digits: the time in Unix milliseconds (48 bits), then 80 random bits.

    Time first, like a UUIDv7: ids sort by time, and the prediction store's index on
    ``request_id`` grows at its end instead of at random places, so a group commit
    rewrites a few index pages instead of one per row (less writer CPU per row, see
    ``docs/design.md``). 80 random bits keep an id unguessable: feedback is addressed by it.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def endpoint_label(req: Request) -> str:
    """The matched route of ``req`` (e.g. ``/predict``), never the raw path: bounded and
    data-free."""
    rule = req.url_rule
    return rule.rule if rule is not None else "<unmatched>"


class RequestInfo:
    """What this module keeps about the current request (in ``g.request_info``)."""

    __slots__ = ("started", "request_id", "fields")

    def __init__(self, started: float, request_id: str, fields: dict[str, Any]) -> None:
        self.started = started
        self.request_id = request_id
        self.fields = fields


def current() -> RequestInfo:
    """The current request's id, start time and extra log fields."""
    return g.request_info


def request_id() -> str:
    """The current request's id (the caller's ``X-Request-ID`` if it was sane)."""
    return g.request_info.request_id


def annotate(**fields: Any) -> None:
    """Add fields to this request's log line (e.g. ``decision="approve"``)."""
    g.request_info.fields.update(fields)


def set_common_fields(app: Flask, **fields: Any) -> None:
    """Fields written on every request line of ``app`` (e.g. ``model_version``)."""
    app.extensions.setdefault(_COMMON, {}).update(fields)


def common_fields(app: Flask) -> dict[str, Any]:
    """The fields written on every request line of ``app``."""
    return app.extensions.get(_COMMON, {})


def response_headers(request_id: str, elapsed_ms: float) -> list[tuple[str, str]]:
    """Headers of every answer: its request id, and the server's own time for it (lets a
    client, and the benchmark, see the server's share of the latency)."""
    return [(REQUEST_ID_HEADER, request_id), ("Server-Timing", f"app;dur={elapsed_ms:.3f}")]


def log_request(request_id: str, method: str, endpoint: str, status: int, elapsed_ms: float,
                fields: Mapping[str, Any]) -> None:
    """The request's one line: id, method, route, status, latency, then ``fields``."""
    level = logging.ERROR if status >= 500 else logging.INFO
    if log.isEnabledFor(level):
        _write_request_line(level, {"request_id": request_id, "method": method,
                                    "endpoint": endpoint, "status": status,
                                    "latency_ms": round(elapsed_ms, 3), **fields})


def on_request_end(app: Flask, listener: Callable[[str, str, int, float], None]) -> None:
    """Call ``listener(endpoint, method, status, seconds)`` as each request of ``app`` ends.

    The request's end is measured once, for its log line and for every listener (the
    Prometheus metrics), in the one ``after_request`` hook of :func:`init_app`.
    """
    app.extensions.setdefault(_LISTENERS, []).append(listener)


def _write_request_line(level: int, fields: dict[str, Any]) -> None:
    """The request's line, as :class:`JsonFormatter` would write it, straight to stdout.

    The one line every request writes skips the logging machinery (a ``LogRecord``, the
    handler's lock and formatter cost several times this); it still obeys the level of
    the ``app.request`` logger. One ``write`` of the whole line, then a flush,
    so lines from other threads never interleave with it and none wait in a buffer.
    """
    line = json_line(time.time(), logging.getLevelName(level), log.name, "request",
                     os.getpid(), fields)
    stream = sys.stdout
    stream.write(line + "\n")
    stream.flush()


def init_app(app: Flask) -> None:
    """Give each request an id and a start time; when it ends, set its headers, write
    its log line and tell the :func:`on_request_end` listeners.

    Register this before the other per-request hooks: Flask runs ``after_request``
    functions in reverse order, so this line is written last, with the final status.
    The hooks hold the app's field and listener collections, so a request looks nothing
    up through ``current_app``.
    """
    common = app.extensions.setdefault(_COMMON, {})
    listeners = app.extensions.setdefault(_LISTENERS, [])

    def start_request() -> None:
        g.request_info = RequestInfo(time.perf_counter(),
                                     sane_request_id(request.headers.get(REQUEST_ID_HEADER)),
                                     dict(common))

    def finish_request(response: Response) -> Response:
        info: RequestInfo | None = g.get("request_info")
        if info is None:  # pragma: no cover - only if another before_request hook failed
            start_request()
            info = g.request_info
        req = request._get_current_object()  # one context lookup, not one per attribute
        seconds = time.perf_counter() - info.started
        elapsed_ms = seconds * 1000.0
        headers = response.headers
        for name, value in response_headers(info.request_id, elapsed_ms):
            headers[name] = value
        endpoint, method, status = endpoint_label(req), req.method, response.status_code
        for listener in listeners:
            listener(endpoint, method, status, seconds)
        log_request(info.request_id, method, endpoint, status, elapsed_ms, info.fields)
        return response

    app.before_request(start_request)
    app.after_request(finish_request)
