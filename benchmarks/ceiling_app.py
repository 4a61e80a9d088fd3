"""The HTTP ceiling: a bare Flask JSON endpoint under the same gunicorn settings as the API.

``gunicorn -c gunicorn.conf.py 'benchmarks.ceiling_app:create_app()'`` answers
``POST /predict`` by parsing the JSON body and returning a tiny JSON object: the
cost of gunicorn + Flask + JSON with no model, no validation, no logging and no
metrics. ``benchmarks/bench_http.py`` divides the API's throughput by this.
"""
from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    """A Flask app with ``POST /predict`` (echoes nothing, says ok) and ``GET /ready``."""
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        body = request.get_json()
        return jsonify(ok=isinstance(body, dict))

    @app.get("/ready")
    def ready():
        return jsonify(status="ready")

    return app
