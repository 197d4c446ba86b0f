import pytest
import torch
from torch import nn

from engine.models import create_model, list_models, model_config, register_model


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_cnn", "cifar_resnet20", "cifar_resnet110"])
def test_registered_models_map_their_input_size_to_logits(name):
    config = model_config(name)
    model = create_model(name)
    assert not model.training
    with torch.inference_mode():
        logits = model(torch.rand(3, *config.input_size))
    assert logits.shape == (3, config.num_classes)
    assert create_model(name, num_classes=7)(torch.rand(2, *config.input_size)).shape == (2, 7)


def test_cifar_resnet_depths_and_parameter_counts():
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert count(create_model("cifar_resnet20")) == pytest.approx(0.27e6, rel=0.02)
    assert count(create_model("cifar_resnet110")) == pytest.approx(1.7e6, rel=0.02)


def test_normalisation_lives_inside_the_model_and_outside_the_state_dict():
    model = create_model("cifar_resnet20")
    keys = set(model.state_dict())
    assert "1.conv1.weight" in keys and not any(k.startswith("0.") for k in keys)
    x = torch.full((1, 3, 32, 32), 0.5)
    shifted = (x - model[0].mean) / model[0].std
    assert torch.allclose(model(x), model[1](shifted))


def test_torchvision_names_pass_through_with_random_weights():
    assert "resnet50" in list_models(include_torchvision=True)
    assert "resnet50" not in list_models()
    model = create_model("resnet18", num_classes=4)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="downloaded"):
        create_model("resnet18", weights="DEFAULT")


def test_unknown_names_and_duplicates_are_errors():
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("not_a_model")
    with pytest.raises(ValueError, match="already registered"):
        register_model(input_size=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,), name="digits_cnn")(
            lambda: nn.Identity())


def test_list_models_filters_by_pattern():
    assert list_models("cifar_*") == ["cifar_resnet110", "cifar_resnet20"]


def test_wrong_channel_count_is_an_error_not_a_broadcast():
    with pytest.raises(ValueError, match="expected images"):
        create_model("cifar_resnet20")(torch.rand(2, 1, 32, 32))
