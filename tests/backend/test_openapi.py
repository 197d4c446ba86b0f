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


def test_no_module_under_engine_imports_backend_or_kavach():
    import ast
    from pathlib import Path

    import engine

    def imported(tree: ast.AST) -> set[str]:
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        return names

    root = Path(engine.__file__).parent
    offending = {str(path.relative_to(root)): sorted(name for name in imported(ast.parse(path.read_text()))
                                                      if name.split(".")[0] in ("backend", "kavach"))
                 for path in root.rglob("*.py")}
    assert not {path: names for path, names in offending.items() if names}


BOUND_KEYS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "const", "enum", "$ref")


def bounds(prop: dict) -> list[dict]:
    """A property's bounds, branch by branch (an optional field's anyOf); $refs by the name they point to."""
    return [{key: branch[key].rsplit("/", 1)[-1] if key == "$ref" else branch[key] for key in BOUND_KEYS
             if key in branch} for branch in prop.get("anyOf", [prop])]


def test_the_api_job_config_is_the_engine_config_within_the_server_s_limits():
    """The API (openapi.json, which the dashboard's checks read), the CLI and the worker share one config:
    every field of engine.config.CertifyConfig, with the same bounds, and lower maxima only where a
    server setting sets one."""
    import json

    from backend.core.config import get_settings
    from backend.models import JobConfig
    from engine.config import CertifyConfig

    limits = get_settings()
    ceilings = {"k": limits.MAX_INPUT_ELEMENTS // 2, "n0": limits.MAX_N0, "n": limits.MAX_N,
                "batch_size": limits.MAX_BATCH_SIZE, "pack": limits.MAX_PACK}
    api = json.loads(OPENAPI_PATH.read_text())["components"]["schemas"]["JobConfig"]["properties"]
    engine_schema = CertifyConfig.model_json_schema()["properties"]
    assert issubclass(JobConfig, CertifyConfig)
    assert set(api) == set(engine_schema) | {"denoiser_id"}
    for name, prop in engine_schema.items():
        expected = bounds(prop)
        if name in ceilings:
            expected = [{**branch, "maximum": ceilings[name]} for branch in expected]
        assert bounds(api[name]) == expected, name
        assert api[name].get("default") == prop.get("default"), name
