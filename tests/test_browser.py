"""Headless Chromium opens the Swagger UI and runs "Try it out" on POST /predict."""
from __future__ import annotations

import pytest

from helpers import browser_or_skip

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.app_settings(TESTING=False)]


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
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        browser_or_skip(chromium="/nonexistent/chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browser_or_skip(chromium="/nonexistent/chromium")
