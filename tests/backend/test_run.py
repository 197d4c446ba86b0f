"""`make run` (python -m backend.run) stops every process it started: on SIGTERM, on Ctrl-C (SIGINT), and,
when it is killed outright, the kernel stops its embedded Redis, its API and its worker.

Each test starts the real thing in a temporary folder (SQLite and the embedded Redis under ./data),
waits for /readyz, lists every descendant from /proc (the embedded Redis and a stand-in for a worker's
sandboxed model process live in sessions of their own), signals run.py, and waits for all of them to go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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


@pytest.fixture
def run(tmp_path):
    """`python -m backend.run` in tmp_path, ready; everything it started is SIGKILLed afterwards in any case."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pidfile = tmp_path / "grandchild.pid"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "STORAGE_DIR")}
    env.update(PORT=str(port), KAVACH_DEMO_MODELS="0", PYTHONPATH=f"{site}{os.pathsep}{REPO}",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", KAVACH_TEST_GRANDCHILD_PIDFILE=str(pidfile))
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "backend.run"], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"run.py exited early:\n{log.read_text(errors='replace')[-4000:]}"
            seen |= descendants(process.pid)
            ready = False
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            if ready and pidfile.exists() and "API token:" in log.read_text(errors="replace"):
                break
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text(errors='replace')[-4000:]}"
            time.sleep(0.2)
        tree = descendants(process.pid)
        seen |= tree
        yield Run(process=process, log=log, grandchild=int(pidfile.read_text()), tree=tree)
    finally:
        seen |= descendants(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()
        grandchild = int(pidfile.read_text()) if pidfile.exists() else None
        for pid, started in seen.items():
            if alive(pid, started) or pid == grandchild:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def redis_pids(run: Run) -> list[int]:
    return [pid for pid in run.tree if "redis-server" in command(pid)]


def check_tree(run: Run) -> None:
    commands = {pid: command(pid) for pid in run.tree}
    assert redis_pids(run), commands
    assert any("uvicorn" in c for c in commands.values()), commands
    assert any("backend.worker" in c for c in commands.values()), commands
    assert run.grandchild in run.tree, commands  # found through the worker, in its own session
    assert os.getsid(run.grandchild) == run.grandchild


def wait_stopped(run: Run, seconds: float = STOP_SECONDS) -> dict[int, str]:
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
