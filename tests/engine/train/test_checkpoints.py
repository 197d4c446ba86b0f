"""Every checkpoint the trainers write loads weights-only, and the committed demo models are real."""

import json
import pathlib

import pytest
import torch
from typer.testing import CliRunner

from engine.cli import app
from engine.data import load_dataset
from engine.denoise import DRUNet
from engine.models import load_model
from engine.models.loading import safe_torch_load
from engine.train.checkpoint import read_meta
from engine.train.manifest import manifest_entry

runner = CliRunner()
DEMO = pathlib.Path(__file__).parents[3] / "models" / "demo"


def train(*args: str) -> dict:
    result = runner.invoke(app, ["train", *args, "--max-steps", "2", "--eval-count", "50"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["none", "gaussian", "consistency", "smoothmix"])
def test_classifier_checkpoints_load_with_their_architecture(tmp_path, method):
    out = tmp_path / f"{method}.pt"
    report = train("classifier", "--out", str(out), "--method", method, "--epochs", "2", "--smoothmix-steps", "1")
    model = load_model(out)  # the architecture and class count come from the file
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    meta = read_meta(out)
    assert meta["training"]["method"] == method and meta["input_shape"] == [1, 8, 8]
    assert meta["command"].startswith("kavach train classifier")
    log = [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and report["final"]["epoch"] == 2
    assert "clean_accuracy" in log[-1]["metrics"]
    assert ("noisy_accuracy" in log[-1]["metrics"]) == (method != "none")
    assert manifest_entry(out)["kind"] == "classifier"


@pytest.mark.parametrize("objective", ["mse", "stability", "mse+stability"])
def test_denoiser_checkpoints_load_as_drunet_of_their_widths(tmp_path, objective):
    classifier = tmp_path / "f.pt"
    train("classifier", "--out", str(classifier), "--method", "none", "--epochs", "1")
    out = tmp_path / "d.pt"
    train("denoiser", "--out", str(out), "--objective", objective, "--classifier", str(classifier),
          "--widths", "4,8,8,8", "--blocks", "1", "--epochs", "1", "--stability-epochs", "1", "--sigmas", "0.25,0.5")
    model = load_model(out)
    assert isinstance(model, DRUNet) and model.widths == (4, 8, 8, 8) and model.blocks == 1
    assert model(torch.rand(2, 1, 8, 8), 0.5).shape == (2, 1, 8, 8)
    entry = manifest_entry(out)
    assert entry["kind"] == "denoiser" and entry["sigmas"] == [0.25, 0.5] and entry["input_shape"] == [1, 8, 8]


def test_a_bad_training_request_names_the_problem(tmp_path):
    result = runner.invoke(app, ["train", "classifier", "--out", str(tmp_path / "x.pt"), "--method", "mixup"])
    assert result.exit_code == 2 and "unknown training method 'mixup'" in result.output
    result = runner.invoke(app, ["train", "denoiser", "--out", str(tmp_path / "x.pt"), "--objective", "stability"])
    assert result.exit_code == 2 and "needs the frozen classifier" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_checkpoints_hold_only_plain_values_and_tensors(tmp_path):
    out = tmp_path / "c.pt"
    train("classifier", "--out", str(out), "--epochs", "1")
    checkpoint = safe_torch_load(out)  # weights_only=True: would raise on any pickled class
    assert set(checkpoint) == {"arch", "arch_kwargs", "state_dict", "meta"}


def demo_entries() -> list[dict]:
    return json.loads((DEMO / "manifest.json").read_text())["models"]


def test_every_demo_model_is_listed_and_made_by_a_recorded_command():
    files = {p.name for p in DEMO.glob("*.pt")}
    entries = demo_entries()
    assert {e["file"] for e in entries} == files
    for entry in entries:
        assert entry["command"] == read_meta(DEMO / entry["file"])["command"]
        assert entry["command"].startswith("kavach train ") and f"--out models/demo/{entry['file']}" in entry["command"]


@pytest.mark.parametrize("entry", demo_entries(), ids=lambda e: e["file"])
def test_demo_models_load_and_do_their_job(entry):
    try:
        test = load_dataset(entry["dataset"], split="test")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    x, y = test.x[:200], test.y[:200]
    model = load_model(DEMO / entry["file"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if entry["kind"] == "classifier":
            sigma = entry["sigma"] or 0.0
            noisy = x + sigma * torch.randn(x.shape, generator=generator)
            assert float((model(noisy).argmax(1) == y).float().mean()) > 0.7
        else:
            for sigma in entry["sigmas"]:
                noisy = x + sigma * torch.randn(x.shape, generator=generator)
                assert torch.nn.functional.mse_loss(model(noisy, sigma), x) < 0.5 * sigma**2  # at least half the noise energy removed
