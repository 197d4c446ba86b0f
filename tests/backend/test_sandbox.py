"""The model sandbox with real processes and hostile models: files, memory, CPU, wall clock, cancel, wire.

Each hostile model is a TorchScript archive (a format that carries code); the checks run in real
confined model processes, and through the API where the issue names the behaviour end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from backend.sandbox import confine as confinement
from backend.sandbox.process import (
    ModelFailed,
    ModelFile,
    ModelProcess,
    ModelStopped,
    RemoteGenerator,
    SandboxLimits,
    VotesCancelled,
    check_model_file,
    serve_model,
)
from backend.sandbox.wire import WireError, read_frame, write_frame
from engine.noise import Gaussian
from tests.backend.conftest import SANDBOX_CHECK_SECONDS

pytestmark = pytest.mark.skipif(confinement.available() is not None,
                                reason=f"this machine cannot confine processes: {confinement.available()}")

REPO = Path(__file__).resolve().parents[2]
SECRET = "kavach-secret-7f3a9c"


def script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


class FileThief(torch.nn.Module):
    """Reads a file named at build time (torch.from_file) and writes another; raises with what it read."""

    def __init__(self, secret: str, planted: str, size: int) -> None:
        super().__init__()
        self.secret, self.planted, self.size = secret, planted, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.secret, shared=False, size=self.size, dtype=torch.uint8)
        planted = torch.from_file(self.planted, shared=True, size=64, dtype=torch.uint8).fill_(65)
        raise RuntimeError("stolen: " + str(stolen) + str(planted.sum()))


class Spinner(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            x = x + 1.0
        return x


class Hog(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ones(50_000_000_000 // 4)  # 50 GB
        return x.flatten(1)[:, :10] + y[:10]


class SlowLinear(torch.nn.Module):
    """A real classifier whose every batch takes a while (so a cancel lands between batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1)
        for _ in range(200):
            y = torch.tanh(y * 1.0001)
        return self.fc(y)


def digits_file(path: Path, num_classes: int | None = 10) -> ModelFile:
    return ModelFile(file=str(path), format=None, arch=None, num_classes=num_classes, input_shape=[1, 8, 8])


LIMITS = SandboxLimits(memory_bytes=4 << 30, cpu_seconds=120, start_seconds=60, batch_seconds=60, threads=1)


@pytest.fixture
def secret(tmp_path) -> tuple[Path, Path]:
    path = tmp_path / "server-secret.txt"
    path.write_text(SECRET)
    return path, tmp_path / "planted.bin"


def test_a_model_that_reads_and_writes_files_is_contained(tmp_path, secret):
    secret_path, planted = secret
    model = script(FileThief(str(secret_path), str(planted), len(SECRET)), tmp_path / "thief.pt")
    with pytest.raises(ModelFailed) as failed:
        check_model_file([digits_file(model)], limits=LIMITS, confine=True)
    assert SECRET not in str(failed.value) and "stolen" not in str(failed.value)
    assert str(failed.value) == "the model raised an error during the forward pass on a zero input"
    assert not planted.exists()


def test_unconfined_the_same_model_would_have_read_the_secret(tmp_path, secret):
    # the control: without confinement the file is readable, so the test above shows the sandbox at work
    secret_path, planted = secret
    model = script(FileThief(str(secret_path), str(planted), len(SECRET)), tmp_path / "thief.pt")
    with pytest.raises(Exception, match="stolen"):
        torch.jit.load(str(model))(torch.zeros(1, 1, 8, 8))
    assert planted.exists()


def test_a_model_that_never_returns_is_stopped_by_the_wall_clock(tmp_path):
    model = script(Spinner(), tmp_path / "spin.pt")
    limits = SandboxLimits(memory_bytes=4 << 30, cpu_seconds=600, start_seconds=8, batch_seconds=8, threads=1)
    start = time.monotonic()
    with pytest.raises(ModelStopped, match="wall-clock limit of 8 s"):
        check_model_file([digits_file(model)], limits=limits, confine=True)
    assert time.monotonic() - start < 20


def test_a_model_that_burns_cpu_is_stopped_by_its_cpu_time_limit(tmp_path):
    model = script(Spinner(), tmp_path / "spin.pt")
    limits = SandboxLimits(memory_bytes=4 << 30, cpu_seconds=6, start_seconds=120, batch_seconds=120, threads=1)
    with pytest.raises(ModelStopped, match="CPU-time limit"):
        check_model_file([digits_file(model)], limits=limits, confine=True)


def test_a_model_that_allocates_50_gb_fails_inside_its_memory_limit(tmp_path):
    model = script(Hog(), tmp_path / "hog.pt")
    with pytest.raises(ModelFailed, match="memory limit of 4 GiB"):
        check_model_file([digits_file(model)], limits=LIMITS, confine=True)


def test_a_cancel_stops_the_model_process_between_batches_and_it_serves_on(tmp_path):
    torch.manual_seed(0)
    model = script(SlowLinear(), tmp_path / "slow.pt")
    process = serve_model([digits_file(model)], limits=LIMITS, confine=True, device="cpu",
                          options={"num_classes": 10})
    try:
        x = torch.rand(1, 1, 8, 8)
        start = time.monotonic()
        one = process.votes(x, Gaussian(0.25), [64], 64, RemoteGenerator(1))
        per_batch = time.monotonic() - start
        asked = []
        started = time.monotonic()
        with pytest.raises(VotesCancelled):
            # far more batches than a fast CPU runs before the second poll (0.2 s): the cancel must end them
            process.votes(x, Gaussian(0.25), [64 * 20_000], 64, RemoteGenerator(1),
                          should_stop=lambda: bool(asked.append(1)) or len(asked) >= 2, stop_poll_seconds=0.2)
        # 20,000 batches would take 20,000 x per_batch; it stopped after a few
        assert time.monotonic() - started < max(10.0, 100 * per_batch)
        again = process.votes(x, Gaussian(0.25), [64], 64, RemoteGenerator(1))
        assert torch.equal(one, again)  # same seed, same votes: the process is intact after the cancel
    finally:
        process.close()
    assert not process.alive and not process.scratch.exists()


def test_the_model_process_sees_none_of_the_service_settings(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:password@db/kavach")
    monkeypatch.setenv("REDIS_URL", "redis://secret@redis:6379/0")
    monkeypatch.setenv("METRICS_TOKEN", "metrics-secret")
    env = ModelProcess("check", [], limits=LIMITS)._env()
    assert not {"DATABASE_URL", "REDIS_URL", "METRICS_TOKEN"} & set(env)
    assert not any("secret" in value for value in env.values())


CONFINED_PROBE = r"""
import os, socket, sys, tempfile
from pathlib import Path
from backend.sandbox import confine as c
scratch = Path(tempfile.mkdtemp())
c.confine(c.Limits(memory_bytes=2 << 30, cpu_seconds=60), c.default_paths(scratch, [Path("backend")]))
def denied(f):
    try:
        f()
    except (OSError, ValueError):  # resource.setrlimit reports EPERM as ValueError
        return True
    return False
print({
    "read_outside": denied(lambda: open(sys.argv[1]).read()),
    "write_outside": denied(lambda: open(sys.argv[2], "w")),
    "write_scratch": not denied(lambda: (scratch / "ok").write_text("x")),
    "socket": denied(lambda: socket.socket()),
    "signal_parent": denied(lambda: os.kill(os.getppid(), 0)),
    "set_limit": denied(lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_NOFILE, (64, 64))),
    "exec_reads": not denied(lambda: __import__("subprocess").run(["true"], check=True)),
})
"""


def test_confinement_denies_files_sockets_signals_and_limits_but_keeps_its_scratch(tmp_path, secret):
    secret_path, planted = secret
    out = subprocess.run([sys.executable, "-c", CONFINED_PROBE, str(secret_path), str(planted)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == str({"read_outside": True, "write_outside": True, "write_scratch": True,
                                      "socket": True, "signal_parent": True, "set_limit": True,
                                      "exec_reads": True})
    assert not planted.exists()


def test_the_parent_refuses_malformed_or_oversized_frames():
    for frame in (b"\x7f\xff\xff\xff\x00\x00\x00\x00", b"\x00\x00\x00\x02\x00\x00\x00\x00[]",
                  b"\x00\x00\x00\x05\x00\x00\x00\x00notjs"):
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, frame)
            with pytest.raises(WireError):
                read_frame(read_fd, deadline=time.monotonic() + 5)
        finally:
            os.close(read_fd)
            os.close(write_fd)
    read_fd, write_fd = os.pipe()
    try:  # a tensor whose declared shape is larger than its bytes
        header = json.dumps({"op": "votes", "tensors": [{"name": "counts", "dtype": "int64", "shape": [1000, 1000],
                                                         "offset": 0, "nbytes": 8}]}).encode()
        os.write(write_fd, len(header).to_bytes(4, "big") + (8).to_bytes(4, "big") + header + bytes(8))
        with pytest.raises(WireError):
            read_frame(read_fd, deadline=time.monotonic() + 5)
        write_frame(write_fd, {"op": "ok"}, {"counts": torch.arange(6).view(2, 3)})
        header, tensors = read_frame(read_fd, deadline=time.monotonic() + 5)
        assert header == {"op": "ok"} and torch.equal(tensors["counts"], torch.arange(6).view(2, 3))
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- through the API ---------------------------------------------------------------------------------

DIGITS_META = {"name": "hostile", "format": "torchscript", "input_shape": [1, 8, 8], "num_classes": 10}


def upload(client: httpx.Client, path: Path) -> httpx.Response:
    return client.post("/api/v1/models", files={"file": (path.name, path.read_bytes())},
                       data={"metadata": json.dumps(DIGITS_META)})


def stored_files(service) -> set[Path]:
    return {p for p in Path(service.env["STORAGE_DIR"]).rglob("*") if p.is_file()}


def test_the_api_refuses_a_file_reading_model_without_leaking_a_byte(service, tmp_path, secret):
    secret_path, planted = secret
    model = script(FileThief(str(secret_path), str(planted), len(SECRET)), tmp_path / "thief.pt")
    before = stored_files(service)
    with service.client() as client:
        response = upload(client, model)
        assert response.status_code == 422, response.text
        assert SECRET not in response.text and "stolen" not in response.text
        assert SECRET not in json.dumps(dict(response.headers))
        assert "raised an error during the forward pass" in response.json()["detail"]
        assert all(m["name"] != "hostile" for m in client.get("/api/v1/models").json()["data"])
    assert not planted.exists()
    assert stored_files(service) == before


def test_the_api_stops_a_model_that_never_returns_and_answers_meanwhile(service, tmp_path):
    model = script(Spinner(), tmp_path / "spin.pt")
    result: dict[str, httpx.Response] = {}

    def post() -> None:
        with service.client() as client:
            result["upload"] = upload(client, model)

    uploading = threading.Thread(target=post)
    started = time.monotonic()
    uploading.start()
    time.sleep(1.0)
    with service.client() as client:  # the check runs in a model process: the API keeps answering
        while uploading.is_alive() and time.monotonic() - started < SANDBOX_CHECK_SECONDS - 2:
            tick = time.monotonic()
            assert client.get("/api/v1/models").status_code == 200
            assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - tick < 3.0
            time.sleep(0.5)
    uploading.join(timeout=SANDBOX_CHECK_SECONDS + 30)
    response = result["upload"]
    assert response.status_code == 422, response.text
    assert f"wall-clock limit of {SANDBOX_CHECK_SECONDS} s" in response.json()["detail"]


def test_the_api_refuses_a_model_that_allocates_50_gb(service, tmp_path):
    with service.client() as client:
        response = upload(client, script(Hog(), tmp_path / "hog.pt"))
    assert response.status_code == 422, response.text
    assert "memory limit" in response.json()["detail"]


def test_a_relative_storage_path_reaches_the_model_process_whole(tmp_path, monkeypatch):
    # make run's STORAGE_DIR is relative (data/storage); the model process runs in its own scratch folder
    from backend.modelfiles import model_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    torch.manual_seed(0)
    script(SlowLinear(), tmp_path / "store" / "m.pt")
    file = model_file("store/m.pt", format=None, arch=None, num_classes=10, input_shape=[1, 8, 8])
    assert file.file == str(tmp_path / "store" / "m.pt")
    assert check_model_file([file], limits=LIMITS, confine=True)["shape"] == [1, 10]
