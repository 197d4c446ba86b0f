"""The dashboard in a real browser against the real service: Debian's chromium driven by playwright-core.

The browser script is frontend/e2e/dashboard.mjs; this test starts the API (serving frontend/dist at /),
a worker and Redis like tests/backend, builds the tiny digits CNN and a small untrained DRUNet denoiser
and hands them over. Screenshots land in tests/e2e/screenshots/. Runs when KAVACH_E2E=1 (`make test-e2e`,
`make test`), which needs `make frontend` first and /usr/bin/chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"

pytestmark = pytest.mark.skipif(os.environ.get("KAVACH_E2E") != "1", reason="browser tests run with KAVACH_E2E=1")


def test_dashboard_end_to_end(tmp_path):
    # with KAVACH_E2E=1 a missing piece is a failure, not a skip: CI must not pass without the browser run
    assert (REPO / "frontend" / "dist" / "index.html").is_file(), "run `make frontend` first"
    assert (REPO / "frontend" / "node_modules" / "playwright-core").is_dir(), "run `make frontend` first"
    assert Path(CHROMIUM).is_file(), f"no chromium at {CHROMIUM} (apt-get install chromium)"
    import torch

    from engine.denoise import DRUNet
    from engine.train.checkpoint import save_checkpoint
    from tests.backend.conftest import start_service
    from tests.backend.test_service import tiny_digits_cnn

    model = tmp_path / "digits_cnn.pt"
    torch.jit.save(torch.jit.script(tiny_digits_cnn()), str(model))
    # a random DRUNet is a real denoiser file: the job through it must still certify and store rows
    denoiser = tmp_path / "drunet_small.pt"
    save_checkpoint(denoiser, DRUNet(1, (8, 16, 16, 16), 1), "drunet_small",
                    {"in_channels": 1, "widths": [8, 16, 16, 16], "blocks": 1}, {})
    root = tmp_path / "service"
    root.mkdir()
    svc, embedded = start_service(root)
    try:
        shutil.rmtree(SCREENSHOTS, ignore_errors=True)
        SCREENSHOTS.mkdir()
        env = {**os.environ, "KAVACH_URL": svc.url, "KAVACH_TOKEN": svc.tokens["alice"], "KAVACH_MODEL": str(model),
               "KAVACH_DENOISER": str(denoiser),
               "CHROMIUM": CHROMIUM, "SCREENSHOTS": str(SCREENSHOTS), "PROFILE_DIR": str(tmp_path / "profile")}
        run = subprocess.run(["node", "e2e/dashboard.mjs"], check=False, cwd=REPO / "frontend", env=env,
                             capture_output=True,
                             text=True, timeout=300)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(svc.logs.iterdir()))
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{logs}"
    finally:
        svc.stop()
        if embedded is not None:
            embedded.stop()
