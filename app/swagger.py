"""Swagger UI at ``/apidocs``, served by flasgger from its bundled assets (no CDN).

The document comes from :func:`app.openapi.build_openapi`; flasgger only serves it at
``/apispec_1.json`` and renders the UI. Its per-view docstring parsing and request
validation are off: views carry no YAML, and validation is the spec's plain-Python
check. ``app/templates/flasgger/`` overrides the page head and footer, whose stock
versions pull fonts from Google and link to GitHub.
"""
from __future__ import annotations

from flasgger import Swagger
from flask import Flask

from app.model import EXTENSION
from app.openapi import build_openapi

SPEC_ROUTE = "/apispec_1.json"
UI_ROUTE = "/apidocs/"


class _Swagger(Swagger):
    """flasgger without its ``after_request`` hook, which copies ``config["headers"]``
    onto every response: this app configures none, so the hook was work for nothing."""

    def add_headers(self, app: Flask) -> None:
        """Register nothing (see the class)."""


def init_app(app: Flask) -> None:
    """Serve the generated OpenAPI document and the Swagger UI."""
    predictor = app.extensions[EXTENSION].predictor
    document = build_openapi(
        predictor.spec if predictor else None,
        predictor.card if predictor else None,
        max_batch=app.config["MAX_BATCH"], max_reasons=app.config["MAX_REASONS"],
        max_monitoring_rows=app.config["MONITORING_MAX_ROWS"])
    config = {
        "headers": [],
        "specs": [{"endpoint": "apispec_1", "route": SPEC_ROUTE,
                   # Nothing from view docstrings: the document is generated whole.
                   "rule_filter": lambda rule: False,
                   "model_filter": lambda tag: False}],
        "static_url_path": "/flasgger_static",
        "swagger_ui": True,
        "specs_route": UI_ROUTE,
        "openapi": "3.0.3",
        "title": "Credit risk API",
        "auth": {},
        "ui_params": {"tryItOutEnabled": False, "displayRequestDuration": True},
    }
    _Swagger(app, config=config, template=document, merge=False)
