"""Model architectures (a registry of names) and safe checkpoint loading."""

from engine.denoise import drunet as _drunet  # noqa: F401  (registers drunet, drunet_small)
from engine.models import cifar_resnet, cnn  # noqa: F401  (registers the architectures)
from engine.models.loading import ModelFileError, UnsafeModelError, detect_format, load_model
from engine.models.registry import create_model, list_models, model_config, register_model

__all__ = [
    "ModelFileError",
    "UnsafeModelError",
    "create_model",
    "detect_format",
    "list_models",
    "load_model",
    "model_config",
    "register_model",
]
