"""Configuration, layered: code defaults, then environment variables, then a test dict.

Environment variables are how OpenShift configures a pod, so every setting here can be
set by one, with the same name. Values from the environment are strings and are
converted (and checked) here, so a typo fails the start-up with a clear message rather
than a confusing error on the first request.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from ml.monitoring.report import MIN_LABELLED, MIN_ROWS
from ml.spec.config import models_dir

MIB = 1024 * 1024

# JWS algorithms with a public verification key: an HS* key would be the public key itself.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                         "ES384", "ES512", "EdDSA")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case) as a bool."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive whole number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _write_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in ("async", "sync"):
        raise ValueError(f"expected async or sync, got {text!r}")
    return mode


def _algorithms(text: str) -> tuple[str, ...]:
    """A comma-separated allow-list of asymmetric JWS algorithms (never ``none`` or HS*)."""
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in names if a not in ASYMMETRIC_ALGORITHMS]
    if not names or bad:
        raise ValueError(f"expected asymmetric algorithms among {', '.join(ASYMMETRIC_ALGORITHMS)}"
                         f", got {text!r}")
    return names


def _rate_limit(text: str) -> str:
    from limits import parse_many

    try:
        parse_many(text)
    except ValueError:
        raise ValueError(f"expected a rate limit such as 100/second, got {text!r}") from None
    return text


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a whole number from 0, got {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {text!r}")
    return level


# name -> (default, converter from the environment's string, what it is for)
SETTINGS: dict[str, tuple[Any, Callable[[str], Any], str]] = {
    "MODEL_DIR": (None, str, "Model artifact directory, or a models dir with a LATEST "
                             "pointer (default: ml.spec.config.models_dir(), i.e. ./models)"),
    "PORT": (8080, _positive_int, "Port gunicorn binds to (gunicorn.conf.py)"),
    "LOG_LEVEL": ("INFO", _log_level, "Level of the JSON logs on stdout"),
    "MAX_BATCH": (1000, _positive_int, "Most applicants in one POST /predict batch"),
    "MAX_CONTENT_LENGTH": (2 * MIB, _positive_int, "Largest request body in bytes (else 413)"),
    "LOG_FEATURES": (False, parse_bool, "Also log the applicants' feature values "
                                        "(personal data: off by default)"),
    "MAX_REASONS": (4, _positive_int, "Most reason codes returned per applicant"),
    "DATABASE_URL": (None, str, "SQLAlchemy URL of the prediction store, e.g. "
                                "postgresql+psycopg://user:pw@host:5432/db (default: "
                                "sqlite:///<temp dir>/predictions.db)"),
    "STORE_RETRY_SECONDS": (5, _positive_int, "After a store failure, seconds before it is "
                                              "tried again (predictions go on meanwhile)"),
    "STORE_WRITE": ("async", _write_mode, "async: each prediction is appended to the "
                                          "worker's spool file before the answer and "
                                          "written by a background thread; sync: inserted "
                                          "in the request (spooled if that fails)"),
    "STORE_FLUSH_SECONDS": (0.2, _positive_float, "Longest wait of a spooled prediction "
                                                  "before the writer takes it"),
    "STORE_SPOOL_DIR": (None, str, "Directory of the prediction spool files, on the pod's "
                                   "volume (default: <temp dir>/prediction-spool/<hash of "
                                   "DATABASE_URL>)"),
    "STORE_SPOOL_FSYNC": (False, parse_bool, "fsync each spooled prediction before the "
                                             "answer (survives the loss of the node; costs "
                                             "a disk flush per request)"),
    "STORE_DEADLINE_SECONDS": (5, _positive_float, "Longest a request waits for the "
                                                   "database (feedback, monitoring)"),
    "MONITORING_MAX_ROWS": (10000, _positive_int, "Most predictions GET /monitoring?last=N "
                                                  "or ?days=D reads in a worker (the newest "
                                                  "of its window); larger windows are the "
                                                  "monitor job's"),
    "MONITORING_MIN_ROWS": (MIN_ROWS, _positive_int, "The minimum window: a report of fewer "
                                                     "predictions carries counts only (no "
                                                     "drift, decision mix or outcome metrics)"),
    "MONITORING_MIN_LABELLED": (MIN_LABELLED, _positive_int, "Labelled predictions (each "
                                                             "class at least 10) below which "
                                                             "a report has no outcome metrics"),
    "MONITORING_CACHE_SECONDS": (60, _positive_float, "How long a worker keeps the newest "
                                                      "stored report for the /metrics gauges "
                                                      "before reading the store again"),
    "MONITORING_METRICS_DEADLINE_SECONDS": (0.5, _positive_float, "Longest a /metrics scrape "
                                                                  "waits for the store (then "
                                                                  "the cached gauges)"),
    "AUTH_REQUIRED": (True, parse_bool, "Require a bearer credential on every route but "
                                        "/health_check and /ready (false: open, for local "
                                        "experiments only)"),
    "API_KEYS_FILE": (None, str, "JSON/YAML file of API key hashes, names and scopes "
                                 "(python -m app keys create); re-read when it changes"),
    "OIDC_ISSUER": (None, str, "OpenID Connect issuer whose access tokens (JWT) are accepted, "
                               "e.g. https://sso.example/realms/bank"),
    "OIDC_AUDIENCE": (None, str, "The aud claim an access token must carry for this API"),
    "OIDC_JWKS_URL": (None, str, "The issuer's JWKS URL (default: jwks_uri of its "
                                 "/.well-known/openid-configuration)"),
    "OIDC_ALGORITHMS": (("RS256", "ES256", "PS256"), _algorithms,
                        "Comma-separated JWS algorithms accepted (asymmetric only)"),
    "OIDC_ROLES_CLAIM": (None, str, "Dotted path of a claim listing scopes as roles, e.g. "
                                    "realm_access.roles (besides the scope claim)"),
    "OIDC_LEEWAY_SECONDS": (30, _non_negative_int, "Clock skew allowed on exp and nbf"),
    "OIDC_JWKS_COOLDOWN_SECONDS": (30, _non_negative_int, "Least seconds between two "
                                                          "JWKS refetches for unknown kids"),
    "TOKEN_CACHE_SIZE": (10000, _positive_int, "Verified access tokens kept (until they "
                                               "expire) so each is verified once"),
    "RATELIMIT_STORAGE_URI": ("memory://", str, "Where rate-limit counters live: memory:// "
                                                "(per worker) or redis://host:6379 (shared)"),
    "RATELIMIT_PREDICT": ("100/second", _rate_limit, "Per-client limit on POST /predict "
                                                     "and the form POST, e.g. 100/second"),
    "RATELIMIT_FEEDBACK": ("20/second", _rate_limit, "Per-client limit on POST /feedback"),
    # People signing in (app/sso.py): the form and the Swagger UI.
    "SECRET_KEY": (None, str, "Signs the session cookie; from a Secret (default: random per "
                              "start, so sign-ins end on a restart and do not span pods)"),
    "SECRET_KEY_FILE": (None, str, "File holding SECRET_KEY (a mounted Secret)"),
    "OIDC_CLIENT_ID": (None, str, "This app's client id at the OIDC issuer: with OIDC_ISSUER, "
                                  "people sign in with SSO (else with an API key)"),
    "OIDC_CLIENT_SECRET": (None, str, "This app's client secret at the issuer (from a Secret)"),
    "OIDC_REDIRECT_URI": (None, str, "Redirect URI registered at the issuer (default: "
                                     "<this server>/signin/callback)"),
    "OIDC_SIGNIN_SCOPES": ("openid profile score", str, "Scopes requested when a person "
                                                        "signs in with SSO"),
    "TRUSTED_PROXIES": (0, _non_negative_int, "Proxies in front whose X-Forwarded-* headers "
                                              "are trusted (OpenShift's router: 1), so the "
                                              "session cookie is Secure behind edge TLS"),
    "SESSION_HOURS": (8, _positive_int, "Longest a browser stays signed in"),
}


def load_config(test_config: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The effective settings: defaults, overridden by ``environ``, overridden by ``test_config``.

    Args:
        test_config: explicit values (tests); keys need not be in :data:`SETTINGS`.
        environ: the environment to read (default ``os.environ``).

    Raises:
        ValueError: an environment variable holds a value that cannot be converted.
    """
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for name, (default, convert, _) in SETTINGS.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            config[name] = default
            continue
        try:
            config[name] = convert(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}: {exc}") from None
    if config["MODEL_DIR"] is None:
        config["MODEL_DIR"] = str(models_dir())
    config.update(test_config or {})
    return config
