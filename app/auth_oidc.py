"""OpenID Connect access tokens (JWT), verified with PyJWT against the issuer's JWKS.

The signing keys come from ``OIDC_JWKS_URL``, else from the ``jwks_uri`` of the
issuer's ``/.well-known/openid-configuration`` (fetched on the first token, not at
start: the app starts while the identity provider is briefly away). PyJWT's
``PyJWKClient`` caches the key set and refetches it on an unknown ``kid`` (at most once
per cooldown, so random kids cannot make us hammer the provider). A token is accepted
only with an allowed asymmetric algorithm (``OIDC_ALGORITHMS``; ``none`` and HS* can
never be configured), a valid signature, the configured ``iss`` and ``aud``, an
``exp`` in the future, an ``nbf`` (if any) in the past, and a ``sub``.

Scopes are the space-separated ``scope`` claim, plus the list at ``OIDC_ROLES_CLAIM``
(a dotted path, e.g. ``realm_access.roles`` for Keycloak realm roles). Unknown scope
names are ignored.

A verified token is cached (by its text) until its ``exp``, in a bounded map, so a
client sending the same token with every request pays for one signature check; a key
removed from the JWKS therefore stops its already-seen tokens only when they expire
(access tokens are short-lived, minutes).
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Any, Mapping

import jwt

from app.auth import SCOPES, Identity

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
FETCH_TIMEOUT_SECONDS = 5
JWKS_LIFESPAN_SECONDS = 300


class TokenCache:
    """Verified tokens until they expire; at most ``size`` of them (oldest dropped first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[str, Identity] = {}
        self._lock = threading.Lock()

    def get(self, token: str, now: float) -> Identity | None:
        """The cached identity of ``token`` while it has not expired."""
        identity = self._items.get(token)
        if identity is not None and identity.expires_at > now:
            return identity
        return None

    def put(self, token: str, identity: Identity, now: float) -> None:
        """Keep ``identity``; when full, drop the expired, then the oldest half."""
        with self._lock:
            if len(self._items) >= self.size:
                self._items = {t: i for t, i in self._items.items() if i.expires_at > now}
                if len(self._items) >= self.size:
                    keep = list(self._items.items())[self.size // 2:]
                    self._items = dict(keep)
            self._items[token] = identity


def claim_at(claims: Mapping[str, Any], path: str | None) -> Any:
    """The value at a dotted path of the claims (``realm_access.roles``), None if absent."""
    value: Any = claims
    for part in (path or "").split(".") if path else ():
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value if path else None


def scopes_of(claims: Mapping[str, Any], roles_claim: str | None) -> frozenset[str]:
    """The API's scopes a token grants: its ``scope`` claim and its roles claim."""
    granted: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        granted.update(scope.split())
    roles = claim_at(claims, roles_claim)
    if isinstance(roles, list):
        granted.update(r for r in roles if isinstance(r, str))
    return frozenset(granted & set(SCOPES))


class OidcVerifier:
    """Verifies access tokens of one issuer for one audience.

    Args:
        issuer: the expected ``iss``.
        audience: the expected ``aud``.
        jwks_url: the key set's URL; None to discover it from the issuer.
        algorithms: the allowed JWS algorithms (asymmetric only; checked by the config).
        roles_claim: dotted path of a claim listing scopes, or None.
        leeway: seconds of clock skew allowed on ``exp`` and ``nbf``.
        cache_size: verified tokens kept.
        cooldown: least seconds between two refetches of the key set for unknown kids.
    """

    def __init__(self, issuer: str, audience: str, jwks_url: str | None,
                 algorithms: tuple[str, ...], roles_claim: str | None = None,
                 leeway: int = 30, cache_size: int = 10000, cooldown: int = 30) -> None:
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.algorithms, self.roles_claim, self.leeway = list(algorithms), roles_claim, leeway
        self.cache, self.cooldown = TokenCache(cache_size), cooldown
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "OidcVerifier":
        """From the app's settings.

        Raises:
            RuntimeError: ``OIDC_ISSUER`` is set without ``OIDC_AUDIENCE``.
        """
        if not config.get("OIDC_AUDIENCE"):
            raise RuntimeError("OIDC_ISSUER is set but OIDC_AUDIENCE is not")
        return cls(config["OIDC_ISSUER"], config["OIDC_AUDIENCE"], config.get("OIDC_JWKS_URL"),
                   tuple(config["OIDC_ALGORITHMS"]), config.get("OIDC_ROLES_CLAIM"),
                   int(config.get("OIDC_LEEWAY_SECONDS", 30)),
                   int(config.get("TOKEN_CACHE_SIZE", 10000)),
                   int(config.get("OIDC_JWKS_COOLDOWN_SECONDS", 30)))

    def client(self) -> jwt.PyJWKClient:
        """The JWKS client, created on first use (discovering the JWKS URL if needed)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    url = self.jwks_url or self._discover()
                    self._client = jwt.PyJWKClient(url, cache_keys=True,
                                                   lifespan=JWKS_LIFESPAN_SECONDS,
                                                   timeout=FETCH_TIMEOUT_SECONDS,
                                                   cooldown_duration=self.cooldown)
        return self._client

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as response:
            document = json.load(response)
        if document.get("issuer") != self.issuer or not document.get("jwks_uri"):
            raise ValueError("the discovery document does not match OIDC_ISSUER")
        return document["jwks_uri"]

    def verify(self, token: str) -> Identity | None:
        """The identity of a valid token; None for any invalid one (never says why to the
        client; the reason class goes to the request's log line)."""
        now = time.time()
        identity = self.cache.get(token, now)
        if identity is not None:
            return identity
        try:
            if jwt.get_unverified_header(token).get("alg") not in self.algorithms:
                raise jwt.InvalidAlgorithmError("algorithm not allowed")
            key = self.client().get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key, algorithms=self.algorithms,
                                audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            _note_refusal(exc)
            return None
        identity = Identity("oidc:" + str(claims["sub"]), "oidc",
                            scopes_of(claims, self.roles_claim), float(claims["exp"]))
        self.cache.put(token, identity, now)
        return identity


def _note_refusal(exc: Exception) -> None:
    """Why a token was refused, on the request's log line (the class name only)."""
    from app import logs

    if isinstance(exc, (jwt.PyJWKClientConnectionError, OSError)):
        log.warning("the identity provider's keys could not be fetched",
                    extra={"reason": type(exc).__name__})
    try:
        logs.annotate(auth_refused=type(exc).__name__)
    except (AttributeError, RuntimeError):  # pragma: no cover - outside a request
        pass
