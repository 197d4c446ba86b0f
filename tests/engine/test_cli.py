import json
import pathlib

import pytest
import torch
from typer.testing import CliRunner

from engine.cli import app, parse_indices
from engine.data import load_dataset
from engine.models import create_model

runner = CliRunner()
KEYS = {"index", "label", "prediction", "radius", "p_lower", "p_upper", "q_lower", "q_upper", "samples", "seconds",
        "correct", "top_class", "runner_up"}


def centroid_classifier() -> torch.nn.Module:
    """Nearest class mean on the digits training split, in closed form: logits x.mu_c - ||mu_c||^2 / 2."""
    train = load_dataset("digits", split="train")
    flat = train.x.flatten(1)
    means = torch.stack([flat[train.y == c].mean(0) for c in range(10)])
    linear = torch.nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(means)
        linear.bias.copy_(-0.5 * means.square().sum(1))
    return torch.nn.Sequential(torch.nn.Flatten(), linear).eval()


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("models") / "centroid.pt2"
    program = torch.export.export(centroid_classifier(), (torch.rand(4, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def read_rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_rows_are_the_engine_s(out: pathlib.Path, smoothed, n0: int, n: int, batch_size: int,
                                 seed: int = 0) -> list[dict]:
    """Each row written to ``out`` is ``smoothed``'s own certificate of that digit, at seed + index."""
    x = load_dataset("digits").x
    rows = read_rows(out)
    for row in rows:
        expected = smoothed.certify(x[row["index"]], n0, n, 0.001, batch_size, seed=seed + row["index"])
        assert (row["prediction"], row["radius"]) == (expected.prediction, expected.radius)
    return rows


def test_certify_np_writes_one_line_per_input_and_a_summary(tmp_path, exported_model):
    out = tmp_path / "r.jsonl"
    result = runner.invoke(app, ["certify", str(exported_model), "--dataset", "digits", "--sigma", "0.25",
                                 "--n0", "50", "--n", "2000", "--alpha", "0.001", "--batch-size", "500",
                                 "--stride", "10", "--count", "6", "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    labels = load_dataset("digits").y
    assert [r["index"] for r in rows] == [0, 10, 20, 30, 40, 50]
    for row in rows:
        assert set(row) == KEYS and row["samples"] == 2050 and row["q_lower"] is None
        assert row["label"] == int(labels[row["index"]]) and row["correct"] == (row["prediction"] == row["label"])
        assert (row["prediction"] == -1) == (row["radius"] == 0.0)
    assert sum(r["correct"] for r in rows) >= 4  # the centroid classifier is ~90% accurate under this noise
    assert "ACR" in result.output and "abstain rate" in result.output and "certified accuracy" in result.output


def test_an_abstained_line_names_the_selection_draws_top_class_and_runner_up(tmp_path, exported_model):
    # n = 5 cannot certify at alpha 0.001 (5 of 5 votes bound pA at 0.25), so every input abstains; the same
    # seeds at n = 2000 certify the selection's class, which the abstained lines must name as their top class
    common = ["certify", str(exported_model), "--sigma", "0.5", "--n0", "50", "--batch-size", "500", "--count", "8",
              "--seed", "3"]
    outs = {}
    for n in (5, 2000):
        out = tmp_path / f"n{n}.jsonl"
        assert runner.invoke(app, [*common, "--n", str(n), "--out", str(out)]).exit_code == 0
        outs[n] = read_rows(out)
    for abstained, certified in zip(outs[5], outs[2000], strict=True):
        assert abstained["prediction"] == -1 and abstained["top_class"] is not None
        assert abstained["runner_up"] != abstained["top_class"]
        if certified["prediction"] >= 0:
            assert certified["top_class"] is None and certified["runner_up"] is None
            assert abstained["top_class"] == certified["prediction"]
    assert any(r["runner_up"] is not None for r in outs[5])  # sigma 0.5 spreads the centroid classifier's votes
    assert sum(r["prediction"] >= 0 for r in outs[2000]) >= 4


def test_certify_dsrs_from_a_state_dict_with_arch(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(create_model("digits_cnn").state_dict(), weights)
    common = ["certify", str(weights), "--arch", "digits_cnn", "--sigma", "0.5", "--n0", "20", "--n", "800",
              "--batch-size", "400", "--indices", "0,3-4", "--seed", "1", "--method", "dsrs", "--q-threshold", "auto"]
    out = tmp_path / "dsrs.jsonl"
    result = runner.invoke(app, [*common, "--num-classes", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert [r["index"] for r in rows] == [0, 3, 4]
    # Q is skipped only when P alone already rules out a radius
    assert all(r["samples"] == 820 or (r["samples"] == 420 and r["prediction"] == -1) for r in rows)
    result = runner.invoke(app, [*common, "--num-classes", "3", "--out", str(out)])
    assert result.exit_code == 2 and "error" in result.output and "size mismatch" in result.output


def test_certify_dsrs_and_iss(tmp_path, exported_model):
    common = ["certify", str(exported_model), "--sigma", "0.25", "--n0", "50", "--batch-size", "1000",
              "--indices", "0,3-4", "--seed", "1"]
    out = tmp_path / "dsrs.jsonl"
    result = runner.invoke(app, [*common, "--n", "4000", "--method", "dsrs", "--q-sigma", "0.2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert [r["index"] for r in rows] == [0, 3, 4]
    for row in rows:
        if row["q_lower"] is not None:  # Q was sampled: both intervals are reported
            assert row["q_lower"] <= row["q_upper"] and row["radius"] > 0
        elif row["prediction"] != -1:  # every pilot vote for cA: NP on all n samples of P
            assert row["samples"] == 50 + 4000 and row["radius"] > 0
    out = tmp_path / "iss.jsonl"
    result = runner.invoke(app, [*common, "--n", "20000", "--iss-delta", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert all(50 + 1000 <= r["samples"] <= 50 + 20000 for r in read_rows(out))
    out = tmp_path / "sequential.jsonl"
    result = runner.invoke(app, [*common, "--n", "20000", "--sequential-delta", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    looks = {50 + m for m in (1000, 2000, 4000, 8000, 16000, 20000)}
    assert all(r["samples"] in looks for r in read_rows(out))
    result = runner.invoke(app, [*common, "--iss-delta", "0.05", "--sequential-delta", "0.05", "--out", str(out)])
    assert result.exit_code == 2 and "choose one" in result.output


def test_unsafe_model_files_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"w": Payload()}, path)
    result = runner.invoke(app, ["certify", str(path), "--arch", "digits_cnn", "--count", "1", "--n", "10",
                                 "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2 and "refusing" in result.output
    assert not marker.exists()


def test_bad_options_are_reported(tmp_path, exported_model):
    out = str(tmp_path / "r.jsonl")
    result = runner.invoke(app, ["certify", str(exported_model), "--indices", "0,9999", "--out", out])
    assert result.exit_code != 0 and "outside the dataset" in result.output
    result = runner.invoke(app, ["certify", str(exported_model), "--method", "dsrs", "--count", "1", "--n", "100",
                                 "--out", out])
    assert result.exit_code == 2 and "q_sigma" in result.output
    result = runner.invoke(app, ["certify", str(exported_model), "--dataset", "cifar", "--out", out])
    assert result.exit_code == 2 and "unknown dataset" in result.output
    result = runner.invoke(app, ["certify", str(exported_model), "--noise", "general_gaussian", "--out", out])
    assert result.exit_code == 2 and "k >= 1" in result.output


def test_a_model_that_cannot_read_the_data_is_reported(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(create_model("cifar_resnet20").state_dict(), weights)
    result = runner.invoke(app, ["certify", str(weights), "--arch", "cifar_resnet20", "--dataset", "digits", "--n", "10",
                                 "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2 and "cannot read digits inputs" in result.output


def test_generalized_gaussian_noise_from_the_command_line(tmp_path, exported_model):
    out = tmp_path / "gg.jsonl"
    result = runner.invoke(app, ["certify", str(exported_model), "--noise", "general_gaussian", "--k", "8",
                                 "--sigma", "0.25", "--n0", "50", "--n", "2000", "--count", "2", "--seed", "0",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_rows(out)) == 2


def test_parse_indices_and_models_command():
    assert parse_indices("0, 5,10-12", 20) == [0, 5, 10, 11, 12]
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "cifar_resnet110" in result.output


def test_channels_last_flag_does_not_change_one_channel_certificates(tmp_path, exported_model):
    args = ["certify", str(exported_model), "--n0", "20", "--n", "1000", "--count", "3", "--seed", "4"]
    outs = []
    for flag in ("--channels-last", "--no-channels-last"):
        out = tmp_path / f"{flag}.jsonl"
        assert runner.invoke(app, [*args, flag, "--out", str(out)]).exit_code == 0
        outs.append([(r["prediction"], r["radius"]) for r in read_rows(out)])
    assert outs[0] == outs[1]


def test_certify_with_the_demo_denoiser_equals_the_engine_on_the_composed_model(tmp_path):
    demo = pathlib.Path(__file__).parents[2] / "models" / "demo"
    out = tmp_path / "denoised.jsonl"
    args = ["certify", str(demo / "digits_cnn_gaussian_0.5.pt"), "--denoiser", str(demo / "digits_drunet.pt"),
            "--sigma", "0.5", "--n0", "50", "--n", "1000", "--batch-size", "500", "--indices", "0-3", "--seed", "7",
            "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from engine.denoise import denoised_classifier
    from engine.models import load_model
    from engine.noise import Gaussian
    from engine.smooth import SmoothedClassifier

    base = denoised_classifier(load_model(demo / "digits_cnn_gaussian_0.5.pt"), load_model(demo / "digits_drunet.pt"), 0.5)
    smoothed = SmoothedClassifier(base, 10, Gaussian(0.5), channels_last=True)
    rows = assert_rows_are_the_engine_s(out, smoothed, 50, 1000, 500, seed=7)
    assert sum(r["correct"] for r in rows) >= 3


def test_packed_certification_writes_the_same_rows_in_order(tmp_path, exported_model):
    common = ["certify", str(exported_model), "--sigma", "0.25", "--n0", "50", "--n", "1000", "--batch-size", "4000",
              "--count", "10", "--seed", "0"]
    out = tmp_path / "packed.jsonl"
    result = runner.invoke(app, [*common, "--pack", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    labels = load_dataset("digits").y
    assert [r["index"] for r in rows] == list(range(10))
    assert all(r["samples"] == 1050 and r["label"] == int(labels[r["index"]]) for r in rows)
    assert sum(r["correct"] for r in rows) >= 8
    result = runner.invoke(app, [*common, "--pack", "4", "--method", "dsrs", "--q-sigma", "0.2", "--out", str(out)])
    assert result.exit_code == 2 and "pack (inputs certified together) works with method np" in result.output


def test_bf16_certifies_the_bf16_model_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("KAVACH_ASSUME_NATIVE_BF16", "1")  # as on a CPU with bf16 (tests/engine/test_hardware.py)
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(create_model("digits_cnn").state_dict(), weights)
    out = tmp_path / "bf16.jsonl"
    args = ["certify", str(weights), "--arch", "digits_cnn", "--sigma", "0.25", "--n0", "20", "--n", "500",
            "--batch-size", "250", "--count", "3", "--seed", "0", "--bf16", "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model in bfloat16" in " ".join(result.output.split()) and len(read_rows(out)) == 3
    from engine.models import load_model
    from engine.noise import Gaussian
    from engine.smooth import SmoothedClassifier

    reference = SmoothedClassifier(load_model(weights, arch="digits_cnn"), 10, Gaussian(0.25), channels_last=True,
                                   dtype=torch.bfloat16)
    assert_rows_are_the_engine_s(out, reference, 20, 500, 250)


def test_compile_gives_the_eager_certificates_and_compiles_once_per_batch_size(tmp_path):
    from torch._dynamo.utils import counters

    from engine.models import load_model
    from engine.noise import Gaussian
    from engine.smooth import SmoothedClassifier

    weights = pathlib.Path(__file__).resolve().parents[2] / "models" / "demo" / "digits_cnn_gaussian_0.25.pt"
    out = tmp_path / "compiled.jsonl"
    torch._dynamo.reset()
    counters.clear()
    # n = 500 in batches of 200 ends on a short batch of 100: padded to 200, so shapes are n0's 20 and 200
    args = ["certify", str(weights), "--sigma", "0.25", "--n0", "20", "--n", "500", "--batch-size", "200",
            "--count", "3", "--seed", "0", "--compile", "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    eager = SmoothedClassifier(load_model(weights), 10, Gaussian(0.25), channels_last=True)
    assert len(assert_rows_are_the_engine_s(out, eager, 20, 500, 200)) == 3


def test_freeze_gives_the_frozen_model_s_certificates_and_refuses_what_does_not_script(tmp_path, exported_model):
    from engine.denoise import denoised_classifier
    from engine.freeze import freeze_model
    from engine.models import load_model
    from engine.noise import Gaussian
    from engine.smooth import SmoothedClassifier

    demo = pathlib.Path(__file__).resolve().parents[2] / "models" / "demo"
    weights, denoiser = demo / "digits_cnn_gaussian_0.25.pt", demo / "digits_drunet.pt"
    out = tmp_path / "frozen.jsonl"
    args = ["certify", str(weights), "--sigma", "0.25", "--n0", "20", "--n", "500", "--batch-size", "200",
            "--count", "3", "--seed", "0", "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, [*args, "--freeze", "--denoiser", str(denoiser)])
    assert result.exit_code == 0, result.output
    frozen = SmoothedClassifier(freeze_model(denoised_classifier(load_model(weights), load_model(denoiser), 0.25)),
                                10, Gaussian(0.25), channels_last=True)
    assert len(assert_rows_are_the_engine_s(out, frozen, 20, 500, 200)) == 3
    refused = runner.invoke(app, ["certify", str(exported_model), "--n", "100", "--count", "1", "--freeze",
                                  "--out", str(tmp_path / "no.jsonl")])
    assert refused.exit_code == 2 and "ONNX and torch.export files do not script" in " ".join(refused.output.split())
    both = runner.invoke(app, [*args, "--freeze", "--compile"])
    assert both.exit_code == 2 and "choose one" in " ".join(both.output.split())
