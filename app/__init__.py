"""Credit-risk model serving: the Flask app factory.

``gunicorn -c gunicorn.conf.py 'app:create_app()'`` builds one app (in the master,
with ``preload_app``, so the workers share the loaded model). Each module owns one
concern and registers it with ``init_app``; to add one (a web form, a prediction
store), add one line below.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from flask import Flask

from app import api, auth, auth_guard, errors, logs, metrics, model, monitoring, swagger, web
from app.config import load_config


class CreditAPI(Flask):
    """Flask, with :meth:`ensure_sync` remembered per function.

    Flask asks, on every request and for every hook and view, whether the function is
    a coroutine; these functions are fixed when the app is built, so each is asked once.
    """

    def ensure_sync(self, func: Callable) -> Callable:
        """The function Flask should call for ``func`` (``func`` itself, as none is async)."""
        cache = self.__dict__.setdefault("_ensured", {})
        try:
            return cache[func]
        except KeyError:
            cache[func] = ensured = super().ensure_sync(func)
            return ensured


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, JSON logs, the model, routes, metrics and API docs.

    Args:
        test_config: settings that override the defaults and the environment (tests).
    """
    settings = load_config(test_config)
    logs.configure_logging(settings["LOG_LEVEL"])  # before the app, so every record is JSON

    app = CreditAPI(__name__)
    app.config.update(settings)
    app.json.sort_keys = False

    logs.init_app(app)  # first: its after_request runs last and logs the final status
    errors.init_app(app)
    auth.init_app(app)  # the edge check: after logs (it notes the caller), before the rest
    model.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(api.bp)
    monitoring.init_app(app)  # prediction store, POST /feedback, GET /monitoring
    web.init_app(app)  # the HTML form at /
    swagger.init_app(app)
    auth_guard.init_app(app)  # rate limits on the routes above, body bound, HTML headers
    return app
