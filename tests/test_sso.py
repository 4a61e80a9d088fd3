"""People sign in (app/sso.py): the session cookie, what it holds, CSRF, sign-out, and
how the form answers a stranger's browser. The SSO flow itself runs end to end against
a real OpenID provider in test_browser.py; here the clients send no bearer header."""
from __future__ import annotations

import base64
import json
import re
import time
import zlib

import pytest
from flask.testing import FlaskClient

from app import sso
from app.auth_keys import create_key, revoke_key
from helpers import assert_error, officer_and_viewer_keys

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key file: "officer" may score, "viewer" may only monitor: (file, {name: key})."""
    return officer_and_viewer_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def app(make_app, keys):
    return make_app(API_KEYS_FILE=keys[0], SECRET_KEY="test-secret", TRUSTED_PROXIES=1)


@pytest.fixture()
def person(app):
    """A browser without credentials: Flask's plain client (no suite bearer header)."""
    return FlaskClient(app, use_cookies=True)


def csrf_token(client, path="/signin") -> str:
    html = client.get(path, headers=BROWSER).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, key, **headers):
    return client.post("/signin", data={"csrf_token": csrf_token(client), "api_key": key,
                                        "next": "/"}, headers=headers)


def session_contents(client) -> dict:
    """The session cookie's payload, decoded as anyone holding the cookie could."""
    value = client.get_cookie("session").value
    compressed = value.startswith(".")
    payload = value.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return json.loads(zlib.decompress(data) if compressed else data)


# --------------------------------------------------------------------------- signing in


def test_a_strangers_browser_is_sent_to_sign_in_and_a_script_gets_401(person):
    response = person.get("/", headers=BROWSER)
    assert response.status_code == 303
    assert response.headers["Location"] == "/signin?next=/"
    assert_error(person.get("/"), 401)  # no Accept: text/html, so a script
    page = person.get("/signin", headers=BROWSER)
    assert page.status_code == 200 and 'id="api_key"' in page.get_data(as_text=True)


def test_signing_in_with_a_key_keeps_its_hash_never_the_key(person, keys):
    response = sign_in(person, keys[1]["officer"])
    assert response.status_code == 303 and response.headers["Location"] == "/"
    stored = session_contents(person)["identity"]
    assert stored.pop("exp") == pytest.approx(time.time() + 8 * 3600, abs=60)
    assert stored == {"via": "api_key", "key": sso.key_digest(keys[1]["officer"]).hex(),
                      "name": "officer"}
    assert keys[1]["officer"] not in json.dumps(session_contents(person))
    page = person.get("/", headers=BROWSER)
    assert page.status_code == 200 and 'id="signed-in-as">officer<' in page.get_data(
        as_text=True)


def test_the_session_cookie_is_httponly_lax_and_secure_behind_tls(person, keys):
    cookie = sign_in(person, keys[1]["officer"]).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP, no proxy said otherwise
    behind = FlaskClient(person.application, use_cookies=True)
    cookie = sign_in(behind, keys[1]["officer"], **{"X-Forwarded-Proto": "https"}
                     ).headers["Set-Cookie"]
    assert "Secure" in cookie


def test_a_wrong_key_is_refused_on_the_page(person):
    response = sign_in(person, "crk_wrong")
    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    assert person.get("/", headers=BROWSER).status_code == 303


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x",
                                    "/\\evil.example", "javascript:alert(1)"])
def test_after_signing_in_the_browser_never_leaves_for_another_site(person, keys, target):
    response = person.post("/signin", data={"csrf_token": csrf_token(person),
                                            "api_key": keys[1]["officer"], "next": target})
    assert response.headers["Location"] == "/"


def test_a_revoked_key_ends_its_sessions(make_app, tmp_path):
    path = str(tmp_path / "keys.yaml")
    key = create_key(path, "temp", ["score"])
    client = FlaskClient(make_app(API_KEYS_FILE=path), use_cookies=True)
    sign_in(client, key)
    assert client.get("/", headers=BROWSER).status_code == 200
    revoke_key(path, "temp")
    assert client.get("/", headers=BROWSER).status_code == 303


def test_a_session_ends_after_session_hours_whatever_the_cookie_says(person, keys,
                                                                     monkeypatch):
    sign_in(person, keys[1]["officer"])
    assert person.get("/", headers=BROWSER).status_code == 200
    later = time.time() + 8 * 3600 + 1
    monkeypatch.setattr(sso.time, "time", lambda: later)
    assert person.get("/", headers=BROWSER).status_code == 303


def test_without_the_score_scope_the_form_says_so(person, keys, example):
    sign_in(person, keys[1]["viewer"])
    form = {**{k: str(v) for k, v in example.items()}, "csrf_token": csrf_token(person, "/")}
    response = person.post("/", data=form, headers=BROWSER)
    assert response.status_code == 403
    assert "score scope" in response.get_data(as_text=True)


# --------------------------------------------------------------------------- CSRF


def test_a_form_post_without_its_csrf_token_is_refused(person, keys, example):
    sign_in(person, keys[1]["officer"])
    form = {k: str(v) for k, v in example.items()}
    response = person.post("/", data=form, headers=BROWSER)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "security token" in response.get_data(as_text=True)
    assert 'id="result"' not in response.get_data(as_text=True)
    token = csrf_token(person, "/")
    assert person.post("/", data={**form, "csrf_token": token}).status_code == 200


def test_the_api_takes_a_session_only_with_its_csrf_header(person, keys, example):
    sign_in(person, keys[1]["officer"])
    body = assert_error(person.post("/predict", json=example), 400)
    assert "CSRF" in body["message"]
    token = csrf_token(person, "/")
    assert person.post("/predict", json=example,
                       headers={"X-CSRFToken": token}).status_code == 200


def test_sign_in_and_sign_out_need_the_token_too(person, keys):
    response = person.post("/signin", data={"api_key": keys[1]["officer"]}, headers=BROWSER)
    assert response.status_code == 400 and "security token" in response.get_data(
        as_text=True)
    sign_in(person, keys[1]["officer"])
    assert person.post("/signout", headers=BROWSER).status_code == 400
    assert person.get("/", headers=BROWSER).status_code == 200  # still signed in


# --------------------------------------------------------------------------- sign-out


def test_signing_out_clears_the_session(person, keys):
    sign_in(person, keys[1]["officer"])
    token = csrf_token(person, "/")
    response = person.post("/signout", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/signin?signed_out=1")
    cookie = person.get_cookie("session")
    assert cookie is None or "identity" not in session_contents(person)
    assert person.get("/", headers=BROWSER).status_code == 303


# --------------------------------------------------------------------------- settings


def test_the_secret_key_can_come_from_a_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-mounted-secret\n")
    assert sso.secret_key({"SECRET_KEY_FILE": str(secret)}) == "from-a-mounted-secret"
    assert sso.secret_key({"SECRET_KEY": "direct"}) == "direct"
    assert sso.secret_key({}) != sso.secret_key({})  # random per start, with a warning


def test_with_an_issuer_the_page_offers_sso_instead_of_a_key(make_app):
    app = make_app(OIDC_ISSUER="https://sso.bank.test/realms/bank",
                   OIDC_AUDIENCE="credit-risk-api", OIDC_CLIENT_ID="credit-form",
                   OIDC_CLIENT_SECRET="x")
    client = FlaskClient(app, use_cookies=True)
    page = client.get("/signin?next=/", headers=BROWSER)
    html = page.get_data(as_text=True)
    assert 'id="signin-sso"' in html and 'id="api_key"' not in html
    assert "form-action 'self' https://sso.bank.test;" in page.headers[
        "Content-Security-Policy"]
    # A callback that did not start here (no state in the session) is refused, on a page.
    callback = client.get("/signin/callback?code=x&state=forged", headers=BROWSER)
    assert callback.status_code == 400 and "did not complete" in callback.get_data(
        as_text=True)


def test_an_unreachable_provider_gets_a_503_page_not_a_500(make_app, keys):
    from helpers import free_port

    app = make_app(OIDC_ISSUER=f"http://127.0.0.1:{free_port()}",
                   OIDC_AUDIENCE="credit-risk-api", OIDC_CLIENT_ID="credit-form")
    response = FlaskClient(app, use_cookies=True).get("/signin/sso", headers=BROWSER)
    assert response.status_code == 503
    assert "cannot be reached" in response.get_data(as_text=True)


def test_sessions_without_a_cookie_skip_the_signer_and_with_one_build_it_once(
        app, person, keys, monkeypatch):
    built = []
    real = sso.SecureCookieSessionInterface.get_signing_serializer

    def counting(self, flask_app):
        built.append(1)
        return real(self, flask_app)

    monkeypatch.setattr(sso.SecureCookieSessionInterface, "get_signing_serializer", counting)
    monkeypatch.setattr(app, "session_interface", sso.TlsAwareSessions())
    for _ in range(3):  # API calls carry no cookie: an empty session, no signer
        assert person.get("/health_check").status_code == 200
    assert built == []
    assert sign_in(person, keys[1]["officer"]).status_code == 303
    page = person.get("/", headers=BROWSER)  # the session is read, the signer reused
    assert 'id="signed-in-as">officer<' in page.get_data(as_text=True)
    assert "identity" in session_contents(person)
    assert len(built) == 1
