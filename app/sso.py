"""People sign in: the bank's SSO (OpenID Connect) or an API key, then a session cookie.

A credit officer using the form (and anyone opening the Swagger UI) is a person with a
browser, not a client holding a bearer token. This module gives such a person the same
kind of identity a bearer token gives a machine client, through the same checks:

- where ``OIDC_ISSUER`` and ``OIDC_CLIENT_ID`` are set, ``/signin/sso`` starts the
  authorization-code flow with PKCE (authlib's Flask client) and ``/signin/callback``
  verifies the access token it gets with the very verifier bearer tokens go through
  (:mod:`app.auth`), so the person's scopes come from its ``scope``/roles claim;
- otherwise the sign-in page takes an API key, checked against the same key file.

The session (Flask's signed cookie: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the
request came over TLS, see :class:`TlsAwareSessions`) keeps only who signed in and how,
never a token or a key: for an OIDC user the verified subject, name and scopes; for an
API key the key's SHA-256, looked up again on every request so a revoked key ends its
sessions at once. Either ends ``SESSION_HOURS`` after signing in, checked by the server
(the cookie's own expiry is only the browser's), not when the access token expires:
Keycloak's default token lifetime of 5 minutes would send officers back to the SSO all
day. A change of an officer's roles applies at the next sign-in.

:func:`session_identity` is registered with :func:`app.auth.add_authenticator`, after
the bearer one: the edge check and its scope
table then treat a signed-in person like any client (``oidc:<sub>`` or ``key:<name>``,
so predictions made in the form and through the API belong to the same principal).

A session counts for an unsafe method (the form's POST) only with a valid CSRF token
(Flask-WTF): a browser sends a cookie on its own, never a bearer header. The form's and
these pages' POSTs are checked even with authentication off.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import (Blueprint, Flask, Request, Response, current_app, redirect, request,
                   session, url_for)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from joserfc.errors import JoseError
from werkzeug.middleware.proxy_fix import ProxyFix

from app import auth, logs
from app.errors import error_response
from app.web import html_page

log = logging.getLogger(__name__)

bp = Blueprint("sso", __name__)
EXTENSION = "sso"
SESSION_KEY = "identity"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGES = ("web", "sso")  # the blueprints of pages for people
PROVIDER = "bank"  # the name authlib registers the OpenID provider under


class TlsAwareSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, ``Secure`` whenever the request came over TLS.

    OpenShift terminates TLS at its router and forwards plain HTTP; with
    ``TRUSTED_PROXIES`` set, :class:`~werkzeug.middleware.proxy_fix.ProxyFix` makes
    ``request.is_secure`` reflect ``X-Forwarded-Proto``. A fixed ``SESSION_COOKIE_SECURE``
    would break plain-HTTP local use or leave the cookie unprotected behind the router.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        """``Secure`` when configured so or when this request arrived over HTTPS."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def open_session(self, app: Flask, request: Request) -> Any:
        """Flask's session; for a request without any cookie (every API call) the empty
        session Flask would return, without building the cookie jar or the signer."""
        if app.secret_key and "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        """Flask's save; a session nobody touched (every API call) has nothing to save, and
        Flask would work out the cookie's six attributes before finding that out."""
        if session or session.modified or session.accessed:
            super().save_session(app, session, response)

    def get_signing_serializer(self, app: Flask) -> Any:
        """Flask's cookie signer for ``app``'s keys, built once per set of keys.

        Flask builds a new signer (keys, salt, serializer) for every session it opens or
        saves; the signer keeps no state between uses and depends only on the keys,
        fixed once the app is built.
        """
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = self.__dict__.get("_signer")
        if cached is None or cached[0] != keys:
            cached = self._signer = (keys, super().get_signing_serializer(app))
        return cached[1]


def key_digest(key: str) -> bytes:
    """The SHA-256 of an API key: what the session keeps instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def check_csrf() -> None:
    """Refuse a cookie-borne POST without its CSRF token (:class:`CSRFError`, a 400).

    A request with an ``Authorization`` header is a bearer client, whose credential a
    foreign page cannot make the browser send: it needs no token.
    """
    if request.method not in SAFE_METHODS and "Authorization" not in request.headers:
        current_app.extensions["csrf"].protect()


def _check_page_posts() -> None:
    if request.blueprint in PAGES:
        check_csrf()


def session_identity(req: Request) -> auth.Identity | None:
    """The signed-in person of ``req``, or ``None`` (the edge check then answers 401).

    ``None`` without a session, after ``SESSION_HOURS``, or when the API key it was made
    with has been revoked. For an unsafe method the session counts only with a valid
    CSRF token (else :class:`CSRFError`).
    """
    stored = session.get(SESSION_KEY)
    if not isinstance(stored, dict):
        return None
    check_csrf()
    expires = float(stored.get("exp", 0))
    if expires <= time.time():
        return None
    state = current_app.extensions[auth.EXTENSION]
    if stored.get("via") == "api_key" and state.keys is not None:
        identity = state.keys.lookup_digest(bytes.fromhex(str(stored.get("key", ""))))
        return identity and auth.Identity(identity.principal, "api_key_session",
                                          identity.scopes, expires)
    if stored.get("via") == "oidc":
        return auth.Identity(str(stored["principal"]), "oidc_session",
                             frozenset(stored.get("scopes", ())), expires)
    return None


def signed_in_name() -> dict[str, str | None]:
    """Template context: ``person``, the name shown beside the sign-out button."""
    stored = session.get(SESSION_KEY)
    if not isinstance(stored, dict) or float(stored.get("exp", 0)) <= time.time():
        return {"person": None}
    return {"person": stored.get("name")}


def oidc_enabled(app: Flask | None = None) -> bool:
    """Whether people sign in with the bank's SSO (an issuer and a client are set)."""
    config = (app or current_app).config
    return bool(config.get("OIDC_ISSUER") and config.get("OIDC_CLIENT_ID"))


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not target:
        return url_for("web.form")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") \
            or "\\" in target:
        return url_for("web.form")
    return target


def _start_session(stored: dict[str, Any]) -> None:
    """Replace whatever the session held (no fixation) with the new sign-in."""
    session.clear()
    session.permanent = True
    hours = current_app.config["SESSION_HOURS"]
    session[SESSION_KEY] = {**stored, "exp": int(time.time()) + 3600 * hours}


def _signin_page(status: int = 200, problem: str | None = None) -> Response:
    return html_page("signin.html", status, sso=oidc_enabled(), problem=problem,
                     next=safe_next(request.values.get("next")),
                     signed_out="signed_out" in request.args)


@bp.get("/signin")
def signin() -> Response:
    """The sign-in page: a button to the bank's SSO, or a field for an API key."""
    return _signin_page()


@bp.post("/signin")
def signin_with_key() -> Response:
    """Sign in with an API key typed into the page (only where no issuer is set)."""
    keys = _auth_state().keys
    if oidc_enabled() or keys is None:
        return _signin_page(400, "Sign in with the bank's single sign-on.")
    key = (request.form.get("api_key") or "").strip()
    identity = keys.lookup(key) if key else None
    if identity is None:
        logs.annotate(signin="refused")
        return _signin_page(401, "That key is not valid. Check it and try again.")
    _start_session({"via": "api_key", "key": key_digest(key).hex(),
                    "name": identity.principal.removeprefix("key:")})
    logs.annotate(signin="api_key", client=identity.principal)
    return redirect(safe_next(request.form.get("next")), 303)


def _auth_state() -> auth.AuthState:
    return current_app.extensions[auth.EXTENSION]


@bp.get("/signin/sso")
def signin_with_sso() -> Response:
    """Send the person to the bank's SSO (authorization code with PKCE and a nonce)."""
    if not oidc_enabled():
        return redirect(url_for("sso.signin"))
    session["next"] = safe_next(request.args.get("next"))
    client = current_app.extensions[EXTENSION]
    try:
        return client.authorize_redirect(_redirect_uri())
    except requests.RequestException:  # its discovery document could not be fetched
        return _unreachable()


def _unreachable() -> Response:
    log.warning("the OpenID provider could not be reached")
    logs.annotate(signin="provider unreachable")
    return _signin_page(503, "The bank's sign-in service cannot be reached. "
                             "Please try again in a few minutes.")


@bp.get("/signin/callback")
def callback() -> Response:
    """Finish the SSO sign-in: code for tokens, the access token through :mod:`app.auth`."""
    if not oidc_enabled():
        return redirect(url_for("sso.signin"))
    client = current_app.extensions[EXTENSION]
    try:
        token = client.authorize_access_token()
    except (OAuthError, JoseError) as exc:  # denied, forged state, code or ID token refused
        logs.annotate(signin="refused", oauth_error=getattr(exc, "error", type(exc).__name__))
        return _signin_page(400, "Signing in did not complete. Please try again.")
    except requests.RequestException:
        return _unreachable()
    oidc = _auth_state().oidc
    identity = oidc.verify(token["access_token"]) if oidc is not None else None
    if identity is None:
        logs.annotate(signin="refused", oauth_error="access token not accepted")
        return _signin_page(401, "Your sign-in was not accepted by this service.")
    userinfo = token.get("userinfo") or {}
    name = (userinfo.get("name") or userinfo.get("preferred_username")
            or identity.principal.removeprefix("oidc:"))
    after = safe_next(session.get("next"))
    _start_session({"via": "oidc", "principal": identity.principal, "name": name,
                    "scopes": sorted(identity.scopes)})
    logs.annotate(signin="oidc", client=identity.principal)
    return redirect(after, 303)


@bp.post("/signout")
def signout() -> Response:
    """Forget the session, then end the SSO session too where the provider offers it."""
    was_oidc = (session.get(SESSION_KEY) or {}).get("via") == "oidc"
    session.clear()
    back = url_for("sso.signin", signed_out=1, _external=True)
    if was_oidc and oidc_enabled():
        client = current_app.extensions[EXTENSION]
        metadata = client.load_server_metadata()
        if metadata.get("end_session_endpoint"):
            url = client.create_logout_url(post_logout_redirect_uri=back,
                                           client_id=current_app.config["OIDC_CLIENT_ID"])
            return redirect(url["url"], 303)
    return redirect(back, 303)


def _redirect_uri() -> str:
    return current_app.config.get("OIDC_REDIRECT_URI") or url_for("sso.callback",
                                                                  _external=True)


def refused(exc: CSRFError) -> Response:
    """A POST whose CSRF token is missing or stale: 400, as a page for the form and the
    sign-in pages, in the one JSON error shape for the API."""
    logs.annotate(problems=[{"field": "csrf_token", "problem": "missing or invalid"}])
    if request.blueprint in PAGES:
        return html_page("refused.html", 400, title="The form could not be accepted",
                         text="The form was sent without its security token, or the "
                              "token has expired. Open the page again and resend it.")
    return error_response(400, "A request made with a session cookie needs its CSRF token "
                               "(X-CSRFToken), or use a bearer credential.")


def secret_key(config: dict[str, Any]) -> str:
    """``SECRET_KEY``, else the contents of ``SECRET_KEY_FILE``, else a random one.

    A random key works for one process (gunicorn's preloaded master shares it with its
    workers) but signs everyone out on a restart and does not span pods: hence the
    warning.
    """
    if config.get("SECRET_KEY"):
        return str(config["SECRET_KEY"])
    if config.get("SECRET_KEY_FILE"):
        return Path(config["SECRET_KEY_FILE"]).read_text(encoding="utf-8").strip()
    log.warning("SECRET_KEY is not set: sessions end when the server restarts and are "
                "not shared between pods")
    return secrets.token_urlsafe(32)


def init_app(app: Flask) -> None:
    """Sessions, CSRF protection, proxy headers, the OpenID client, the sign-in routes,
    and the session as a source of identities for :mod:`app.auth`'s edge check.

    Register after :func:`app.auth.init_app`.
    """
    config = app.config
    config["SECRET_KEY"] = secret_key(config)
    config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                  PERMANENT_SESSION_LIFETIME=3600 * config["SESSION_HOURS"],
                  # Checked where a cookie is relied on (check_csrf), not on every POST:
                  # bearer-authenticated API calls carry no cookie and need no token.
                  WTF_CSRF_CHECK_DEFAULT=False,
                  # A form left open for a while stays good as long as its session.
                  WTF_CSRF_TIME_LIMIT=3600 * config["SESSION_HOURS"],
                  # Flask-WTF's extra HTTPS check wants a same-site Referer, which the
                  # pages' Referrer-Policy (no-referrer) never lets a browser send; the
                  # token and the SameSite=Lax cookie are the defence.
                  WTF_CSRF_SSL_STRICT=False)
    app.session_interface = TlsAwareSessions()
    CSRFProtect(app)
    if config["TRUSTED_PROXIES"]:
        hops = config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,
                                x_port=hops)
    if oidc_enabled(app):
        # Sign-out's redirect leads on to the SSO, and browsers apply form-action to the
        # redirects of a form's POST: app.auth_guard's CSP adds this origin.
        issuer = urlsplit(config["OIDC_ISSUER"])
        config["CSP_FORM_ACTION_EXTRA"] = f" {issuer.scheme}://{issuer.netloc}"
        app.extensions[EXTENSION] = OAuth(app).register(
            PROVIDER, client_id=config["OIDC_CLIENT_ID"],
            client_secret=config.get("OIDC_CLIENT_SECRET"),
            server_metadata_url=config["OIDC_ISSUER"].rstrip("/")
            + "/.well-known/openid-configuration",
            client_kwargs={"scope": config["OIDC_SIGNIN_SCOPES"],
                           "code_challenge_method": "S256"})
    if app.extensions[auth.EXTENSION].required:
        auth.add_authenticator(app, session_identity)
    # The pages' own POSTs (the form, sign-in, sign-out) need the token even with
    # authentication off; registered after the edge check, so a stranger gets its 401.
    app.before_request(_check_page_posts)
    app.context_processor(signed_in_name)
    app.register_error_handler(CSRFError, refused)
    app.register_blueprint(bp)
