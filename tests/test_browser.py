"""Headless Chromium opens the Swagger UI and runs "Try it out" on POST /predict."""
from __future__ import annotations

import os
import shutil
import sys
import threading

import pytest
from werkzeug.serving import make_server

from app import create_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        message = f"headless Chromium is not installed ({', '.join(missing)} missing)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser test (make system-deps)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def live_url(trained_model_dir):  # noqa: F811
    app = create_app({"MODEL_DIR": str(trained_model_dir)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,2000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_try_it_out_on_predict_shows_200(browser, live_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(live_url + "/apidocs/")
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


def test_docs_page_loads_nothing_from_outside(browser, live_url):
    browser.get(live_url + "/apidocs/")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources
    assert all(r.startswith(live_url) for r in resources), resources


def test_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        _browser_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _browser_or_skip()
