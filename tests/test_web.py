"""The web form at ``/``: generated from the spec, validated like the API, scored by the
same services, a 503 page without a model; and driven in headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app import services, web
from ml.spec.config import PROJECT_ROOT
from ml.spec.schema import CATEGORICAL, example_record

SCREENSHOT = PROJECT_ROOT / "docs" / "img" / "form.png"


@pytest.fixture(scope="module")
def predictor(app):
    return app.extensions["credit_model"].predictor


@pytest.fixture(scope="module")
def example_form(predictor):
    """The card's sample applicant as a browser would post it: every value a string."""
    return {k: "" if v is None else str(v) for k, v in predictor.card["example"].items()}


class Page(HTMLParser):
    """The parts of a page the tests look at: elements by id, labels, asset URLs."""

    def __init__(self, html: str):
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.labels: dict[str, str] = {}
        self.options: dict[str, list[tuple[str, str, bool]]] = {}
        self.assets: list[str] = []
        self._label_for = None
        self._select = None
        self._option = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        a["_tag"] = tag
        if "id" in a:
            self.by_id[a["id"]] = a
        if tag == "label":
            self._label_for = a.get("for")
            self.labels[self._label_for] = ""
        if tag == "select":
            self._select = a["name"]
            self.options[self._select] = []
        if tag == "option":
            self._option = [a.get("value"), "", "selected" in a]
        if tag in ("link", "script", "img") and (a.get("href") or a.get("src")):
            self.assets.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag):
        if tag == "label":
            self._label_for = None
        if tag == "option" and self._option is not None:
            self.options[self._select].append(tuple(self._option))
            self._option = None

    def handle_data(self, data):
        if self._label_for:
            self.labels[self._label_for] += data
        if self._option is not None:
            self._option[1] += data


# --------------------------------------------------------------------------- parse_form


def test_parse_form_converts_numbers_and_keeps_codes(spec):
    expected = example_record(spec)
    form = {name: f" {value} " for name, value in expected.items()}
    form["submit"] = "ignored"
    record, problems = web.parse_form(spec, form)
    assert problems == {}
    assert record == expected
    assert all(isinstance(record[f.name], int) for f in spec.numeric if f.integer)


@pytest.mark.parametrize("text, problem", [
    ("", "is required"),
    ("   ", "is required"),
    ("twelve", "must be a number"),
    ("1,5", "must be a number"),
    ("nan", "must be a number"),
    ("inf", "must be a number"),
    ("12.5", "must be a whole number"),
    ("0", "must be at least 1"),
    ("121", "must be at most 120"),
])
def test_parse_form_reports_bad_numbers(spec, example_form, text, problem):
    form = {**example_form, "duration_in_month": text}
    _, problems = web.parse_form(spec, form)
    assert problems == {"duration_in_month": problem}


@pytest.mark.parametrize("value, problem", [
    ("", "is required: choose one"),
    ("not_a_code", "is not one of the allowed codes"),
])
def test_parse_form_reports_bad_categories(spec, example_form, value, problem):
    _, problems = web.parse_form(spec, {**example_form, "purpose": value})
    assert problems["purpose"].startswith(problem)


def test_empty_field_is_none_when_the_feature_is_nullable(spec, example_form):
    from dataclasses import replace

    nullable = replace(spec.feature("duration_in_month"), nullable=True)
    features = tuple(nullable if f.name == nullable.name else f for f in spec.features)
    lenient = replace(spec, features=features)
    record, problems = web.parse_form(lenient, {**example_form, "duration_in_month": ""})
    assert problems == {}
    assert record["duration_in_month"] is None


def test_message_names_the_field_and_its_unit(spec):
    feature = spec.feature("duration_in_month")
    assert web.message(feature, "must be at most 120") == \
        "Loan duration must be at most 120 months."
    assert web.message(feature, "must be a number") == "Loan duration must be a number."


# --------------------------------------------------------------------------- GET /


def test_form_has_one_labelled_input_per_feature_from_the_spec(client, predictor):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = Page(response.get_data(as_text=True))
    example = predictor.card["example"]
    for f in predictor.spec.features:
        field = page.by_id[f.name]
        assert f.label in page.labels[f.name]  # every input has its <label for>
        if f.description:
            assert f.name + "-hint" in field["aria-describedby"]
        if f.kind == CATEGORICAL:
            assert field["_tag"] == "select"
            options = page.options[f.name]
            assert [(v, t) for v, t, _ in options[1:]] == [(c.code, c.label)
                                                           for c in f.categories]
            assert [v for v, _, selected in options if selected] == [example[f.name]]
        else:
            assert field["_tag"] == "input" and field["type"] == "number"
            assert float(field["min"]) == f.minimum and float(field["max"]) == f.maximum
            assert field["step"] == ("1" if f.integer else "any")
            assert float(field["value"]) == example[f.name]


def test_form_loads_only_local_assets_with_a_strict_policy(client):
    response = client.get("/")
    page = Page(response.get_data(as_text=True))
    assert page.assets and all(a.startswith("/") and not a.startswith("//")
                               for a in page.assets)
    for asset in page.assets:
        assert client.get(asset).status_code == 200
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert "fonts.googleapis" not in response.get_data(as_text=True)


def test_form_routes_stay_out_of_the_openapi_document(client):
    assert "/" not in client.get("/apispec_1.json").get_json()["paths"]


# --------------------------------------------------------------------------- POST /


def test_submit_shows_the_same_prediction_as_the_api(client, app, predictor, example_form):
    seen = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    api = client.post("/predict", json=predictor.card["example"]).get_json()
    with services.prediction_made.connected_to(receiver, app):
        response = client.post("/", data={**example_form, "submit": ""})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = Page(html)
    assert "result-pd" in page.by_id
    assert f"{100 * api['probability_of_default']:.1f} %" in html
    decision = {"approve": "Approve", "decline": "Decline"}[api["decision"]]
    assert re.search(rf'id="result-decision"[^>]*>{decision}<', html)
    assert re.search(rf'id="result-grade">{api["risk_grade"]}\b', html)
    for reason in api["reasons"]:
        assert reason["text"].replace("'", "&#39;") in html
    # Stored and logged like an API prediction: same record, same results, one signal.
    [kwargs] = seen
    assert kwargs["records"] == [predictor.card["example"]]
    assert kwargs["results"][0]["probability_of_default"] == api["probability_of_default"]
    assert kwargs["batch"] is False
    assert kwargs["prediction_id"] in html  # the reference feedback is recorded against
    assert response.headers["Cache-Control"] == "no-store"


def test_invalid_submission_shows_messages_by_the_fields(client, example_form):
    form = {**example_form, "duration_in_month": "500", "credit_amount": "lots"}
    response = client.post("/", data=form)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    page = Page(html)
    assert page.by_id["duration_in_month"]["aria-invalid"] == "true"
    assert "duration_in_month-error" in page.by_id["duration_in_month"]["aria-describedby"]
    assert "Loan duration must be at most 120 months." in html
    assert "must be a number" in html
    assert "Please correct 2 fields" in html
    assert "result-pd" not in page.by_id
    # What the user typed stays in the form, so it can be corrected.
    assert page.by_id["duration_in_month"]["value"] == "500"


def test_submission_never_echoes_markup(client, example_form):
    response = client.post("/", data={**example_form, "purpose": "<script>x</script>"})
    assert response.status_code == 400
    assert "<script>x" not in response.get_data(as_text=True)


def test_without_a_model_the_form_answers_a_503_page(make_app, tmp_path, example_form):
    client = make_app(MODEL_DIR=str(tmp_path)).test_client()
    for response in (client.get("/"), client.post("/", data=example_form)):
        assert response.status_code == 503
        assert response.mimetype == "text/html"
        assert "not available" in response.get_data(as_text=True)


# --------------------------------------------------------------------------- Chromium

def _fill(browser, field_id, text):
    from selenium.webdriver.common.by import By

    element = browser.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(text)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_fills_submits_and_reads_the_result(browser, live_url, predictor,
                                                    tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(live_url + "/")
    Select(browser.find_element(By.ID, "purpose")).select_by_visible_text("Used car")
    _fill(browser, "duration_in_month", "24")
    browser.find_element(By.ID, "assess").click()
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, "result")))
    record = {**predictor.card["example"], "purpose": "car_used", "duration_in_month": 24}
    [expected] = predictor.predict([record])
    pd_text = browser.find_element(By.ID, "result-pd").text
    assert pd_text == f"{100 * expected['probability_of_default']:.1f} %"
    assert browser.find_element(By.ID, "result-decision").text.lower() == expected["decision"]
    assert browser.find_element(By.ID, "result-grade").text.startswith(expected["risk_grade"])
    reasons = browser.find_element(By.ID, "result-reasons").text
    for reason in expected["reasons"][:4]:
        assert reason["text"] in reasons
    # What was submitted stays selected.
    assert Select(browser.find_element(By.ID, "purpose")).first_selected_option.text == \
        "Used car"
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(live_url) for r in resources), resources
    _save_screenshot(browser, tmp_path)


def _save_screenshot(browser, tmp_path: Path) -> None:
    """Keep a screenshot of the result page for the README.

    docs/img/form.png is written when it is missing or ``UPDATE_SCREENSHOTS`` is set, so
    an ordinary test run does not rewrite a tracked image with a new model version.
    """
    shot = tmp_path / "form.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS") or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_shows_the_message_next_to_the_invalid_field(browser, live_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_url + "/")
    _fill(browser, "duration_in_month", "500")
    browser.find_element(By.ID, "assess").click()
    error = WebDriverWait(browser, 20).until(
        ec.presence_of_element_located((By.ID, "duration_in_month-error")))
    assert "Loan duration must be at most 120 months." in error.text
    field = browser.find_element(By.ID, "duration_in_month")
    assert field.get_attribute("aria-invalid") == "true"
    # The message sits in the same field block as its input, right above it.
    container = error.find_element(By.XPATH, "..")
    assert container.find_element(By.ID, "duration_in_month") == field
    assert browser.find_elements(By.ID, "result") == []
    summary = browser.find_element(By.ID, "error-summary")
    assert "Please correct 1 field" in summary.text
