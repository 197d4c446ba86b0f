"""`make run` (python -m backend.run) stops every process it started: on SIGTERM, on Ctrl-C (SIGINT), and,
when it is killed outright, the kernel stops its embedded Redis, its API and its worker.

Each test starts the real thing in a temporary folder (SQLite and the embedded Redis under ./data),
waits for /readyz, lists every descendant from /proc (the embedded Redis and a stand-in for a worker's
sandboxed model process live in sessions of their own), signals run.py, and waits for all of them to go.
A stop signal also stops it while it starts: while it checks a demo model's file in a model process,
and while it waits for the API. A second start does not import torch in run.py itself (the API and the
worker do) and does nothing for demo models already registered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from backend.run import stat_fields

REPO = Path(__file__).resolve().parents[2]
STOP_SECONDS = 20.0

# Put on PYTHONPATH for the test only: a worker (`python -m backend.worker`) starts a long-lived child in
# a session of its own, as its sandboxed model processes will, and writes its pid where the test reads it.
SITECUSTOMIZE = """
import os, subprocess, sys
_path = os.environ.get("KAVACH_TEST_GRANDCHILD_PIDFILE")
if _path and sys.orig_argv[1:3] == ["-m", "backend.worker"]:
    _child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    with open(_path + ".tmp", "w") as _f:
        _f.write(str(_child.pid))
    os.replace(_path + ".tmp", _path)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(root: int) -> dict[int, str]:
    """Every descendant of root, by pid, with its start time (so a reused pid is not mistaken for it)."""
    table = {int(e.name): f for e in os.scandir("/proc") if e.name.isdigit() and (f := stat_fields(int(e.name)))}
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, fields in table.items():
            if int(fields[1]) == parent and pid not in found:
                found[pid] = fields[19]
                todo.append(pid)
    return found


def alive(pid: int, started: str) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"  # a zombie has stopped


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


@dataclass
class Run:
    process: subprocess.Popen
    log: Path
    grandchild: int
    tree: dict[int, str]  # every descendant of run.py once it is ready

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def survivors(self) -> dict[int, str]:
        return {pid: command(pid) for pid, started in self.tree.items() if alive(pid, started)}


@dataclass
class Launch:
    """One `python -m backend.run` in ``folder``; ``seen`` gathers its descendants as they are watched."""

    process: subprocess.Popen
    folder: Path
    port: int
    log: Path
    pidfile: Path
    seen: dict[int, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def watch(self) -> dict[int, str]:
        tree = descendants(self.process.pid)
        self.seen |= tree
        return tree

    def ready(self) -> bool:
        """/readyz answers 200, the worker started its stand-in model process, and the token is printed."""
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code != 200:
                return False
            return self.pidfile.exists() and "API token:" in self.log.read_text(errors="replace")
        return False

    def wait_until(self, what: str, condition, seconds: float = 120.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.watch()
            assert self.process.poll() is None, f"run.py exited before {what}:\n{self.output()}"
            if condition():
                return
            assert time.monotonic() < deadline, f"no {what} after {seconds} s:\n{self.output()}"
            time.sleep(0.05)

    def survivors(self) -> dict[int, str]:
        return {pid: command(pid) for pid, started in self.seen.items() if alive(pid, started)}

    def kill_all(self) -> None:
        """SIGKILL run.py and everything it was seen to start (a test's clean-up, whatever happened)."""
        with contextlib.suppress(ProcessLookupError):
            self.watch()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        grandchild = int(self.pidfile.read_text()) if self.pidfile.exists() else None
        for pid, started in self.seen.items():
            if alive(pid, started) or pid == grandchild:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def launch(folder: Path, **settings: str) -> Launch:
    """Start `python -m backend.run` with its data under ``folder`` (no demo models unless ``settings`` say)."""
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pidfile = folder / "grandchild.pid"
    pidfile.unlink(missing_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "STORAGE_DIR")}
    env.update({"PORT": str(port), "KAVACH_DEMO_MODELS": "0", "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "KAVACH_TEST_GRANDCHILD_PIDFILE": str(pidfile),
                **settings})
    log = folder / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "backend.run"], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return Launch(process=process, folder=folder, port=port, log=log, pidfile=pidfile)


@pytest.fixture
def launched(tmp_path):
    """Start backend.run with ``launched(**settings)``; everything each one started is SIGKILLed afterwards."""
    runs: list[Launch] = []

    def start(**settings: str) -> Launch:
        runs.append(launch(tmp_path, **settings))
        return runs[-1]

    try:
        yield start
    finally:
        for one in runs:
            one.kill_all()


@pytest.fixture
def run(launched):
    """`python -m backend.run` in tmp_path, ready; everything it started is SIGKILLed afterwards in any case."""
    started = launched()
    started.wait_until("readiness", started.ready)
    tree = started.watch()
    return Run(process=started.process, log=started.log, grandchild=int(started.pidfile.read_text()), tree=tree)


def redis_pids(run: Run) -> list[int]:
    return [pid for pid in run.tree if "redis-server" in command(pid)]


def check_tree(run: Run) -> None:
    commands = {pid: command(pid) for pid in run.tree}
    assert redis_pids(run), commands
    assert any("uvicorn" in c for c in commands.values()), commands
    assert any("backend.worker" in c for c in commands.values()), commands
    assert run.grandchild in run.tree, commands  # found through the worker, in its own session
    assert os.getsid(run.grandchild) == run.grandchild


def wait_stopped(run: Run | Launch, seconds: float = STOP_SECONDS) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while (left := run.survivors()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_stops_everything_it_started(run: Run, sig: signal.Signals) -> None:
    check_tree(run)
    started = time.monotonic()
    run.process.send_signal(sig)
    left = wait_stopped(run)
    assert not left, f"still running {time.monotonic() - started:.1f} s after {sig.name}: {left}\n{run.output()}"
    assert run.process.wait(timeout=STOP_SECONDS) == 0, run.output()


def test_killed_outright_its_redis_api_and_worker_die_with_it(run: Run) -> None:
    """SIGKILL leaves run.py no chance to clean up: the kernel kills the embedded Redis and tells the API and
    the worker to stop (PR_SET_PDEATHSIG). A worker's model process must see to itself (the sandbox's job)."""
    check_tree(run)
    direct = {pid: started for pid, started in run.tree.items() if int(stat_fields(pid)[1]) == run.process.pid}
    run.process.kill()
    run.process.wait()
    deadline = time.monotonic() + STOP_SECONDS
    while (left := {pid: command(pid) for pid, s in direct.items() if alive(pid, s)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"outlived run.py: {left}\n{run.output()}"


def demo_folder(folder: Path, copies: int) -> Path:
    """A demo manifest of ``copies`` small digits CNNs (each one file, each checked in a model process)."""
    import json

    import torch

    from engine.models import create_model
    from engine.train.checkpoint import save_checkpoint

    folder.mkdir()
    torch.manual_seed(0)
    save_checkpoint(folder / "cnn0.pt", create_model("digits_cnn", width=4), "digits_cnn",
                    {"num_classes": 10, "width": 4}, {"sigma": 0.25})
    for i in range(1, copies):
        (folder / f"cnn{i}.pt").write_bytes((folder / "cnn0.pt").read_bytes())
    models = [{"file": f"cnn{i}.pt", "name": f"demo CNN {i}", "kind": "classifier", "arch": "digits_cnn",
               "dataset": "digits", "input_shape": [1, 8, 8], "num_classes": 10, "sigma": 0.25} for i in range(copies)]
    (folder / "manifest.json").write_text(json.dumps({"models": models}))
    return folder


def check_stopped(started: Launch, sig: signal.Signals, since: float) -> None:
    left = wait_stopped(started)
    assert not left, f"still running {time.monotonic() - since:.1f} s after {sig.name}: {left}\n{started.output()}"
    assert started.process.wait(timeout=STOP_SECONDS) == 0, started.output()


def loads_torch(pid: int) -> bool:
    """Whether the process has torch's libraries mapped: it imported torch."""
    return any("/torch/" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def test_importing_run_imports_no_torch() -> None:
    """`make run`'s own process only supervises: torch (seconds to import) is for the API and the worker."""
    code = ("import sys, backend.run; heavy = [m for m in ('torch', 'scipy', 'engine.noise') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_while_it_checks_the_demo_models_stops_everything(launched, tmp_path,
                                                                         sig: signal.Signals) -> None:
    """A signal that arrives while a demo model's file is checked in a model process stops run.py there: the
    check is not taken for a broken model (skipped, then on to the API), and nothing it started is left."""
    folder = demo_folder(tmp_path / "demo", copies=3)
    started = launched(KAVACH_DEMO_MODELS="1", KAVACH_DEMO_DIR=str(folder))
    started.wait_until("a demo model's check", lambda: any(
        "backend.sandbox.child" in command(pid) for pid in started.watch()))
    assert any("redis-server" in command(pid) for pid in started.seen)
    since = time.monotonic()
    started.process.send_signal(sig)
    check_stopped(started, sig, since)
    commands = [command(pid) for pid in started.seen]
    assert "demo model skipped" not in started.log.read_text(errors="replace"), started.output()
    assert not any("uvicorn" in c or "backend.worker" in c for c in commands), commands  # never started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_while_the_api_starts_stops_everything(launched, sig: signal.Signals) -> None:
    started = launched()
    started.wait_until("the API and the worker started", lambda: sum(
        "uvicorn" in c or "backend.worker" in c for c in map(command, started.watch())) == 2)
    assert "API token:" not in started.log.read_text(errors="replace")  # still waiting for /readyz
    since = time.monotonic()
    started.process.send_signal(sig)
    check_stopped(started, sig, since)


def test_a_second_start_imports_no_torch_and_leaves_registered_demo_models_be(launched, tmp_path) -> None:
    """The first start registers the demo model (its check imports torch in run.py); the second finds it
    registered and only supervises. How long each took is printed (`pytest -s`), not asserted: on a loaded
    machine it varies (scripts/measure_run_start.py measures it)."""
    folder = demo_folder(tmp_path / "demo", copies=1)
    took = []
    for start in (1, 2):
        began = time.monotonic()
        started = launched(KAVACH_DEMO_MODELS="1", KAVACH_DEMO_DIR=str(folder))
        started.wait_until("readiness", started.ready)
        took.append(time.monotonic() - began)
        registered = "demo models registered for admin: demo CNN 0" in started.log.read_text(errors="replace")
        assert registered == (start == 1), started.output()
        if start == 2:
            assert not loads_torch(started.process.pid), started.output()
            assert "demo model skipped" not in started.log.read_text(errors="replace"), started.output()
        since = time.monotonic()
        started.process.send_signal(signal.SIGTERM)
        check_stopped(started, signal.SIGTERM, since)
    print(f"ready after {took[0]:.1f} s (first start), {took[1]:.1f} s (second start)")
