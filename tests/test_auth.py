"""Access control: every route x every kind of credential, ownership of predictions and
outcomes, rate limits, strict input and security headers.

The OpenID provider's side is real: RSA and EC keys generated here, a JWKS and a
discovery document served by a local HTTP server, tokens signed by PyJWT.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app import __main__ as cli
from app import create_app
from app.auth import SCOPES
from app.auth_keys import create_key, revoke_key

ERROR_KEYS = {"error", "message", "details"}
AUDIENCE = "credit-risk-api"


# ----------------------------------------------------------------------- the provider


class Provider:
    """A JWKS and discovery document on a real local HTTP server, counting fetches."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = {"rsa-1": self.rsa, "ec-1": self.ec}
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    provider.fetches += 1
                    body = provider.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jwks(self) -> dict:
        keys = []
        for kid, key in self.keys.items():
            algorithm = jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") \
                else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def token(self, scopes=(), kid="rsa-1", key=None, algorithm=None, **claims) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": AUDIENCE, "sub": "svc-1", "iat": now,
                   "exp": now + 300, "scope": " ".join(scopes), **claims}
        key = key or self.keys[kid]
        algorithm = algorithm or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(provider: Provider, header: dict, scopes=SCOPES, secret: bytes | None = None):
    """A token built by hand: ``alg: none``, or HS256 keyed with the public key."""
    now = int(time.time())
    payload = {"iss": provider.issuer, "aud": AUDIENCE, "sub": "svc-1", "exp": now + 300,
               "scope": " ".join(scopes)}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    signature = (b"" if secret is None
                 else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    return signing_input + "." + _b64(signature)


@pytest.fixture(scope="module")
def provider():
    provider = Provider()
    yield provider
    provider.server.shutdown()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key file: one key per client, and one revoked."""
    path = str(tmp_path_factory.mktemp("keys") / "api-keys.yaml")
    made = {"full": create_key(path, "full", SCOPES),
            "alice": create_key(path, "alice", ["score", "feedback"]),
            "bob": create_key(path, "bob", ["score", "feedback"]),
            "auditor": create_key(path, "auditor", ["feedback", "feedback:all",
                                                    "feedback:correct"]),
            "watcher": create_key(path, "watcher", ["monitor"]),
            "revoked": create_key(path, "revoked", SCOPES)}
    assert revoke_key(path, "revoked")
    return path, made


def make_app(trained_model_dir, tmp_path, keys, provider, **settings):
    return create_app({"MODEL_DIR": str(trained_model_dir), "TESTING": True,
                       "DATABASE_URL": f"sqlite:///{tmp_path / 'predictions.db'}",
                       "STORE_WRITE": "sync", "API_KEYS_FILE": keys[0],
                       "OIDC_ISSUER": provider.issuer, "OIDC_AUDIENCE": AUDIENCE,
                       "OIDC_JWKS_COOLDOWN_SECONDS": 0, **settings})


@pytest.fixture(scope="module")
def app(trained_model_dir, tmp_path_factory, keys, provider):
    return make_app(trained_model_dir, tmp_path_factory.mktemp("auth-store"), keys, provider)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, status, challenge_error=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert set(response.get_json()) == ERROR_KEYS
    assert response.headers["Cache-Control"] == "no-store"
    if status in (401, 403):
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="credit-risk-api"')
        if challenge_error is None:
            assert "error=" not in challenge
        else:
            assert f'error="{challenge_error}"' in challenge
    return response.get_json()


# ----------------------------------------------------------------------- the route table

# (method, path, scope needed: None = open, "" = any identity, status with the scope)
ROUTES = [
    ("GET", "/health_check", None, 200),
    ("GET", "/ready", None, 200),
    ("GET", "/model", "", 200),
    ("POST", "/predict", "score", 200),
    ("GET", "/", "", 200),
    ("POST", "/", "score", 200),
    ("POST", "/feedback", "feedback", 404),  # allowed; no such prediction
    ("GET", "/monitoring", "monitor", 404),  # allowed; no report yet
    ("GET", "/metrics", "metrics", 200),
    ("GET", "/apidocs/", "", 200),
    ("GET", "/apispec_1.json", "", 200),
    ("GET", "/no-such-route", "", 404),
]


def send(client, method, path, headers, example):
    if path == "/predict":
        return client.post(path, json=example, headers=headers)
    if path == "/feedback":
        return client.post(path, json={"prediction_id": "0" * 32, "outcome": "good"},
                           headers=headers)
    if method == "POST":
        return client.post(path, data={k: "" if v is None else str(v)
                                       for k, v in example.items()}, headers=headers)
    return client.get(path, headers=headers)


def bad_credentials(provider, keys):
    """Every refused credential: (name, headers, RFC 6750 error attribute)."""
    now = int(time.time())
    return [
        ("no credential", {}, None),
        ("basic scheme", {"Authorization": "Basic dXNlcjpwdw=="}, "invalid_request"),
        ("bearer without token", {"Authorization": "Bearer"}, "invalid_request"),
        ("two tokens", {"Authorization": "Bearer a b"}, "invalid_request"),
        ("unknown key", bearer("crk_" + "x" * 43), "invalid_token"),
        ("revoked key", bearer(keys[1]["revoked"]), "invalid_token"),
        ("expired jwt", bearer(provider.token(SCOPES, exp=now - 120, iat=now - 600)),
         "invalid_token"),
        ("jwt for another audience", bearer(provider.token(SCOPES, aud="other-api")),
         "invalid_token"),
        ("jwt from another issuer", bearer(provider.token(SCOPES, iss="https://evil.example")),
         "invalid_token"),
        ("jwt not valid yet", bearer(provider.token(SCOPES, nbf=now + 600)), "invalid_token"),
        ("jwt signed by an unknown key", bearer(provider.token(SCOPES, key=provider.stranger)),
         "invalid_token"),
        ("jwt signed by a stranger under a known kid",
         bearer(provider.token(SCOPES, kid="rsa-1", key=provider.stranger)), "invalid_token"),
        ("alg none", bearer(unsigned_token(provider, {"alg": "none", "kid": "rsa-1"})),
         "invalid_token"),
        ("HS256 keyed with the public key",
         bearer(unsigned_token(provider, {"alg": "HS256", "kid": "rsa-1"},
                               secret=provider.public_pem())), "invalid_token"),
    ]


@pytest.mark.parametrize("method,path,scope,ok", ROUTES)
def test_refused_credentials_get_401_on_every_route_but_the_probes(
        client, provider, keys, example, method, path, scope, ok):
    for name, headers, error in bad_credentials(provider, keys):
        response = send(client, method, path, headers, example)
        if scope is None:
            assert response.status_code == 200, name
            continue
        assert_error(response, 401, error)
        sent = [t for t in headers.get("Authorization", "").split()[1:] if len(t) > 8]
        assert not any(s in response.get_data(as_text=True) for s in sent), name


def lacking(scope: str) -> list[str]:
    return [s for s in SCOPES if s != scope and not s.startswith(scope + ":")]


@pytest.fixture(scope="module")
def roles_app(trained_model_dir, tmp_path_factory, keys, provider):
    """The app reading scopes from Keycloak's realm roles too."""
    return make_app(trained_model_dir, tmp_path_factory.mktemp("roles"), keys, provider,
                    OIDC_ROLES_CLAIM="realm_access.roles")


@pytest.mark.parametrize("kind", ["api key", "jwt", "jwt roles claim"])
@pytest.mark.parametrize("method,path,scope,ok", ROUTES)
def test_valid_credentials_get_403_without_the_scope_and_through_with_it(
        app, roles_app, provider, keys, example, kind, method, path, scope, ok):
    client = (roles_app if kind == "jwt roles claim" else app).test_client()
    if kind == "api key":
        with_scope = keys[1]["full"]
        without = keys[1]["watcher"] if scope != "monitor" else keys[1]["alice"]
    elif kind == "jwt":
        with_scope = provider.token(SCOPES)
        without = provider.token(lacking(scope or "-"))
    else:
        with_scope = provider.token((), realm_access={"roles": list(SCOPES)})
        without = provider.token((), realm_access={"roles": lacking(scope or "-")})
    assert send(client, method, path, bearer(with_scope), example).status_code == ok
    response = send(client, method, path, bearer(without), example)
    if scope:
        assert_error(response, 403, "insufficient_scope")
        assert f'scope="{scope}"' in response.headers["WWW-Authenticate"]
    else:
        assert response.status_code == ok


def test_an_es256_token_is_accepted_and_unknown_scope_names_are_ignored(client, provider):
    token = provider.token(["monitor", "admin", "root"], kid="ec-1")
    assert client.get("/monitoring?last=5", headers=bearer(token)).status_code == 200
    assert_error(client.get("/metrics", headers=bearer(token)), 403, "insufficient_scope")


def test_an_algorithm_off_the_allow_list_is_refused_though_well_signed(
        tmp_path, trained_model_dir, provider, keys):
    app = make_app(trained_model_dir, tmp_path, keys, provider, OIDC_ALGORITHMS=("ES256",))
    client = app.test_client()
    assert_error(client.get("/model", headers=bearer(provider.token(SCOPES))), 401,
                 "invalid_token")
    assert client.get("/model", headers=bearer(provider.token(SCOPES, kid="ec-1"))
                      ).status_code == 200


@pytest.mark.parametrize("value", ["none", "HS256", "RS256,HS512", ""])
def test_symmetric_or_no_algorithms_cannot_be_configured(value):
    from app.config import load_config

    with pytest.raises(ValueError, match="OIDC_ALGORITHMS"):
        load_config(environ={"OIDC_ALGORITHMS": value or " , "})


def test_a_token_is_verified_once_then_cached_and_a_rotated_key_is_fetched(
        tmp_path, trained_model_dir, provider, keys):
    client = make_app(trained_model_dir, tmp_path, keys, provider).test_client()
    token = provider.token(SCOPES)
    before = provider.fetches
    for _ in range(5):
        assert client.get("/model", headers=bearer(token)).status_code == 200
    assert provider.fetches - before == 1  # one key-set fetch, then the cache
    provider.keys["rsa-2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    try:
        rotated = provider.token(SCOPES, kid="rsa-2")
        assert client.get("/model", headers=bearer(rotated)).status_code == 200
        assert provider.fetches - before == 2  # the unknown kid made it refetch once
    finally:
        del provider.keys["rsa-2"]


def test_unknown_kids_do_not_hammer_the_provider_within_the_cooldown(
        tmp_path, trained_model_dir, provider, keys):
    client = make_app(trained_model_dir, tmp_path, keys, provider,
                      OIDC_JWKS_COOLDOWN_SECONDS=60).test_client()
    assert client.get("/model", headers=bearer(provider.token(SCOPES))).status_code == 200
    before = provider.fetches
    for i in range(5):
        token = provider.token(SCOPES, kid=f"random-{i}", key=provider.stranger)
        assert_error(client.get("/model", headers=bearer(token)), 401, "invalid_token")
    assert provider.fetches == before


# ----------------------------------------------------------------------- keys and start


def test_keys_cli_prints_the_key_once_and_stores_only_its_hash(tmp_path, capsys):
    path = str(tmp_path / "keys.json")
    assert cli.main(["keys", "--file", path, "create", "--name", "batch-1",
                     "--scopes", "score", "feedback"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("crk_") and len(key) > 40 and "\n" not in key
    stored = json.load(open(path))["keys"]
    assert stored[0]["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in open(path).read()
    assert cli.main(["keys", "--file", path, "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["name"], e["scopes"]) for e in listed] == [("batch-1", ["score", "feedback"])]
    assert cli.main(["keys", "--file", path, "create", "--name", "batch-1",
                     "--scopes", "score"]) == 1  # the name is taken
    assert cli.main(["keys", "--file", path, "revoke", "batch-1"]) == 0
    assert cli.main(["keys", "--file", path, "revoke", "batch-1"]) == 1
    assert "exists" in capsys.readouterr().err


def test_a_revoked_key_is_refused_without_a_restart(tmp_path, trained_model_dir, provider,
                                                    keys, example):
    path = str(tmp_path / "keys.yaml")
    key = create_key(path, "temp", ["score"])
    client = make_app(trained_model_dir, tmp_path, (path,), provider).test_client()
    assert client.post("/predict", json=example, headers=bearer(key)).status_code == 200
    assert cli.main(["keys", "--file", path, "revoke", "temp"]) == 0
    assert_error(client.post("/predict", json=example, headers=bearer(key)), 401,
                 "invalid_token")


@pytest.mark.parametrize("settings,reason", [
    ({}, "neither API_KEYS_FILE nor OIDC_ISSUER"),
    ({"API_KEYS_FILE": "/nonexistent/keys.yaml"}, "does not exist"),
    ({"OIDC_ISSUER": "https://sso.example"}, "OIDC_AUDIENCE"),
])
def test_auth_on_without_a_credential_source_refuses_to_start(
        trained_model_dir, settings, reason, monkeypatch):
    for name in ("API_KEYS_FILE", "OIDC_ISSUER", "OIDC_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=reason) as info:
        create_app({"MODEL_DIR": str(trained_model_dir), **settings})
    assert "\n" not in str(info.value)


def test_auth_off_opens_every_route(trained_model_dir, tmp_path, example):
    client = create_app({"MODEL_DIR": str(trained_model_dir), "AUTH_REQUIRED": False,
                         "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"}).test_client()
    assert client.post("/predict", json=example).status_code == 200
    assert client.get("/monitoring?last=5").status_code == 200


# ----------------------------------------------------------------------- ownership


def predict(client, key, example, correlation):
    response = client.post("/predict", json=example,
                           headers={**bearer(key), "X-Request-ID": correlation})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] == correlation  # echoed
    return response.get_json()


def feedback(client, key, prediction_id, outcome, **extra):
    return client.post("/feedback", json={"prediction_id": prediction_id, "outcome": outcome,
                                          **extra}, headers=bearer(key))


def rows(app):
    app.extensions["prediction_store"].flush()
    engine = app.extensions["prediction_store"].engine()
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "SELECT p.prediction_id, p.request_id, p.client, o.outcome, o.labelled_by"
            " FROM predictions p LEFT JOIN outcomes o ON o.prediction_id = p.prediction_id"
            " AND o.item = p.item ORDER BY p.id")).mappings()]


def test_a_copied_request_id_reaches_nothing_of_the_other_client(tmp_path, trained_model_dir,
                                                                 provider, keys, example):
    app = make_app(trained_model_dir, tmp_path, keys, provider)
    client, k = app.test_client(), keys[1]
    mine = predict(client, k["alice"], example, "shared-id-1")
    theirs = predict(client, k["bob"], example, "shared-id-1")  # bob copies alice's id
    assert mine["prediction_id"] != theirs["prediction_id"]
    assert len(mine["prediction_id"]) == 32 and mine["prediction_id"] != "shared-id-1"
    # Bob cannot label Alice's prediction, by her prediction id or by the shared id.
    assert_error(feedback(client, k["bob"], mine["prediction_id"], "bad"), 404)
    assert_error(feedback(client, k["bob"], "shared-id-1", "bad"), 404)
    assert feedback(client, k["alice"], mine["prediction_id"], "good").status_code == 200
    assert feedback(client, k["bob"], theirs["prediction_id"], "bad").status_code == 200
    stored = {r["prediction_id"]: r for r in rows(app)}
    assert stored[mine["prediction_id"]] == {
        "prediction_id": mine["prediction_id"], "request_id": "shared-id-1",
        "client": "key:alice", "outcome": "good", "labelled_by": "key:alice"}
    assert stored[theirs["prediction_id"]]["client"] == "key:bob"
    assert stored[theirs["prediction_id"]]["outcome"] == "bad"


def test_an_outcome_changes_only_by_an_explicit_logged_correction(
        tmp_path, trained_model_dir, provider, keys, example, capsys):
    app = make_app(trained_model_dir, tmp_path, keys, provider)
    client, k = app.test_client(), keys[1]
    pid = predict(client, k["alice"], example, "c-1")["prediction_id"]
    assert feedback(client, k["alice"], pid, "good").get_json()["status"] == "created"
    assert_error(feedback(client, k["alice"], pid, "bad"), 409)
    assert_error(feedback(client, k["alice"], pid, "bad", correction=True,
                          reason="keyed in wrong"), 403, "insufficient_scope")
    assert_error(feedback(client, k["auditor"], pid, "bad"), 409)  # sees it, no overwrite
    assert_error(feedback(client, k["auditor"], pid, "bad", correction=True), 400)
    answer = feedback(client, k["auditor"], pid, "bad", correction=True,
                      reason="ledger says defaulted")
    assert answer.status_code == 200 and answer.get_json()["status"] == "corrected"
    [row] = [r for r in rows(app) if r["prediction_id"] == pid]
    assert (row["outcome"], row["labelled_by"]) == ("bad", "key:auditor")
    with app.extensions["prediction_store"].engine().connect() as conn:
        [audit] = conn.execute(sa.text("SELECT previous_outcome, outcome, corrected_by, "
                                       "reason FROM outcome_corrections")).all()
    assert tuple(audit) == ("good", "bad", "key:auditor", "ledger says defaulted")
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()
              if line.startswith("{")]
    assert any(r.get("message") == "outcome corrected" and r.get("by") == "key:auditor"
               for r in logged)


def test_log_lines_carry_the_caller_never_the_credential(
        client, keys, provider, example, capsys):
    token = provider.token(SCOPES, sub="officer-7")
    client.post("/predict", json=example, headers=bearer(keys[1]["alice"]))
    client.get("/model", headers=bearer(token))
    client.get("/model", headers=bearer(keys[1]["revoked"]))
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    clients = [r.get("client") for r in lines if r.get("message") == "request"]
    assert clients[-3:] == ["key:alice", "oidc:officer-7", None]
    assert keys[1]["alice"] not in out and token not in out and keys[1]["revoked"] not in out


# ----------------------------------------------------------------------- abuse


def test_rate_limit_answers_429_with_retry_after_per_client(tmp_path, trained_model_dir,
                                                            provider, keys, example):
    app = make_app(trained_model_dir, tmp_path, keys, provider,
                   RATELIMIT_PREDICT="3/minute", RATELIMIT_FEEDBACK="2/minute")
    client, k = app.test_client(), keys[1]
    for _ in range(3):
        assert client.post("/predict", json=example, headers=bearer(k["alice"])
                           ).status_code == 200
    response = client.post("/predict", json=example, headers=bearer(k["alice"]))
    assert_error(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert client.post("/predict", json=example, headers=bearer(k["bob"])).status_code == 200
    for _ in range(2):
        assert_error(feedback(client, k["bob"], "0" * 32, "good"), 404)
    assert_error(feedback(client, k["bob"], "0" * 32, "good"), 429)
    assert_error(feedback(client, k["alice"], "0" * 32, "good"), 404)


def test_rate_limit_counters_start_no_thread_per_count_and_free_expired_ones(monkeypatch):
    from limits import parse, strategies

    from app.auth_guard import SweptMemoryStorage, counter_storage

    counters = counter_storage("memory://")
    assert isinstance(counters, SweptMemoryStorage)
    started, real_timer = [], threading.Timer

    def timer(*args, **kwargs):
        started.append(1)
        return real_timer(*args, **kwargs)

    monkeypatch.setattr(threading, "Timer", timer)
    limiter, limit = strategies.FixedWindowRateLimiter(counters), parse("2/minute")
    hits = []
    for _ in range(3):  # the library's memory storage starts a timer thread 10 ms apart
        hits.append(limiter.hit(limit, "api.predict", "key:alice"))
        time.sleep(0.03)
    assert hits == [True, True, False] and started == []
    assert limiter.hit(limit, "api.predict", "key:bob")  # counted per client
    monkeypatch.setattr(SweptMemoryStorage, "SWEEP_SECONDS", 0.0)
    counters.incr("expired", expiry=0.01)
    time.sleep(0.03)
    limiter.hit(limit, "api.predict", "key:carol")  # a count sweeps what has expired
    assert "expired" not in counters.storage and "expired" not in counters.expirations
    assert not limiter.hit(limit, "api.predict", "key:alice")  # live counters stay


@pytest.mark.parametrize("body,content_type", [
    (b'{"prediction_id": "a", "outcome": "good", "outcome": "bad"}', "application/json"),
    ('{"prediction_id": "a", "outcome": "good"}'.encode("utf-16"), "application/json"),
    (b'{"prediction_id": "a", "outcome": "g\xe9"}', "application/json"),
])
def test_duplicate_keys_and_non_utf8_bodies_are_refused(client, keys, body, content_type):
    response = client.post("/feedback", data=body, content_type=content_type,
                           headers=bearer(keys[1]["full"]))
    assert_error(response, 400)


def test_a_duplicate_key_in_an_applicant_is_refused(client, keys, example):
    text = json.dumps(example)[:-1] + ', "age_in_years": 99}'
    response = client.post("/predict", data=text, content_type="application/json",
                           headers=bearer(keys[1]["full"]))
    assert_error(response, 400)


def chunked_post(url: str, path: str, body: bytes, key: str) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(body), 4096):
        chunk = body[start:start + 4096]
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    answer = response.status, json.loads(response.read())
    conn.close()
    return answer


@pytest.fixture(scope="module")
def small_app(trained_model_dir, tmp_path_factory, keys, provider):
    """The app with a 16 KiB body limit, for the chunked-body tests on a real server."""
    return make_app(trained_model_dir, tmp_path_factory.mktemp("small"), keys, provider,
                    MAX_CONTENT_LENGTH=16 * 1024)


def test_a_chunked_body_over_the_limit_gets_413_like_a_declared_one(small_app, keys, example):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, small_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, key = f"http://127.0.0.1:{server.server_port}", keys[1]["full"]
    try:
        status, body = chunked_post(url, "/predict", json.dumps(example).encode(), key)
        assert status == 200, body
        big = json.dumps({"instances": [example] * 100}).encode()
        assert len(big) > 16 * 1024
        status, body = chunked_post(url, "/predict", big, key)
        assert status == 413 and set(body) == ERROR_KEYS
    finally:
        server.shutdown()


# ----------------------------------------------------------------------- headers


def test_html_pages_carry_a_strict_csp_and_json_is_not_stored(client, keys):
    headers = bearer(keys[1]["full"])
    for path in ("/", "/apidocs/"):
        response = client.get(path, headers=headers)
        assert response.status_code == 200 and response.mimetype == "text/html"
        csp = response.headers["Content-Security-Policy"]
        script_src = next(p for p in csp.split(";") if p.strip().startswith("script-src"))
        assert "unsafe-inline" not in script_src and "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
    nonce = script_src.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in response.get_data(as_text=True)
    for path in ("/model", "/ready", "/no-such-route"):
        assert client.get(path, headers=headers).headers["Cache-Control"] == "no-store"


def test_a_wrong_method_on_a_probe_is_405_for_anyone_elsewhere_auth_comes_first(client, keys):
    assert_error(client.post("/ready"), 405)
    assert_error(client.get("/predict"), 401)
    assert_error(client.get("/predict", headers=bearer(keys[1]["watcher"])), 403,
                 "insufficient_scope")  # a route's scope covers all its methods
    assert_error(client.get("/predict", headers=bearer(keys[1]["full"])), 405)


def test_a_table_from_before_gets_the_identity_columns_and_old_rows_keep_their_id(tmp_path):
    from ml.monitoring.store import PredictionStore

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the table as the first release made it
        conn.exec_driver_sql(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY, request_id VARCHAR(128) NOT "
            "NULL, item INTEGER NOT NULL, batch BOOLEAN NOT NULL, created_at DATETIME NOT "
            "NULL, model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL, "
            "features TEXT NOT NULL, probability_of_default FLOAT NOT NULL, decision "
            "VARCHAR(16) NOT NULL, outcome VARCHAR(64), labelled_at DATETIME)")
        conn.exec_driver_sql(
            "INSERT INTO predictions (request_id, item, batch, created_at, model_name, "
            "model_version, features, probability_of_default, decision) VALUES ('old-1', 0, "
            "0, '2026-01-01 00:00:00', 'm', 'v', '{}', 0.2, 'approve')")
    engine.dispose()
    store = PredictionStore(url, write="sync")
    assert store.label("old-1", 0, "good", by="key:bob", owner="key:bob") == ("unknown", None)
    state, row = store.label("old-1", 0, "good", by="key:auditor")
    assert state == "created" and row["client"] is None and row["labelled_by"] == "key:auditor"
    store.dispose()
