"""Access control at the edge: who is calling, and may they call this route.

One ``before_request`` (registered by :func:`init_app`) looks the matched endpoint up in
:data:`ENDPOINT_SCOPES`, authenticates the request and checks the scope; no view
repeats it. A missing or bad credential is answered 401 with ``WWW-Authenticate:
Bearer`` (RFC 6750; its ``error=`` attribute is all that is said about what was wrong),
a valid one without the scope 403, both in the one error shape of :mod:`app.errors`.

Who calls is an :class:`Identity`: a principal (``key:<client name>`` for an API key,
``oidc:<sub>`` for an OpenID Connect access token), the kind of credential and its
scopes. It is found by the authenticators in order; the bearer one is built in, and a
sign-in module can add one (:func:`add_authenticator`) that reads a session cookie and
returns the same :class:`Identity`, so ownership and audit work unchanged. Views and
logs reach it with :func:`current_identity`; the request's log line carries the
principal (``client``), never the credential.

Scopes: ``score`` (POST /predict, the form's POST), ``feedback`` (POST /feedback, for
the caller's own predictions), ``feedback:all`` (outcomes of anyone's predictions),
``feedback:correct`` (change a recorded outcome, with a reason), ``monitor``
(GET /monitoring), ``metrics`` (GET /metrics). ``/health_check`` and ``/ready`` are open;
every other route, an unknown one included, needs a valid identity.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

from flask import Flask, Request, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from app import logs
from app.errors import APIError

log = logging.getLogger(__name__)

EXTENSION = "auth"
SCOPES = ("score", "feedback", "feedback:all", "feedback:correct", "monitor", "metrics")
OPEN = None  # no credential needed
ANY = ""  # any valid identity
# Endpoint name -> the scope it needs (OPEN, ANY, or a scope). Unlisted endpoints (Swagger
# UI, its JSON, static files, and unmatched routes: 404/405) need ANY.
ENDPOINT_SCOPES: dict[str, str | None] = {
    "api.health_check": OPEN,
    "api.ready": OPEN,
    "api.model_card": ANY,
    "api.predict": "score",
    "web.form": ANY,
    "web.submit": "score",
    "monitoring.feedback": "feedback",
    "monitoring.monitoring": "monitor",
    "metrics": "metrics",
    # Signing in (app.sso) and the pages' stylesheet: before anyone is known.
    "sso.signin": OPEN,
    "sso.signin_with_key": OPEN,
    "sso.signin_with_sso": OPEN,
    "sso.callback": OPEN,
    "sso.signout": OPEN,
    "static": OPEN,
}
REALM = "credit-risk-api"
# RFC 6750 b64token, bounded: a longer header is not a credential we issue or accept.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]{1,8192}=*) *", re.IGNORECASE)


@dataclass(frozen=True)
class Identity:
    """Who calls: ``principal`` (``key:NAME`` / ``oidc:SUB``), credential ``kind``, scopes.

    ``expires_at`` (Unix seconds) is when the credential stops being valid (a JWT's
    ``exp``), None for credentials without an end (API keys, until revoked).
    """

    principal: str
    kind: str
    scopes: frozenset[str]
    expires_at: float | None = None

    def has(self, scope: str) -> bool:
        """Whether this identity holds ``scope``."""
        return scope in self.scopes


# With AUTH_REQUIRED=false everyone is this identity, holding every scope.
ANONYMOUS = Identity("anonymous", "none", frozenset(SCOPES))

Authenticator = Callable[[Request], "Identity | None"]


class InvalidCredential(Exception):
    """A credential was presented and is not valid (401 ``invalid_token``)."""


def unauthorized(error: str | None = None) -> APIError:
    """401 with RFC 6750's challenge; ``error`` is ``invalid_request`` or ``invalid_token``."""
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return APIError(401, "A valid bearer credential is required.",
                    headers={"WWW-Authenticate": challenge})


def forbidden(scope: str) -> APIError:
    """403 for a valid identity without ``scope`` (RFC 6750 ``insufficient_scope``)."""
    challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
    return APIError(403, f"This credential does not grant the {scope} scope.",
                    headers={"WWW-Authenticate": challenge})


def current_identity() -> Identity:
    """The caller of the current request (set by the edge check before any view runs)."""
    return g.identity


class AuthState:
    """The app's authenticators and whether authentication is required."""

    def __init__(self, required: bool) -> None:
        self.required = required
        self.authenticators: list[Authenticator] = []
        self.keys: Any | None = None  # the KeyFile, for sign-in with a key (app.sso)
        self.oidc: Any | None = None  # the OidcVerifier, for SSO sign-in (app.sso)

    def authenticate(self, req: Request) -> Identity | None:
        """The first identity an authenticator finds, None when no credential was sent.

        Raises:
            APIError: 401 when a credential was sent but is malformed or not valid.
        """
        for authenticate in self.authenticators:
            try:
                identity = authenticate(req)
            except InvalidCredential:
                raise unauthorized("invalid_token") from None
            if identity is not None:
                return identity
        return None


def add_authenticator(app: Flask, authenticator: Authenticator, first: bool = False) -> None:
    """Accept another kind of credential (e.g. a session); it returns an :class:`Identity`,
    None when its credential is absent, or raises :class:`InvalidCredential`."""
    authenticators = app.extensions[EXTENSION].authenticators
    authenticators.insert(0, authenticator) if first else authenticators.append(authenticator)


def _check_request(state: AuthState) -> None:
    """The edge check: authenticate, then compare the identity's scopes with the route's."""
    req = request._get_current_object()  # one context lookup, not one per use
    need = ENDPOINT_SCOPES.get(req.endpoint or _endpoint_of_other_method(), ANY)
    if need is OPEN:
        return
    if not state.required:
        g.identity = ANONYMOUS
        return
    identity = state.authenticate(req)
    if identity is None:
        raise unauthorized()
    g.identity = identity
    logs.annotate(client=identity.principal)
    if need and not identity.has(need):
        raise forbidden(need)


def _endpoint_of_other_method() -> str:
    """For a method the route does not allow (405), the route's endpoint: an open route
    answers its 405 to anyone; any other unmatched request needs an identity first."""
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return ""
    try:
        adapter = current_app.create_url_adapter(request)
        return adapter.match(method=error.valid_methods[0])[0]
    except HTTPException:  # pragma: no cover - the path matched a moment ago
        return ""


def bearer_token(req: Request) -> str | None:
    """The bearer token of ``Authorization``, None without the header.

    Raises:
        APIError: 401 ``invalid_request`` when the header is not ``Bearer <token>``.
    """
    header = req.headers.get("Authorization")
    if header is None:
        return None
    match = _BEARER.fullmatch(header)
    if match is None:
        raise unauthorized("invalid_request")
    return match.group(1)


def bearer_authenticator(keys: Any | None, oidc: Any | None) -> Authenticator:
    """The ``Authorization: Bearer`` authenticator: a JWT (two dots) goes to the OIDC
    verifier when an issuer is set, anything else to the API key file."""

    def authenticate(req: Request) -> Identity | None:
        token = bearer_token(req)
        if token is None:
            return None
        if oidc is not None and token.count(".") == 2:
            identity = oidc.verify(token)
        elif keys is not None:
            identity = keys.lookup(token)
        else:
            identity = None
        if identity is None:
            raise InvalidCredential()
        return identity
    return authenticate


def init_app(app: Flask) -> None:
    """Check every request at the edge; refuse to start when auth is on without a source
    of credentials (a key file or an issuer).

    Register after :func:`app.logs.init_app` (the check annotates the request's line) and
    before anything else that runs per request (rate limits key on the identity).

    Raises:
        RuntimeError: auth is required and neither ``API_KEYS_FILE`` nor ``OIDC_ISSUER``
            is set, or the key file cannot be read (gunicorn prints the one line).
    """
    from app.auth_keys import KeyFile
    from app.auth_oidc import OidcVerifier

    config = app.config
    state = AuthState(bool(config.get("AUTH_REQUIRED", True)))
    app.extensions[EXTENSION] = state
    if state.required:
        keys = KeyFile.open(config["API_KEYS_FILE"]) if config.get("API_KEYS_FILE") else None
        oidc = OidcVerifier.from_config(config) if config.get("OIDC_ISSUER") else None
        if keys is None and oidc is None:
            raise RuntimeError("authentication is required (AUTH_REQUIRED) but neither "
                               "API_KEYS_FILE nor OIDC_ISSUER is set")
        state.keys, state.oidc = keys, oidc
        state.authenticators.append(bearer_authenticator(keys, oidc))
    else:
        log.warning("AUTH_REQUIRED is false: every route is open to anyone")
    app.before_request(functools.partial(_check_request, state))  # no lookup per request
