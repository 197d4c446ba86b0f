"""Freezing a base classifier (engine.freeze): the same function, compiled, and refused where it cannot be."""

from __future__ import annotations

import pathlib

import pytest
import torch
from scipy.stats import binom, norm

from engine.data import load_dataset
from engine.denoise import DRUNet, denoised_classifier
from engine.freeze import FrozenModel, freeze_model
from engine.models import create_model, load_model
from engine.noise import Gaussian
from engine.sampling import model_device, model_dtype
from engine.smooth import ABSTAIN, SmoothedClassifier
from tests.engine.exact_models import LinearBinary

DEMO = pathlib.Path(__file__).resolve().parents[2] / "models" / "demo"
SIGMA = 0.5


def graph_text(frozen: FrozenModel) -> str:
    return str(frozen.graph.graph)


def test_the_frozen_graph_folds_batchnorm_and_computes_the_same_logits():
    model = load_model(DEMO / "digits_cnn_gaussian_0.25.pt")
    frozen = freeze_model(model)
    text = graph_text(frozen)
    assert "batch_norm" not in text  # folded into the convolutions' weights
    assert "prim::mkldnn_convolution" in text and "weight_fused_bn_mkldnn" in text  # prepacked for oneDNN
    assert not list(frozen.parameters())  # weights are constants of the graph
    x = 0.25 * torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + load_dataset("digits").x[:1]
    with torch.inference_mode():
        eager, fast = model(x), frozen(x)
    assert torch.allclose(fast, eager, rtol=1e-4, atol=1e-4)
    assert torch.equal(fast.argmax(1), eager.argmax(1))
    # the model itself is unchanged: still a module with parameters, in the mode it was in
    assert list(model.parameters()) and not model.training


def test_frozen_certificates_equal_the_eager_ones_on_the_demo_model():
    x = load_dataset("digits").x[:4]
    eager = SmoothedClassifier(load_model(DEMO / "digits_cnn_gaussian_0.25.pt"), 10, Gaussian(0.25), channels_last=True)
    frozen = SmoothedClassifier(load_model(DEMO / "digits_cnn_gaussian_0.25.pt"), 10, Gaussian(0.25),
                                channels_last=True, freeze=True)
    assert isinstance(frozen.model, FrozenModel)
    for i, xi in enumerate(x):
        a, b = (s.certify(xi, 50, 2000, 0.001, 500, seed=i) for s in (eager, frozen))
        assert (a.prediction, a.radius, a.samples) == (b.prediction, b.radius, b.samples)


def test_frozen_np_certificates_are_sound_against_the_exact_radius():
    # the linear base classifier of test_smooth, frozen: its certificates still fail at most at rate alpha
    runs, n, alpha = 400, 200, 0.1
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, generator=g), torch.rand(1, 4, 4, generator=g)
    b = SIGMA * float(w.norm()) * norm.ppf(0.85) - float(x.flatten() @ w)
    model = LinearBinary(w, b)
    smooth = SmoothedClassifier(model, 2, Gaussian(SIGMA), freeze=True)
    failures = 0
    for seed in range(runs):
        r = smooth.certify(x, 20, n, alpha, 256, seed=seed)
        failures += r.prediction != ABSTAIN and (r.prediction != 1 or r.radius > model.true_radius(x))
    assert 0 < failures <= binom.ppf(0.999, runs, alpha)


class SignSwitch(torch.nn.Module):
    """Data-dependent control flow: class 0 when the input's mean is negative, else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() < 0):
            return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], 2)
        return torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)


def test_freezing_scripts_so_data_dependent_branches_survive():
    # a trace would record the branch of its example input and answer it for every input
    frozen = freeze_model(SignSwitch())
    with torch.inference_mode():
        assert frozen(-torch.ones(3, 1, 2, 2)).argmax(1).tolist() == [0, 0, 0]
        assert frozen(torch.ones(3, 1, 2, 2)).argmax(1).tolist() == [1, 1, 1]


class NotScriptable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import math

        return x.flatten(1)[:, :2] * math.pi


def test_a_model_torchscript_cannot_script_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="freeze needs a model TorchScript can script; NotScriptable cannot be: "
                                         "import statements aren't supported"):
        freeze_model(NotScriptable())
    with pytest.raises(ValueError, match="choose one"):
        SmoothedClassifier(create_model("digits_cnn", width=4), 10, Gaussian(0.25), freeze=True, compile=True)
    with pytest.raises(ValueError, match="choose one"):
        freeze_model(torch.compile(create_model("digits_cnn", width=4)))


def test_a_torchscript_archive_and_a_denoised_classifier_freeze(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(create_model("digits_cnn", width=4).eval()), str(path))
    archive = load_model(path)
    x = torch.rand(8, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(freeze_model(archive)(x), archive(x), atol=1e-5)
    # the denoiser's noise level is a constant of the frozen graph: the level it was told when frozen
    denoiser = DRUNet(in_channels=1, widths=(8, 16, 16, 16), blocks=1).eval()
    classifier = create_model("digits_cnn", width=4).eval()
    for level in (0.25, 0.5):
        composed = denoised_classifier(classifier, denoiser, level)
        frozen = freeze_model(composed)
        with torch.inference_mode():
            assert torch.allclose(frozen(x), composed(x), atol=1e-5)
            assert torch.allclose(frozen(x), classifier(denoiser(x, level)), atol=1e-5)


def test_a_frozen_model_keeps_its_dtype_and_is_kept_as_it_is():
    model = create_model("digits_cnn", width=4).eval()
    smooth = SmoothedClassifier(model, 10, Gaussian(0.25), dtype=torch.bfloat16, channels_last=True, freeze=True)
    assert model_dtype(smooth.model) == torch.bfloat16 and model_device(smooth.model) == torch.device("cpu")
    r = smooth.certify(load_dataset("digits").x[0], 20, 200, 0.001, 100, seed=0)
    assert r.samples == 220
    # a worker hands the same frozen graph to every shard: neither frozen again nor converted
    again = SmoothedClassifier(smooth.model, 10, Gaussian(0.25), dtype=torch.bfloat16, freeze=True)
    assert again.model is smooth.model and model_dtype(again.model) == torch.bfloat16
    with pytest.raises(ValueError, match="computes in torch.bfloat16, not torch.float32"):
        SmoothedClassifier(smooth.model, 10, Gaussian(0.25), dtype=torch.float32)
