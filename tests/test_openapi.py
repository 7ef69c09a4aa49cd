"""Schemathesis against the OpenAPI description the package ships, on the real listener:
generated requests (valid and invalid bodies, a real and random tokens) never get a
server error, and every answer matches the documented status codes and schemas."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.helpers import running_listener, spool_files

OPENAPI = files("tap_vero_webhook.listener") / "openapi.yaml"
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
]


@pytest.fixture(scope="module")
def api_listener(tmp_path_factory):
    with running_listener(tmp_path_factory.mktemp("openapi") / "data", new_token=True) as running:
        yield running


schema = schemathesis.openapi.from_path(str(OPENAPI))


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_listener_conforms_to_its_openapi_description(case, api_listener):
    """Each generated request twice: with the token schemathesis made up (401, or 400 for
    broken framing), then with the real one (200 for a valid body, 4xx otherwise)."""
    case.call_and_validate(base_url=api_listener.base_url, checks=CHECKS)
    if "token" in (case.path_parameters or {}):
        case.path_parameters["token"] = api_listener.tokens[0]
        response = case.call_and_validate(base_url=api_listener.base_url, checks=CHECKS)
        if response.status_code == 200 and case.method == "POST":
            assert json.loads(response.content)["accepted"] >= 1


def test_the_openapi_description_ships_in_the_package():
    text = OPENAPI.read_text()
    assert "/hooks/{token}:" in text and "/healthz:" in text


def test_generated_requests_with_a_wrong_token_spool_nothing(api_listener):
    """Runs after the generated cases: the spool holds only what the real token posted."""
    for line in b"".join(spool_files(api_listener.data_dir).values()).splitlines():
        assert line.startswith(b'{"seq":') and line.endswith(b"}")


def test_every_method_gets_a_json_answer(api_listener):
    """Undocumented methods get 405 in the one JSON error shape, with Allow."""
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH", "GET"):
        response = requests.request(method, api_listener.hook_url(), timeout=10)
        assert response.status_code == 405, (method, response.status_code)
        assert response.headers["Allow"] == "POST"
        assert response.json()["error"]["code"] == "method_not_allowed"
    head = requests.head(api_listener.hook_url(), timeout=10)
    assert head.status_code == 405
