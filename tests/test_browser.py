"""Headless Chromium, signed in as a person: with an API key typed into the sign-in page,
and through a real OpenID provider (the certified ``oidc-provider``, tests/oidc) with
the authorization-code flow; then the form, Swagger UI's "Authorize" and "Try it out",
sign-out, and a form POST without its CSRF token."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from helpers import browser_or_skip, officer_and_viewer_keys

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OIDC_DIR = Path(__file__).parent / "oidc"
PASSWORD = "correct horse"  # tests/oidc/server.mjs's test users
AUDIENCE = "https://credit-risk-api.bank.test"  # a resource indicator is a URI


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key file: "officer" may score, "viewer" may not: (file, {name: key})."""
    return officer_and_viewer_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def app(make_app, keys):
    return make_app(TESTING=False, API_KEYS_FILE=keys[0])


@pytest.fixture(autouse=True)
def signed_out(browser):
    """Every test starts as a stranger: no cookies (both servers share the loopback
    host), and none of the suite's bearer header the conftest's browser sends, which
    would make signing in moot."""
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})


def wait_for(browser, element_id, timeout=20):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(
        ec.presence_of_element_located((By.ID, element_id)))


def click(browser, element_id):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, element_id).click()


def type_into(browser, element_id, text):
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def sign_in_with_key(browser, base, key):
    """Open the form, get sent to the sign-in page, sign in, land back on the form."""
    browser.get(base + "/")
    wait_for(browser, "api_key")
    assert browser.current_url == base + "/signin?next=/"
    type_into(browser, "api_key", key)
    click(browser, "signin")
    wait_for(browser, "assess")


def assess_and_read(browser):
    """Submit the form as prefilled (the card's sample applicant); the PD shown."""
    click(browser, "assess")
    return wait_for(browser, "result-pd").text


def sign_out_and_check(browser, base):
    """Sign out; the form then sends the browser to the sign-in page again."""
    click(browser, "signout")
    wait_for(browser, "signed-out")
    browser.get(base + "/")
    wait_for(browser, "api_key")
    assert browser.current_url == base + "/signin?next=/"


# --------------------------------------------------------------------------- API key


def test_key_sign_in_score_and_sign_out(browser, live_url, keys, app):
    sign_in_with_key(browser, live_url, keys[1]["officer"])
    assert wait_for(browser, "signed-in-as").text == "officer"
    predictor = app.extensions["credit_model"].predictor
    [expected] = predictor.predict([predictor.card["example"]])
    assert assess_and_read(browser) == f"{100 * expected['probability_of_default']:.1f} %"
    sign_out_and_check(browser, live_url)


def test_wrong_key_stays_on_the_sign_in_page(browser, live_url):
    browser.get(live_url + "/signin")
    type_into(browser, "api_key", "crk_not-a-key")
    click(browser, "signin")
    assert "not valid" in wait_for(browser, "signin-problem").text
    browser.get(live_url + "/")
    wait_for(browser, "api_key")  # still not signed in


def test_key_without_the_score_scope_cannot_assess(browser, live_url, keys):
    sign_in_with_key(browser, live_url, keys[1]["viewer"])
    click(browser, "assess")
    assert "score scope" in wait_for(browser, "refused").text
    browser.get(live_url + "/")
    assert browser.find_elements("id", "result") == []


def test_form_post_without_its_csrf_token_is_refused(browser, live_url, keys):
    sign_in_with_key(browser, live_url, keys[1]["officer"])
    browser.execute_script(
        "document.querySelector('form.applicant-form input[name=csrf_token]').remove()")
    click(browser, "assess")
    assert "security token" in wait_for(browser, "refused").text
    assert browser.find_elements("id", "result") == []
    browser.get(live_url + "/")  # the session itself is still good
    assert assess_and_read(browser).endswith("%")


# --------------------------------------------------------------------------- Swagger UI


def test_authorize_then_try_it_out_on_predict_shows_200(browser, live_url, keys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    sign_in_with_key(browser, live_url, keys[1]["officer"])  # the page needs an identity
    wait = WebDriverWait(browser, 20)
    browser.get(live_url + "/apidocs/")
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, ".btn.authorize"))).click()
    field = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, ".auth-container input[type=text], .auth-container input")))
    field.send_keys(keys[1]["officer"])
    browser.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".btn-done").click()
    operation = wait.until(ec.presence_of_element_located(
        (By.ID, "operations-prediction-predict")))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, "#operations-prediction-predict .try-out__btn"))).click()
    body = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, "#operations-prediction-predict textarea.body-param__text")))
    assert '"age_in_years"' in body.get_attribute("value")  # prefilled with the example
    wait.until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, "#operations-prediction-predict .execute"))).click()
    status = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, "#operations-prediction-predict .live-responses-table "
                          "tbody .response-col_status")))
    assert status.text.strip() == "200"
    panel = browser.find_element(By.CSS_SELECTOR, "#operations-prediction-predict "
                                                  ".live-responses-table").text
    assert "probability_of_default" in panel


def test_docs_page_loads_nothing_from_outside(browser, live_url, keys):
    sign_in_with_key(browser, live_url, keys[1]["officer"])
    browser.get(live_url + "/apidocs/")
    wait_for(browser, "swagger-ui")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources
    assert all(r.startswith(live_url) for r in resources), resources


def test_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        browser_or_skip(chromium="/nonexistent/chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browser_or_skip(chromium="/nonexistent/chromium")


# --------------------------------------------------------------------------- SSO


class Slot:
    """A WSGI app filled in later: the server's port must be known before the app is
    built (the provider must know the redirect URI, the app must know the issuer)."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def sso_server():
    """A real HTTP server on a free loopback port for the SSO-configured app."""
    slot = Slot()
    server = make_server("127.0.0.1", 0, slot, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield slot, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def provider_or_skip() -> str:
    """The node binary, once tests/oidc has its packages (``make tests/oidc/node_modules``)."""
    node = shutil.which("node")
    installed = (OIDC_DIR / "node_modules" / "oidc-provider").is_dir()
    if node and installed:
        return node
    message = "the test OpenID provider is not installed (make test installs it)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the SSO browser test")
    pytest.skip(message)


@pytest.fixture(scope="module")
def provider(sso_server):
    """The OpenID provider, started for these tests and stopped by its PID: its issuer."""
    node = provider_or_skip()
    base = sso_server[1]
    env = {**os.environ, "OIDC_TEST_CLIENT_ID": "credit-form",
           "OIDC_TEST_CLIENT_SECRET": "form-secret-for-tests",
           "OIDC_TEST_REDIRECT_URIS": base + "/signin/callback",
           "OIDC_TEST_POST_LOGOUT_URIS": base + "/signin?signed_out=1",
           "OIDC_TEST_AUDIENCE": AUDIENCE}
    process = subprocess.Popen([node, "server.mjs"], cwd=OIDC_DIR, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line, "the OpenID provider did not start"
        yield json.loads(line)["issuer"]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck provider
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def sso_url(sso_server, provider, make_app):
    """The app, people signing in with the provider, served on ``sso_server``."""
    slot, base = sso_server
    slot.app = make_app(TESTING=False, API_KEYS_FILE=None, OIDC_ISSUER=provider,
                        OIDC_AUDIENCE=AUDIENCE, OIDC_CLIENT_ID="credit-form",
                        OIDC_CLIENT_SECRET="form-secret-for-tests",
                        OIDC_SIGNIN_SCOPES="openid profile score monitor")
    return base


def sign_in_with_sso(browser, base, user):
    """Open the form, go to the provider's login page, sign in there, come back."""
    browser.get(base + "/")
    wait_for(browser, "signin-sso")
    click(browser, "signin-sso")
    wait_for(browser, "op-login")
    assert not browser.current_url.startswith(base)  # the provider's own page
    type_into(browser, "op-login", user)
    type_into(browser, "op-password", PASSWORD)
    click(browser, "op-submit")
    wait_for(browser, "assess")
    assert browser.current_url.startswith(base)


def test_sso_sign_in_score_and_sign_out(browser, sso_url):
    sign_in_with_sso(browser, sso_url, "officer")
    assert wait_for(browser, "signed-in-as").text == "Olivia Officer"
    assert assess_and_read(browser).endswith("%")
    click(browser, "signout")
    wait_for(browser, "op-logout").click()  # the provider confirms its own sign-out
    wait_for(browser, "signed-out")
    assert browser.current_url.startswith(sso_url + "/signin")
    browser.get(sso_url + "/")
    wait_for(browser, "signin-sso")  # signed out here, and at the provider:
    click(browser, "signin-sso")
    wait_for(browser, "op-login")  # it asks for the password again


def test_sso_user_without_the_score_scope_cannot_assess(browser, sso_url):
    sign_in_with_sso(browser, sso_url, "visitor")
    click(browser, "assess")
    assert "score scope" in wait_for(browser, "refused").text
