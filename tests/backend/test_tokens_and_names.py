"""Uploads with unfit file names, API tokens that expire or are revoked, and /metrics behind its own token."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.backend.conftest import REPO, make_token

META = {"name": "cnn", "format": "torchscript", "input_shape": [1, 8, 8], "num_classes": 10}
BOUNDARY = "kavach-test-boundary"


def multipart(fields: dict[str, str], filename: bytes, content: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand: httpx percent-escapes control characters in a file's name, a raw
    client need not."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode() + filename
                 + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + content + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def stored_files(service) -> set[Path]:
    root = Path(service.env["STORAGE_DIR"])
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 8, 8), np.uint8), y=np.arange(3))
    return buffer.getvalue()


def cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kavach.cli", "token", *args], check=False, cwd=REPO,
                          env=service.env, capture_output=True, text=True, timeout=120)


def token_ids(service, owner: str) -> list[int]:
    """The ids of owner's tokens, oldest first, from `kavach token list`."""
    out = cli(service, "list", owner)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["id", "label", "created", "expires", "revoked", "state"]
    return [int(line.split("\t")[0]) for line in lines[1:]]


def models_status(service, token: str) -> httpx.Response:
    return httpx.get(f"{service.url}/api/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)


# -- file names ---------------------------------------------------------------------------------

UNFIT_NAMES = [b"model\x00.pt", b"model.pt\x00", b"line\nbreak.pt", b"bell\x07.npz", b"del\x7f.pt",
               b"x" * 300 + b".pt"]


@pytest.mark.parametrize("filename", UNFIT_NAMES, ids=["nul", "nul-suffix", "newline", "bell", "del", "long"])
def test_an_unfit_file_name_is_a_422_and_nothing_is_stored(service, filename):
    before = stored_files(service)
    with service.client() as client:
        models_before = client.get("/api/v1/models").json()["count"]
        datasets_before = client.get("/api/v1/datasets").json()["count"]
        for url, fields, content in (("/api/v1/models", {"metadata": json.dumps(META)}, b"not a model"),
                                     ("/api/v1/datasets", {"name": "named"}, npz_bytes())):
            body, headers = multipart(fields, filename, content)
            response = client.post(url, content=body, headers=headers)
            assert response.status_code == 422, (url, response.text)
            detail = response.json()["detail"]
            assert "control character" in detail or "characters long" in detail, detail
            assert "\x00" not in detail
        assert client.get("/api/v1/models").json()["count"] == models_before
        assert client.get("/api/v1/datasets").json()["count"] == datasets_before
    assert stored_files(service) == before


def test_a_name_beyond_ascii_is_still_taken(service):
    with service.client() as client:
        body, headers = multipart({"name": "odd"}, "données.NPZ".encode(), npz_bytes())
        response = client.post("/api/v1/datasets", content=body, headers=headers)
        assert response.status_code == 201, response.text
        assert client.delete(f"/api/v1/datasets/{response.json()['id']}").status_code == 200


def test_safe_suffix():
    from backend.storage import safe_suffix

    assert safe_suffix("model.pt") == ".pt" and safe_suffix("w.safetensors") == ".safetensors"
    assert safe_suffix("set.NPZ") == ".NPZ" and safe_suffix("noext") == "" and safe_suffix("dir/a.zip") == ".zip"
    assert safe_suffix("a.p t") == "" and safe_suffix("a.té") == "" and safe_suffix("a.$(x)") == ""
    assert len(safe_suffix("a." + "b" * 40)) == 16
    for name in ("a\x00.pt", "a\x1f", "a\x85b", "x" * 256):
        with pytest.raises(ValueError, match="control character|characters long"):
            safe_suffix(name)


# -- tokens -------------------------------------------------------------------------------------

def test_a_token_expires(service):
    out = cli(service, "create", "expiring", "--label", "short", "--expires-in", "6s")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    expires = datetime.strptime(out.stderr.split("expires")[-1].strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert models_status(service, token).status_code == 200
    assert datetime.now(UTC) < expires, "the first request came after the expiry: the test is too slow here"
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.5)
    response = models_status(service, token)
    assert response.status_code == 401 and "API token expired" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoking_a_token_by_id_refuses_it_at_once(service):
    token = make_token(service.env, "revoked-one")
    keep = make_token(service.env, "revoked-one")
    assert models_status(service, token).status_code == 200
    ids = token_ids(service, "revoked-one")
    assert len(ids) == 2
    out = cli(service, "revoke", str(ids[0]))
    assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
    response = models_status(service, token)
    assert response.status_code == 401 and "API token revoked" in response.json()["detail"]
    assert models_status(service, keep).status_code == 200
    assert cli(service, "revoke", "999999").returncode != 0


def test_revoke_all_of_an_owner(service):
    tokens = [make_token(service.env, "everything-goes") for _ in range(2)]
    assert all(models_status(service, token).status_code == 200 for token in tokens)
    out = cli(service, "revoke", "--owner", "everything-goes", "--all")
    assert out.returncode == 0 and "revoked 2 tokens" in out.stdout, out.stdout + out.stderr
    for token in tokens:
        response = models_status(service, token)
        assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert models_status(service, service.tokens["alice"]).status_code == 200  # other owners keep theirs
    listing = cli(service, "list", "everything-goes").stdout.strip().splitlines()[1:]
    assert len(listing) == 2 and all(line.split("\t")[-1] == "revoked" for line in listing)
    assert cli(service, "revoke", "--all").returncode != 0  # --all needs --owner


def test_token_list_never_prints_a_token(service):
    token = make_token(service.env, "listed")
    out = cli(service, "list", "listed")
    assert out.returncode == 0
    assert token not in out.stdout + out.stderr and "kv_" not in out.stdout + out.stderr
    (line,) = out.stdout.strip().splitlines()[1:]
    token_id, label, created, expires, revoked, state = line.split("\t")
    assert token_id.isdigit() and label == "cli" and created.endswith("Z")
    assert (expires, revoked, state) == ("-", "-", "active")


def test_an_unknown_token_still_says_unknown(service):
    response = models_status(service, "kv_not-a-token")
    assert response.status_code == 401 and "unknown API token" in response.json()["detail"]


# -- /metrics -----------------------------------------------------------------------------------

def test_metrics_need_the_metrics_token(service):
    url = f"{service.url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # an owner's API token is not the metrics token
    assert httpx.get(url, headers={"Authorization": f"Bearer {service.tokens['alice']}"}).status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {service.env['METRICS_TOKEN']}"})
    assert response.status_code == 200 and "kavach_jobs" in response.text
    assert httpx.get(f"{service.url}/healthz").status_code == 200  # the probes stay open
    assert httpx.get(f"{service.url}/readyz").status_code == 200


def test_metrics_are_off_without_either_setting():
    """The app in process without its lifespan (no Redis, no database): /metrics refuses before it reads
    anything."""
    from backend.core.config import Settings, get_settings
    from backend.main import create_app

    def get(path: str, headers: dict[str, str] | None = None, **settings) -> httpx.Response:
        app = create_app()
        app.dependency_overrides[get_settings] = lambda: Settings(**settings)

        async def request() -> httpx.Response:
            # ASGITransport sends no lifespan events: no migrations, no Redis
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kavach") as client:
                return await client.get(path, headers=headers)

        return asyncio.run(request())

    off = get("/metrics", METRICS_TOKEN=None, METRICS_PUBLIC=False)
    assert off.status_code == 404
    assert off.json()["detail"] == "metrics are off: set METRICS_TOKEN (or METRICS_PUBLIC=true)"
    assert get("/metrics", METRICS_TOKEN="s3cret", METRICS_PUBLIC=False).status_code == 401
    assert get("/metrics", {"Authorization": "Bearer s3cre"}, METRICS_TOKEN="s3cret", METRICS_PUBLIC=False).status_code == 401
    assert get("/healthz", METRICS_TOKEN=None).status_code == 200
