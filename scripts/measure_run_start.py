"""How long `make run` takes to be ready: `python -m backend.run` started twice in a scratch folder.

For each start it prints the seconds from the launch until /readyz answers 200 and until the token is
printed (what a user waits for), then stops it with SIGTERM and reports how long the stop took. The first
start creates the database, registers the demo models and warms the OS's file cache; the second is what
`make run` costs on a machine where it already ran (add `make`'s own ~0.2 s for its stamp checks).

    python3 scripts/measure_run_start.py [--starts 2] [--demo-models 1]

It measures; it asserts nothing (a timed assertion would flake on a loaded machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(folder: Path, demo_models: str, timeout: float) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "STORAGE_DIR")}
    env.update(PORT=str(port), KAVACH_DEMO_MODELS=demo_models, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    log = folder / "run.log"
    with open(log, "ab") as out:
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "backend.run"], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    found: dict[str, float] = {}
    mark = log.stat().st_size
    try:
        while "token" not in found:
            if process.poll() is not None:
                raise SystemExit(f"backend.run exited early:\n{log.read_text(errors='replace')[-4000:]}")
            if time.monotonic() - began > timeout:
                raise SystemExit(f"not ready after {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")
            if "readyz" not in found:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        found["readyz"] = time.monotonic() - began
            with open(log, "rb") as f:
                f.seek(mark)
                if b"API token:" in f.read():
                    found["token"] = time.monotonic() - began
            time.sleep(0.02)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        found["stop"] = time.monotonic() - stopping
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--demo-models", default="1", help="KAVACH_DEMO_MODELS for the runs (default 1)")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kavach-run-") as tmp:
        for start in range(1, args.starts + 1):
            t = one_start(Path(tmp), args.demo_models, args.timeout)
            print(f"start {start}: /readyz 200 after {t['readyz']:.2f} s, token printed after {t['token']:.2f} s, "
                  f"stopped {t['stop']:.2f} s after SIGTERM", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
