"""Shared fixtures: the shipped spec and data, real trained artifacts, one app factory.

Artifacts are trained once per session by the real trainer, into temporary folders.
Plain helpers (free port, HTTP calls, error-shape checks) are in ``helpers.py``.
"""
from __future__ import annotations

import os
import threading
from unittest import mock

import pytest
from flask import Flask
from flask.testing import FlaskClient
from threadpoolctl import threadpool_limits
from werkzeug.serving import make_server

from app import create_app
from app.auth import SCOPES
from app.auth_keys import create_key
from helpers import CHROMEDRIVER, CHROMIUM, CLIENT_HEADERS, browser_or_skip
from ml.serving import signing
from ml.serving.artifact import read_card
from ml.spec import config
from ml.spec.schema import DatasetSpec
from ml.training.data import load_dataset
from ml.training.train import TrainOptions, train


@pytest.fixture(scope="session", autouse=True)
def private_prediction_store(tmp_path_factory):
    """Point the default prediction store at a session temp file, not the shared /tmp one."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store')}/predictions.db"
    with mock.patch.dict(os.environ, {"DATABASE_URL": url}):
        yield url


@pytest.fixture(scope="session", autouse=True)
def credentials(tmp_path_factory):
    """The whole suite runs authenticated: one all-scopes API key in a session key file.

    Every test app (``BASE_SETTINGS``), every ``create_app()`` and gunicorn started from the
    environment (``API_KEYS_FILE``) accept it, and every test request sends it
    (``CLIENT_HEADERS``, the browser too). Rate limits are lifted far above what any test
    sends; ``test_auth.py`` tests the limits, the refusals and the scopes.
    """
    path = str(tmp_path_factory.mktemp("credentials") / "api-keys.yaml")
    key = create_key(path, "test-suite", SCOPES)
    settings = {"API_KEYS_FILE": path, "RATELIMIT_PREDICT": "100000/second",
                "RATELIMIT_FEEDBACK": "100000/second"}
    BASE_SETTINGS.update(settings)
    CLIENT_HEADERS["Authorization"] = f"Bearer {key}"
    with mock.patch.dict(os.environ, settings):
        yield key
    CLIENT_HEADERS.pop("Authorization", None)


@pytest.fixture(scope="session", autouse=True)
def signing_keys(tmp_path_factory):
    """A test key pair: the trainer signs with it and every loader trusts it (through the
    environment, so subprocesses and real gunicorn servers do too). Returns the paths
    ``(private key, trusted keys dir)``."""
    keys = tmp_path_factory.mktemp("keys")
    signing.generate_key_pair(keys / "signing.pem", keys / "trusted" / "test.pub")
    with mock.patch.dict(os.environ, {signing.SIGNING_KEY_FILE_ENV: str(keys / "signing.pem"),
                                      signing.TRUSTED_KEYS_ENV: str(keys / "trusted")}):
        yield keys / "signing.pem", keys / "trusted"


@pytest.fixture(scope="session", autouse=True)
def one_openmp_thread():
    """HistGradientBoosting's OpenMP threads spin against other jobs on a busy 2-CPU box
    (fits took 60 s instead of 1 s); one thread keeps the tests fast anywhere."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="session")
def spec() -> DatasetSpec:
    """The German Credit spec shipped in data/."""
    return DatasetSpec.load(config.DEFAULT_SPEC)


@pytest.fixture(scope="session")
def dataset(spec):
    """The shipped German Credit data, validated."""
    return load_dataset(config.DEFAULT_DATA, spec)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, signing_keys):
    """A models dir (with LATEST) holding a quick real artifact: logistic regression only."""
    out = tmp_path_factory.mktemp("models")
    train(TrainOptions(out=out, families=("logistic_regression",), cv_repeats=1, n_jobs=1,
                       plots=False))
    return out


@pytest.fixture(scope="session")
def full_training(tmp_path_factory, signing_keys):
    """The default training run, all families and 5x5 CV: (artifact dir, card)."""
    return train(TrainOptions(out=tmp_path_factory.mktemp("full")))


# ----------------------------------------------------------------------- app and browser
# One app factory for every test (flaskr style). A module sets its settings once with
# ``pytestmark = pytest.mark.app_settings(MAX_BATCH=5)``; a test that needs an app of its
# own (a fresh database, another setting) calls ``make_app(**settings)``.

BASE_SETTINGS = {"TESTING": True}  # every test app's settings; credentials go here


def pytest_configure(config):
    config.addinivalue_line("markers", "app_settings(**settings): settings of the app "
                                       "fixture (over the trained model and TESTING)")


class Client(FlaskClient):
    """Flask's test client, sending :data:`helpers.CLIENT_HEADERS` with every request."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.environ_base.update({"HTTP_" + name.upper().replace("-", "_"): value
                                  for name, value in CLIENT_HEADERS.items()})


@pytest.fixture(scope="session")
def make_app(request):
    """Factory: ``make_app(**settings)`` builds a fresh app on the quick trained model.

    ``MODEL_DIR`` defaults to the session's trained model (trained only when needed);
    ``settings`` override it and :data:`BASE_SETTINGS`. Its ``test_client()`` sends the
    shared client headers.
    """
    def make(**settings) -> Flask:
        if "MODEL_DIR" not in settings:
            settings["MODEL_DIR"] = str(request.getfixturevalue("trained_model_dir"))
        app = create_app({**BASE_SETTINGS, **settings})
        app.test_client_class = Client
        return app
    return make


@pytest.fixture(scope="module")
def app(request, make_app):
    """The module's app: ``make_app`` with the settings of the closest ``app_settings`` mark.

    An indirect parametrization (``request.param``, a dict) overrides the mark.
    """
    marker = request.node.get_closest_marker("app_settings")
    settings = dict(marker.kwargs) if marker else {}
    settings.update(getattr(request, "param", {}))
    return make_app(**settings)


@pytest.fixture()
def client(app):
    """A test client of the module's app."""
    return app.test_client()


@pytest.fixture()
def runner(app):
    """A CLI runner of the module's app."""
    return app.test_cli_runner()


@pytest.fixture()
def example(trained_model_dir):
    """A fresh copy of the trained model card's sample applicant (valid; tests may change it)."""
    return dict(read_card(trained_model_dir)["example"])


@pytest.fixture(scope="module")
def live_url(app):
    """The module's app on a real HTTP server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver, with a fresh profile and no background calls."""
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1700",
                 "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    # Authenticated like every test client: the suite's key on every request of the page.
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": dict(CLIENT_HEADERS)})
    yield driver
    driver.quit()
