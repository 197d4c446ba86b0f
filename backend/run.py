"""`make run`: an embedded Redis (unless REDIS_URL is set), the API on 127.0.0.1:$PORT and one worker.

Prints the URL and a fresh API token. Ctrl-C, SIGTERM and SIGHUP stop everything it started: the API
and the worker (each in its own session, stopped as a whole process group), whatever they started in
sessions of their own (a worker's model processes: on Linux this process is their subreaper, so they
are found even after their parent is gone), then the embedded Redis. Each gets SIGTERM first and
SIGKILL after a grace period. On Linux, the children are also signalled by the kernel if this process
dies abruptly (SIGKILL, OOM): the embedded Redis is killed, the API and the worker are told to stop.

A stop signal is honoured at any moment, the start included (migrations, the demo models' upload checks,
waiting for /readyz): it raises ``Stop``, a BaseException that no ``except Exception`` swallows, and the
main flow checks for a signal received after each step besides.

This process only supervises: it imports no torch (the API and the worker do), and a start that finds the
demo models registered does nothing more for them, so a second `make run` is ready in seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType

import httpx
from sqlmodel import Session

from backend.core.config import DATA_DIR, get_settings
from backend.crud import create_token, get_or_create_owner
from backend.db import get_engine
from backend.demo import seed_demo_models
from backend.embedded import EmbeddedRedis, die_with_parent
from backend.migrate import upgrade_database

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 15.0  # the API and the worker, together, to stop on SIGTERM before SIGKILL
ORPHAN_GRACE_SECONDS = 3.0  # their leftover descendants
PR_SET_CHILD_SUBREAPER = 36


class Stop(BaseException):
    """A stop signal arrived (Ctrl-C, SIGTERM, SIGHUP).

    A BaseException, as KeyboardInterrupt is: code that keeps going past a failed step (``except
    Exception``, e.g. a broken demo model skipped with a warning) must not keep going past a stop.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: int | None = None  # the first stop signal, once one arrived
_stopping = False  # the clean-up has begun: nothing may cut it short


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    if _stopping or _received is not None:  # only the first raises: a second must not cut the clean-up short
        return
    _received = signum
    raise Stop(signum)


def check_stop() -> None:
    """Raise Stop if a stop signal arrived: between steps, in case its Stop was caught on the way."""
    if _received is not None:
        raise Stop(_received)


def become_subreaper() -> bool:
    """Orphaned descendants (a worker's model processes whose worker died) become our children, so the
    clean-up finds and reaps them. Linux only."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def process_table() -> dict[int, list[str]]:
    """Every process's stat fields, by pid, from /proc (whose task/*/children needs a kernel option)."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
                table[int(entry.name)] = fields
    return table


def children_of(pid: int, table: dict[int, list[str]] | None = None) -> set[int]:
    table = process_table() if table is None else table
    return {child for child, fields in table.items() if int(fields[1]) == pid}


def descendants_of(pid: int, table: dict[int, list[str]] | None = None) -> set[int]:
    table = process_table() if table is None else table
    found, todo = set(), [pid]
    while todo:
        for child in children_of(todo.pop(), table) - found:
            found.add(child)
            todo.append(child)
    return found


def is_zombie(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is None or fields[0] == "Z"


def started_at(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = stat_fields(pid)
    return None if fields is None else fields[19]


def reap_orphans(spare: Iterable[int]) -> None:
    """Collect exited descendants that were re-parented to us (never a Popen's own child: it reaps its own)."""
    for pid in children_of(os.getpid()) - set(spare):
        if is_zombie(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Signal a child's whole process group (it leads one: start_new_session), or the child alone."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            if process.poll() is None:
                process.send_signal(sig)


def stop_children(children: list[subprocess.Popen], spare: Iterable[int] = (),
                  grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each child's process group, wait up to `grace`, SIGKILL the groups still there; then every
    descendant left over (in sessions of its own, or orphaned to us) gets the same, with a shorter grace.
    `spare` are other children of ours (the embedded Redis), stopped by their owner afterwards."""
    spare = set(spare)
    own = {child.pid for child in children} | spare
    seen: dict[int, str | None] = {}

    def look() -> None:  # remember every descendant with its start time, so a reused pid is never signalled
        table = process_table()
        for child in children:
            for pid in descendants_of(child.pid, table) - seen.keys():
                seen[pid] = table[pid][19]

    look()
    for child in children:
        signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        while child.poll() is None and time.monotonic() < deadline:
            look()
            time.sleep(0.05)
        signal_group(child, signal.SIGKILL)  # the child may be gone while its group lives on
        if child.poll() is None:
            child.wait()

    def leftover() -> set[int]:
        table = process_table()
        ours = {pid for child in children_of(os.getpid(), table) - own
                for pid in {child, *descendants_of(child, table)}}
        earlier = {pid for pid, start in seen.items() if start is not None and started_at(pid) == start}
        return {pid for pid in ours | earlier if not is_zombie(pid)}

    for sig, wait in ((signal.SIGTERM, ORPHAN_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        left = leftover()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            reap_orphans(own)
            left = leftover()
            time.sleep(0.05)
        if not left:
            break
    reap_orphans(own)


def start_child(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A child in its own session and process group, told to stop (SIGTERM) if this process dies."""
    return subprocess.Popen([sys.executable, *args], env=env, start_new_session=True,
                            preexec_fn=die_with_parent(signal.SIGTERM))  # noqa: PLW1509  (takes no lock)


def main() -> int:
    global _stopping
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    become_subreaper()
    settings = get_settings()
    embedded: EmbeddedRedis | None = None
    children: list[subprocess.Popen] = []
    code = 0
    try:
        upgrade_database(settings.DATABASE_URL)
        check_stop()
        env = dict(os.environ)
        if settings.REDIS_URL is None:
            embedded = EmbeddedRedis(DATA_DIR / "redis")  # known before it starts: the clean-up stops it
            embedded.start()
            env["REDIS_URL"] = embedded.url
        check_stop()
        owner_name = os.environ.get("KAVACH_OWNER", "admin")
        with Session(get_engine()) as session:
            token = create_token(session=session, owner_name=owner_name, token_name="make run")
            if os.environ.get("KAVACH_DEMO_MODELS", "1") != "0":
                seeding = seed_demo_models(session=session, owner=get_or_create_owner(session=session, name=owner_name),
                                           storage_dir=settings.STORAGE_DIR, max_bytes=settings.MAX_UPLOAD_BYTES)
                check_stop()
                if seeding.added:
                    print(f"demo models registered for {owner_name}: {', '.join(m.name for m in seeding.added)}")
        children.append(start_child(["-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1",
                                     "--port", str(settings.PORT)], env))
        children.append(start_child(["-m", "backend.worker"], env))
        url = f"http://127.0.0.1:{settings.PORT}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and all(child.poll() is None for child in children):
            check_stop()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        check_stop()
        if all(child.poll() is None for child in children):
            print(f"\nKavach API: {url}   (docs at {url}/docs)\nAPI token:  {token}\n"
                  f"try: curl -H 'Authorization: Bearer {token}' {url}{settings.API_V1_STR}/datasets\n"
                  "Ctrl-C (or SIGTERM) stops the API, the worker and the embedded Redis.\n", flush=True)
        own = {child.pid for child in children} | ({embedded.process.pid} if embedded and embedded.process else set())
        while all(child.poll() is None for child in children):
            check_stop()
            reap_orphans(own)
            time.sleep(0.5)
        names = ("the API", "the worker")
        for name, child in zip(names, children, strict=True):
            if child.returncode is not None:
                print(f"{name} exited with code {child.returncode}; stopping the rest", file=sys.stderr, flush=True)
        code = 1
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        _stopping = True  # from here on the handler ignores further signals
        redis_pid = embedded.process.pid if embedded is not None and embedded.process is not None else None
        stop_children(children, spare=() if redis_pid is None else (redis_pid,))
        if embedded is not None:
            embedded.stop()
        reap_orphans(())
    return code


if __name__ == "__main__":
    sys.exit(main())
