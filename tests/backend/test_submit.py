"""`kavach submit` and the Python client against a running service (real API, worker, Redis), and the
downloadable smoothed classifier loaded in a fresh process with only torch."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from engine.data.datasets import load_digits
from engine.models.loading import load_model
from engine.noise import Gaussian
from engine.smooth import SmoothedClassifier
from kavach.client import Client, Refused, Unauthorized, Unreachable
from kavach.report import Gate, figures, parse_accuracy_gate
from tests.backend.conftest import REPO, free_port
from tests.backend.test_service import FAST_CONFIG

COUNT = 12
JOB_FLAGS = ["--dataset", "digits", "--count", str(COUNT), "--sigma", "0.25", "--n", "200", "--n0", "20",
             "--batch-size", "100", "--alpha", "0.001", "--seed", "0", "--quiet"]


def submit(service, *args: str, token: str | None = None, url: str | None = None) -> subprocess.CompletedProcess:
    env = {**service.env, "KAVACH_URL": url or service.url, "KAVACH_TOKEN": token or service.tokens["alice"],
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "kavach.cli", "submit", *args], cwd=REPO, env=env,
                          check=False, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def first(service, scripted_model, tmp_path_factory):
    """A first submit of the model file with reports: the job every other test compares with."""
    out = tmp_path_factory.mktemp("reports")
    run = submit(service, str(scripted_model), *JOB_FLAGS, "--name", "gate-cnn",
                 "--min-certified-accuracy", "0.25:0", "--min-acr", "0",
                 "--json", str(out / "report.json"), "--junit", str(out / "junit.xml"),
                 "--markdown", str(out / "report.md"))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    return report, out, run


def test_a_passing_gate_exits_0_with_figures_from_the_rows(service, first):
    report, _, run = first
    assert report["passed"] is True and report["job"]["state"] == "done"
    assert "all 2 gates passed" in run.stdout and "job " in run.stdout
    with Client(service.url, service.tokens["alice"]) as client:
        rows = client.rows(report["job"]["id"])
        summary = client.summary(report["job"]["id"])
    assert len(rows) == COUNT
    # the gate's figures are the API's own: same rows, same convention as the summary
    certified = sum(r.correct and r.radius >= 0.25 for r in rows) / COUNT
    assert report["gates"][0] == {"name": "certified accuracy at radius 0.25 >= 0", "measured": certified,
                                  "required": 0.0, "passed": True}
    assert report["figures"]["acr"] == pytest.approx(summary.acr, abs=1e-12)
    assert report["figures"]["clean_accuracy"] == pytest.approx(summary.clean_accuracy, abs=1e-12)


def test_junit_has_one_case_per_gate_and_markdown_a_png_curve(first):
    _, out, _ = first
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["certified accuracy at radius 0.25 >= 0", "ACR >= 0"]
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert all(c.find("failure") is None for c in cases)
    markdown = (out / "report.md").read_text()
    assert "Kavach robustness gate: ✅ passed" in markdown and "![certified accuracy against radius](report.png)" in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_gate_exits_1_naming_it(service, first, tmp_path):
    report, _, _ = first
    acr, clean = report["figures"]["acr"], report["figures"]["clean_accuracy"]
    model_id = report["job"]["model_id"]
    # the same model, inputs and seeds certify the same radii: clean accuracy passes exactly, ACR + 0.01 cannot
    run = submit(service, "--model-id", str(model_id), *JOB_FLAGS, "--min-certified-accuracy", f"0:{clean!r}",
                 "--min-acr", f"{acr + 0.01!r}", "--junit", str(tmp_path / "junit.xml"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"gate failed: ACR >= {acr + 0.01:g}" in run.stderr
    assert "gate failed: certified accuracy" not in run.stderr
    cases = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite").findall("testcase")
    assert [c.find("failure") is not None for c in cases] == [False, True]


def test_a_baseline_on_the_same_inputs_and_seeds_shows_no_drop(service, first):
    report, _, _ = first
    run = submit(service, "--model-id", str(report["job"]["model_id"]), *JOB_FLAGS,
                 "--baseline", str(report["job"]["id"]), "--max-drop", "0")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 5 gates passed" in run.stdout  # four radii and the ACR


def test_a_baseline_on_other_inputs_is_refused(service, first):
    report, _, _ = first
    flags = [f if f != str(COUNT) else "5" for f in JOB_FLAGS]
    run = submit(service, "--model-id", str(report["job"]["model_id"]), *flags,
                 "--baseline", str(report["job"]["id"]), "--max-drop", "0.1")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "certified other inputs" in run.stderr


def test_could_not_run_exits_2_with_a_clear_message(service, scripted_model):
    bad_token = submit(service, str(scripted_model), *JOB_FLAGS, token="kv_not-a-token")
    assert bad_token.returncode == 2 and "refused the token" in bad_token.stderr
    nobody = submit(service, str(scripted_model), *JOB_FLAGS, url=f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 2 and "cannot reach" in nobody.stderr
    no_dataset = submit(service, str(scripted_model), *[f if f != "digits" else "nope" for f in JOB_FLAGS])
    assert no_dataset.returncode == 2 and "no dataset 'nope'" in no_dataset.stderr
    bad_gate = submit(service, str(scripted_model), *JOB_FLAGS, "--min-certified-accuracy", "0.5")
    assert bad_gate.returncode == 2 and "RADIUS:ACCURACY" in bad_gate.stderr
    over_limit = submit(service, str(scripted_model), *JOB_FLAGS, "--n0", str(10**12))
    assert over_limit.returncode == 2 and "n0" in over_limit.stderr


def test_client_errors_are_typed(service):
    with pytest.raises(Unauthorized, match="refused the token"), Client(service.url, "kv_wrong") as client:
        client.datasets()
    with pytest.raises(Unreachable, match="cannot reach"), Client(f"http://127.0.0.1:{free_port()}", "t") as client:
        client.datasets()
    with pytest.raises(Refused) as refused, Client(service.url, service.tokens["alice"]) as client:
        client.job(999_999)
    assert refused.value.status == 404


def test_gate_parsing_and_comparison():
    assert parse_accuracy_gate("0.5:0.6") == (0.5, 0.6) and parse_accuracy_gate("1:75%") == (1.0, 0.75)
    for text in ("0.5", "x:0.6", "0.5:1.5", "-1:0.5", "nan:0.5"):
        with pytest.raises(ValueError):
            parse_accuracy_gate(text)
    assert Gate("g", 0.6, 0.6).passed and not Gate("g", 0.5999, 0.6).passed
    assert figures([], [0.5]).certified_accuracy == {0.0: 0.0, 0.5: 0.0}


# the program must run with torch alone: the project's packages cannot be imported in that process
FRESH = """
import importlib.abc, json, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('engine', 'backend', 'kavach', 'tests'):
            raise ImportError(f'{name} is not available here')
sys.meta_path.insert(0, Blocked())
import torch
path, xs, seeds = sys.argv[1], torch.load(sys.argv[2]), json.loads(sys.argv[3])
files = {'kavach.json': ''}
if path.endswith('.pt2'):
    program = torch.export.load(path, extra_files=files).module()
else:
    program = torch.jit.load(path, _extra_files=files)
answers = []
for x, seed in zip(xs, seeds):
    torch.manual_seed(seed)
    answers.append(int(program(x[None])[0]))
print(json.dumps([answers, json.loads(files['kavach.json'])]))
"""


DEMO_DIGITS = REPO / "models" / "demo" / "digits_cnn_gaussian_0.25.pt"


@pytest.mark.parametrize(("which", "suffix"), [("torchscript", ".pt"), ("checkpoint", ".pt2")])
def test_the_downloaded_smoothed_classifier_matches_predict_with_torch_alone(service, first, scripted_model,
                                                                            tmp_path, which, suffix):
    """A TorchScript base cannot be re-traced by torch.export: its program is TorchScript; a registered
    architecture's checkpoint becomes a torch.export program. Both answer as the engine's PREDICT."""
    report, _, _ = first
    if which == "torchscript":
        job, model_file = report["job"], scripted_model
    else:
        model_file = DEMO_DIGITS
        run = submit(service, str(model_file), *JOB_FLAGS, "--count", "2", "--json", str(tmp_path / "r.json"))
        assert run.returncode == 0, run.stdout + run.stderr
        job = json.loads((tmp_path / "r.json").read_text())["job"]
    with Client(service.url, service.tokens["alice"]) as client:
        saved = client.download_smoothed_model(job["id"], tmp_path)
        again = client.download_smoothed_model(job["id"], tmp_path / "copy")
    assert saved.name == f"kavach-job{job['id']}-smoothed{suffix}" and saved.read_bytes() == again.read_bytes()
    x = load_digits("test").x[:10].float()
    seeds = list(range(100, 110))
    torch.save(x, tmp_path / "x.pt")
    run = subprocess.run([sys.executable, "-I", "-c", FRESH, str(saved), str(tmp_path / "x.pt"), json.dumps(seeds)],
                         check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shipped, metadata = json.loads(run.stdout)
    c = job["config"]
    assert (metadata["kavach_job"], metadata["n"], metadata["alpha"], metadata["sigma"]) == (
        job["id"], c["n"], c["alpha"], c["sigma"])
    smoothed = SmoothedClassifier(load_model(model_file).eval(), 10, Gaussian(c["sigma"]))
    engine = [smoothed.predict(xi, c["n"], c["alpha"], c["batch_size"], seed=s)
              for xi, s in zip(x, seeds, strict=True)]
    assert shipped == engine
    assert len(set(shipped)) > 1  # real predictions, not one constant answer


def test_only_a_finished_gaussian_job_can_be_downloaded(service, model_id):
    with service.client() as http:
        queued = http.post("/api/v1/jobs", json={"model_id": model_id, "dataset": "digits",
                                                 "subset": {"count": 400}, "config": {**FAST_CONFIG, "n": 20000}})
        job_id = queued.json()["id"]
        answer = http.get(f"/api/v1/jobs/{job_id}/smoothed-model")
        http.post(f"/api/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 409 and "only a finished (done) job" in answer.json()["detail"]
