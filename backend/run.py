"""`make run`: an embedded Redis (unless REDIS_URL is set), the API on 127.0.0.1:$PORT and one worker.

Prints the URL and a fresh API token; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from sqlmodel import Session

from backend.core.config import DATA_DIR, get_settings
from backend.crud import create_token, get_or_create_owner
from backend.db import get_engine
from backend.demo import seed_demo_models
from backend.embedded import EmbeddedRedis
from backend.migrate import upgrade_database


def main() -> None:
    settings = get_settings()
    upgrade_database(settings.DATABASE_URL)
    embedded = None
    env = dict(os.environ)
    if settings.REDIS_URL is None:
        embedded = EmbeddedRedis(DATA_DIR / "redis").start()
        env["REDIS_URL"] = embedded.url
    owner_name = os.environ.get("KAVACH_OWNER", "admin")
    with Session(get_engine()) as session:
        token = create_token(session=session, owner_name=owner_name, token_name="make run")
        if os.environ.get("KAVACH_DEMO_MODELS", "1") != "0":
            seeding = seed_demo_models(session=session, owner=get_or_create_owner(session=session, name=owner_name),
                                       storage_dir=settings.STORAGE_DIR, max_bytes=settings.MAX_UPLOAD_BYTES)
            if seeding.added:
                print(f"demo models registered for {owner_name}: {', '.join(m.name for m in seeding.added)}")
    children = [
        subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1",
                          "--port", str(settings.PORT)], env=env),
        subprocess.Popen([sys.executable, "-m", "backend.worker"], env=env),
    ]
    url = f"http://127.0.0.1:{settings.PORT}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        print(f"\nKavach API: {url}   (docs at {url}/docs)\nAPI token:  {token}\n"
              f"try: curl -H 'Authorization: Bearer {token}' {url}{settings.API_V1_STR}/datasets\n"
              "Ctrl-C stops the API, the worker and the embedded Redis.\n", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
