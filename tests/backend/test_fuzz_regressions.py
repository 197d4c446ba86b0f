"""What `make fuzz` (schemathesis on openapi.json) found: answers the contract did not declare.

Each test sends the request schemathesis reduced a failure to, and checks both the answer and that
openapi.json declares its status with a schema the body fits.
"""

from __future__ import annotations

import json

import httpx
import pytest

from backend.openapi import OPENAPI_PATH

SCHEMA = json.loads(OPENAPI_PATH.read_text())


def declared(method: str, path: str, status: int) -> dict:
    responses = SCHEMA["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answers {status}, which openapi.json does not declare"
    return responses[str(status)]


def schema_names(response: dict) -> set[str]:
    """The component schemas a declared JSON response may be."""
    schema = response["content"]["application/json"]["schema"]
    return {option["$ref"].rsplit("/", 1)[-1] for option in schema.get("anyOf", [schema])}


def test_every_api_operation_declares_the_401_it_answers_without_a_token(service):
    for path, operations in SCHEMA["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method in operations:
            assert schema_names(declared(method, path, 401)) == {"Message"}
    for method, path in (("GET", "/api/v1/models"), ("POST", "/api/v1/jobs"), ("DELETE", "/api/v1/datasets/1"),
                         ("GET", "/api/v1/jobs/1/events")):
        response = httpx.request(method, f"{service.url}{path}")
        assert response.status_code == 401 and isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("path", ["/api/v1/models/{id}", "/api/v1/datasets/{id}", "/api/v1/jobs/{id}/events"])
def test_a_missing_resource_is_a_declared_404(service, path):
    with service.client() as client:
        for method in SCHEMA["paths"][path]:
            response = client.request(method, path.format(id=987654))
            assert response.status_code == 404 and "not found" in response.json()["detail"]
            assert schema_names(declared(method, path, 404)) == {"Message"}


def test_a_body_that_does_not_parse_is_a_declared_400(service):
    with service.client() as client:
        # JSON that is not UTF-8 (schemathesis: b'\xe6q\xb1\xd5?')
        response = client.post("/api/v1/jobs", content=b"\xe6q\xb1\xd5?", headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and isinstance(response.json()["detail"], str)
        assert schema_names(declared("POST", "/api/v1/jobs", 400)) == {"Message"}
        # a multipart body with no parts, only junk before the closing boundary
        for path in ("/api/v1/models", "/api/v1/datasets"):
            response = client.post(path, content=b"--b\r\nNone--b--\r\n",
                                   headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert response.status_code == 400 and isinstance(response.json()["detail"], str)
            assert schema_names(declared("POST", path, 400)) == {"Message"}


def test_a_422_may_be_validation_errors_or_a_route_s_refusal(service):
    with service.client() as client:
        missing = client.post("/api/v1/datasets", files={"other": ("x", b"")})
        assert missing.status_code == 422 and [e["loc"][-1] for e in missing.json()["detail"]] == ["file", "name"]
        refused = client.post("/api/v1/datasets", files={"file": ("junk.npz", b"junk")}, data={"name": "junk"})
        assert refused.status_code == 422 and isinstance(refused.json()["detail"], str)
    for path in ("/api/v1/models", "/api/v1/datasets", "/api/v1/jobs"):
        assert schema_names(declared("POST", path, 422)) == {"HTTPValidationError", "Message"}


def test_every_declared_422_admits_fastapi_s_validation_errors(service):
    # schemathesis: GET /jobs/0/smoothed-model answered validation errors where only the route's Message was declared
    with service.client() as client:
        response = client.get("/api/v1/jobs/0/smoothed-model")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["path", "id"]
    for path, operations in SCHEMA["paths"].items():
        for method, operation in operations.items():
            if "422" in operation["responses"]:
                assert "HTTPValidationError" in schema_names(declared(method, path, 422)), f"{method} {path}"
