import pytest
import torch

from engine.denoise import DRUNet, denoised_classifier, set_noise_level
from engine.models import create_model


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_colour_drunet_has_the_papers_parameter_count():
    model = create_model("drunet")
    assert 32.55e6 < parameters(model) < 32.7e6  # "about 32.6M" (Zhang et al. 2021)
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))


def test_widths_and_blocks_set_the_size():
    small = DRUNet(1, (8, 16, 32, 32), 1)
    assert parameters(small) < parameters(DRUNet(1, (16, 32, 64, 64), 1)) < parameters(DRUNet(1, (16, 32, 64, 64), 2))
    assert small.head.in_channels == 2  # one image channel and the noise-level map
    with pytest.raises(ValueError, match="4 widths"):
        DRUNet(1, (8, 16, 32))


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (3, 1, 28, 28), (1, 3, 30, 17), (2, 3, 32, 32)])
def test_output_has_the_input_shape_after_padding_to_a_multiple_of_8(shape):
    model = DRUNet(shape[1], (8, 8, 8, 8), 1).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        assert model(x, 0.5).shape == x.shape


def test_padding_does_not_leak_between_images_and_cropping_keeps_the_top_left():
    model = DRUNet(1, (8, 8, 8, 8), 1).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        both = model(x, 0.25)
        assert torch.allclose(both[1:], model(x[1:], 0.25), atol=1e-6)


def test_the_noise_level_map_is_read_per_image():
    model = DRUNet(1, (8, 8, 8, 8), 1).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        per_image = model(x, torch.tensor([0.25, 0.5]))
        assert torch.allclose(per_image[0], model(x[:1], 0.25)[0], atol=1e-6)
        assert torch.allclose(per_image[1], model(x[1:], 0.5)[0], atol=1e-6)
        assert not torch.allclose(model(x, 0.25), model(x, 0.5))
        model.noise_level = 0.5
        assert torch.equal(model(x), model(x, 0.5))


def test_wrong_channels_are_refused():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        DRUNet(3, (8, 8, 8, 8), 1)(torch.rand(1, 1, 8, 8))


def test_denoised_classifier_tells_the_denoiser_one_fixed_level():
    denoiser = DRUNet(1, (8, 8, 8, 8), 1)
    classifier = create_model("digits_cnn")
    base = denoised_classifier(classifier, denoiser, 0.5)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(base(x), classifier(denoiser(x, 0.5)))
    assert not base.training and denoiser.noise_level == 0.5
    assert set_noise_level(torch.nn.Sequential(torch.nn.Identity()), 0.25) == 0  # blind denoisers are left alone
