"""The OpenAPI document is generated from the model's spec, describes what the server
really answers (schemathesis), and the Swagger UI loads nothing from outside."""
from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config._auth import OpenAPIAuthConfig

from ml.spec.schema import CATEGORICAL, validate_record

from helpers import CLIENT_HEADERS

pytestmark = pytest.mark.app_settings(MAX_BATCH=20, TESTING=False)


@pytest.fixture(scope="module")
def document(app):
    response = app.test_client().get("/apispec_1.json")
    assert response.status_code == 200
    return response.get_json()


@pytest.fixture(scope="module")
def predictor(app):
    return app.extensions["credit_model"].predictor


def test_every_feature_is_described_from_the_spec(document, predictor):
    applicant = document["components"]["schemas"]["Applicant"]
    assert applicant["required"] == predictor.spec.feature_names
    assert applicant["additionalProperties"] is False
    assert list(applicant["properties"]) == predictor.spec.feature_names
    for feature in predictor.spec.features:
        field = applicant["properties"][feature.name]
        assert field["title"] == feature.label
        assert feature.description in field["description"]
        if feature.kind == CATEGORICAL:
            assert field["type"] == "string"
            assert field["enum"] == list(feature.codes)
        else:
            assert field["type"] == ("integer" if feature.integer else "number")
            assert field["minimum"] == feature.minimum
            assert field["maximum"] == feature.maximum


def test_protected_attributes_are_not_inputs(document, predictor):
    properties = document["components"]["schemas"]["Applicant"]["properties"]
    assert predictor.spec.protected
    assert not {f.name for f in predictor.spec.protected} & set(properties)


def test_examples_are_the_card_example_and_validate(document, predictor):
    example = predictor.card["example"]
    applicant = document["components"]["schemas"]["Applicant"]
    assert applicant["example"] == example
    assert validate_record(predictor.spec, applicant["example"]) == []
    examples = document["paths"]["/predict"]["post"]["requestBody"]["content"][
        "application/json"]["examples"]
    assert examples["single"]["value"] == example
    assert all(validate_record(predictor.spec, r) == []
               for r in examples["batch"]["value"]["instances"])


def test_examples_are_accepted_by_the_server(document, client):
    examples = document["paths"]["/predict"]["post"]["requestBody"]["content"][
        "application/json"]["examples"]
    for example in examples.values():
        assert client.post("/predict", json=example["value"]).status_code == 200


def test_batch_limit_threshold_and_grades_come_from_config_and_card(document, predictor):
    schemas = document["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["instances"]["maxItems"] == 20
    prediction = schemas["Prediction"]["properties"]
    assert f"{predictor.threshold:.4f}" in prediction["decision"]["description"]
    assert prediction["risk_grade"]["enum"] == [g["grade"] for g in predictor.card["grades"]]
    for grade in predictor.card["grades"][:-1]:
        assert f"`{grade['grade']}`: PD below" in prediction["risk_grade"]["description"]
    assert f"`{predictor.card['grades'][-1]['grade']}`: PD up to 100%" in prediction[
        "risk_grade"]["description"]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 415, 429, 503])
def test_error_responses_share_one_documented_shape(document, status):
    response = document["components"]["responses"][f"Error{status}"]
    assert response["description"]
    assert response["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}


def test_predict_documents_its_real_statuses(document):
    responses = document["paths"]["/predict"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "413", "415", "429", "503"}


def test_each_operation_documents_what_it_needs(document):
    paths = document["paths"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    for path in ("/health_check", "/ready"):
        assert paths[path]["get"]["security"] == []
    for path, method, scope in (("/predict", "post", "score"), ("/feedback", "post", "feedback"),
                                ("/monitoring", "get", "monitor"), ("/metrics", "get", "metrics")):
        assert f"`{scope}` scope" in paths[path][method]["description"]
        assert {"401", "403"} <= set(paths[path][method]["responses"])
    assert "403" not in paths["/model"]["get"]["responses"]


def test_monitoring_documents_the_stored_report_and_its_404(document, client):
    operation = document["paths"]["/monitoring"]["get"]
    assert {"200", "400", "404", "503"} <= set(operation["responses"])
    assert "python -m ml monitor" in operation["description"]
    schema = document["components"]["schemas"]["MonitoringReport"]
    assert {"id", "created_at", "age_seconds", "minimum"} <= set(schema["required"])
    assert schema["properties"]["drift"]["nullable"] and schema["properties"]["decisions"][
        "nullable"]
    body = client.get("/monitoring?last=1").get_json()  # below the minimum window
    assert set(schema["required"]) <= set(body) and body["decisions"] is None


def test_swagger_ui_references_no_outside_url(client):
    page = client.get("/apidocs/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset


def test_swagger_assets_reference_no_cdn(client):
    css = client.get("/flasgger_static/swagger-ui.css").get_data(as_text=True)
    assert "fonts.googleapis" not in css and "@import url(http" not in css


# --------------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def api_schema(app):
    schema = schemathesis.openapi.from_wsgi("/apispec_1.json", app,
                                            headers=dict(CLIENT_HEADERS))
    schema.config.generation.update(modes=["positive", "negative"], max_examples=50)
    # The suite's key for the document's bearer scheme: schemathesis sends it, and drops
    # it in the negative cases that test a missing credential.
    token = CLIENT_HEADERS["Authorization"].removeprefix("Bearer ")
    schema.config.auth.openapi = OpenAPIAuthConfig(schemes={"bearer": {"bearer": token}})
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_server_conforms_to_its_spec(case):
    case.call_and_validate()
