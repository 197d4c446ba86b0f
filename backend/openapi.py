"""Write the app's OpenAPI schema to openapi.json at the repo root (the dashboard's client is made from it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi.json"


def render() -> str:
    from backend.main import create_app

    return json.dumps(create_app().openapi(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OPENAPI_PATH.read_text() == render() else "openapi.json is stale: run make openapi")
    OPENAPI_PATH.write_text(render())
    print(f"wrote {OPENAPI_PATH}")
