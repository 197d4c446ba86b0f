import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

from backend.openapi import OPENAPI_PATH, render


def test_openapi_json_matches_the_app():
    assert OPENAPI_PATH.read_text() == render(), "openapi.json is stale: run `make openapi` and commit it"


def test_every_route_declares_its_responses():
    import json

    schema = json.loads(render())
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"] or "201" in operation["responses"], (method, path)


def test_the_engine_imports_without_the_web_packages():
    blocked = "['fastapi', 'sqlmodel', 'arq', 'sqlalchemy', 'backend', 'uvicorn']"
    code = f"import sys; sys.modules.update(dict.fromkeys({blocked})); import engine.cli; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
