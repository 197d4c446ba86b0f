"""`make fuzz`: schemathesis against the repository's openapi.json, on a real loopback service.

Starts the backend tests' stack (uvicorn, one arq worker, an embedded Redis, SQLite in a temporary folder),
registers a TorchScript digits CNN, an uploaded dataset and two finished jobs for alice (so ids 1 and 2
exist and the model and dataset are kept by their jobs), then runs schemathesis's CLI on the static
openapi.json: the contract the dashboard's client is generated from is what is checked, not the app's
live schema. Every operation is covered, with alice's API token for HTTPBearer and METRICS_TOKEN for
/metrics, in positive and negative modes, under the checks

    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance, response_headers_conformance

Settings (environment): FUZZ_EXAMPLES (50) test cases per operation, FUZZ_UPLOAD_EXAMPLES (10) for
POST /api/v1/models (each spawns a sandboxed model check), FUZZ_SECONDS (600) a wall-clock cap on the
schemathesis run, FUZZ_SEED (0), FUZZ_PHASES (examples,coverage,fuzzing,stateful). Writes a summary to
bench/results/fuzz.json (and schemathesis's own JSON report beside it, fuzz-schemathesis.json) and exits non-zero on
any failure, error or an unfinished run; the API's and worker's logs are scanned for tracebacks too.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import numpy as np
import torch

from tests.backend.conftest import REPO, Service, start_service
from tests.backend.test_service import DIGITS_META, start_job, tiny_digits_cnn, upload_model, wait_for

OPENAPI = REPO / "openapi.json"
RESULTS = REPO / "bench" / "results"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance")
SCHEMATHESIS = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"


def setting(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def seed_resources(svc: Service, root: Path) -> dict:
    """Model 1, dataset 1 and jobs 1-2 for alice; the jobs keep the model and dataset from DELETE."""
    path = root / "digits_cnn.pt"
    torch.jit.save(torch.jit.script(tiny_digits_cnn()), str(path))
    with svc.client() as client:
        model = upload_model(client, path, DIGITS_META)
        assert model.status_code == 201, model.text
        buffer = io.BytesIO()
        rng = np.random.default_rng(0)
        np.savez(buffer, x=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), y=np.arange(6))
        dataset = client.post("/api/v1/datasets", files={"file": ("six.npz", buffer.getvalue())},
                              data={"name": "six"})
        assert dataset.status_code == 201, dataset.text
        model_id, dataset_id = model.json()["id"], dataset.json()["id"]
        jobs = [start_job(client, model_id, subset={"count": 4}),
                start_job(client, model_id, dataset=dataset_id, subset={"count": 6})]
        for job in jobs:
            assert job.status_code == 201, job.text
            wait_for(client, job.json()["id"], lambda j: j["state"] in ("done", "failed"), timeout=120)
    return {"model": model_id, "dataset": dataset_id, "jobs": [job.json()["id"] for job in jobs]}


def config_toml(examples: int, upload_examples: int) -> str:
    """schemathesis.toml: per-scheme tokens (read from the environment), bounds, slower operations capped."""
    return f"""\
workers = 1
request-timeout = 30
max-stream-events = 3

[auth.openapi.HTTPBearer]
bearer = "${{KAVACH_FUZZ_TOKEN}}"

[auth.openapi.MetricsToken]
bearer = "${{KAVACH_FUZZ_METRICS_TOKEN}}"

[generation]
max-examples = {examples}
database = "none"

[[operations]]
include-path = "/api/v1/models"
include-method = "POST"
generation = {{ max-examples = {upload_examples} }}
"""


def junit_counts(path: Path) -> dict:
    """Failures and errors per operation (and for the stateful tests) from schemathesis's JUnit report."""
    if not path.exists():
        return {}
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        problems = [child for child in case if child.tag in ("failure", "error")]
        found[case.get("name")] = {
            "failures": sum(child.tag == "failure" for child in problems),
            "errors": sum(child.tag == "error" for child in problems),
            "messages": [(child.get("message") or child.text or "")[:2000] for child in problems]}
    return found


def run_schemathesis(svc: Service, root: Path, out: Path) -> tuple[int | None, float, str]:
    examples, upload_examples = setting("FUZZ_EXAMPLES", 50), setting("FUZZ_UPLOAD_EXAMPLES", 10)
    (out / "fuzz-schemathesis.json").unlink(missing_ok=True)  # a killed run leaves none, not an old one
    config = root / "schemathesis.toml"
    config.write_text(config_toml(examples, upload_examples))
    phases = os.environ.get("FUZZ_PHASES") or "examples,coverage,fuzzing,stateful"
    command = [sys.executable, "-c", SCHEMATHESIS, "--config-file", str(config), "--no-color", "run", str(OPENAPI),
               "--url", svc.url, "--checks", ",".join(CHECKS), "--phases", phases,
               "--seed", str(setting("FUZZ_SEED", 0)), "--max-examples", str(examples),
               "--suppress-health-check", "too_slow,filter_too_much",
               "--report", "junit,json", "--report-junit-path", str(root / "junit.xml"),
               "--report-json-path", str(out / "fuzz-schemathesis.json")]
    env = {**os.environ, "KAVACH_FUZZ_TOKEN": svc.tokens["alice"],
           "KAVACH_FUZZ_METRICS_TOKEN": svc.env["METRICS_TOKEN"], "NO_COLOR": "1"}
    start, lines = time.monotonic(), []
    # schemathesis's progress is echoed as it comes; past FUZZ_SECONDS the run is killed and counts as failed
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    timer = threading.Timer(setting("FUZZ_SECONDS", 600), process.kill)
    timer.start()
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        process.wait()
    finally:
        timer.cancel()
    killed = process.returncode < 0
    code, output = (None if killed else process.returncode), "".join(lines)
    return code, time.monotonic() - start, output


def tracebacks(svc: Service) -> list[str]:
    """Tracebacks the API and the worker logged while fuzzed (the API answers 500 for them; the worker
    fails the job): each with the lines before it."""
    found = []
    for log in sorted(svc.logs.iterdir()):
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                found.append(f"{log.name}: " + "\n".join(lines[max(0, i - 3):i + 40]))
    return found


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        svc, embedded = start_service(root)
        try:
            seeded = seed_resources(svc, root)
            code, seconds, output = run_schemathesis(svc, root, RESULTS)
            ready = httpx.get(f"{svc.url}/readyz", timeout=10).status_code
            logged = tracebacks(svc)
            scenarios = junit_counts(root / "junit.xml")  # per operation, and the stateful tests
        finally:
            svc.stop()
            if embedded is not None:
                embedded.stop()
    report = RESULTS / "fuzz-schemathesis.json"
    stats = json.loads(report.read_text()) if report.exists() else {}
    cases = stats.get("test_cases", {})
    failures = [{"code": f.get("code"), "title": f.get("title"), "count": f.get("count"),
                 "operations": f.get("operations")} for f in stats.get("failures", [])]
    errors = stats.get("errors", [])
    declared = sum(len(methods) for methods in json.loads(OPENAPI.read_text())["paths"].values())
    tested = stats.get("operations", {}).get("tested", 0)
    summary = {
        "schema": "openapi.json", "schemathesis": stats.get("schemathesis_version"), "checks": list(CHECKS),
        "seed": setting("FUZZ_SEED", 0), "max_examples": setting("FUZZ_EXAMPLES", 50),
        "upload_max_examples": setting("FUZZ_UPLOAD_EXAMPLES", 10), "operations_declared": declared,
        "operations_tested": tested, "test_cases": cases.get("generated"),
        "test_cases_with_failures": cases.get("with_failures"), "unique_failures": cases.get("unique_failures"),
        "failures": failures, "errors": errors, "exit_code": code, "timed_out": code is None,
        "seconds": round(seconds, 1), "service_ready_after": ready == 200, "server_tracebacks": len(logged),
        "warnings": {name: found for name, found in stats.get("warnings", {}).items() if found},
        "accepted_per_operation": {name: sum(phase.get("accepted", 0) for phase in rates.values())
                                   for name, rates in stats.get("valid_rates", {}).items()},
        "seeded": seeded, "failing": {name: found for name, found in scenarios.items()
                                        if found["failures"] or found["errors"]},
        "tracebacks": logged[:20], "output_tail": output[-6000:],
    }
    (RESULTS / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"fuzz: {tested}/{declared} operations, {summary['test_cases']} test cases, "
          f"{cases.get('unique_failures')} unique failures, {len(errors)} errors, {len(logged)} server tracebacks, "
          f"{seconds:.0f} s (exit {code}); bench/results/fuzz.json")
    ok = code == 0 and not failures and not errors and not logged and ready == 200 and tested == declared
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
