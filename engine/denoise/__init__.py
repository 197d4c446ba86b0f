"""Denoised smoothing: DRUNet, its training objectives, and the denoiser-then-classifier base model."""

from engine.denoise.denoised import denoised_classifier, set_noise_level
from engine.denoise.drunet import DRUNet, drunet, drunet_small

__all__ = ["DRUNet", "denoised_classifier", "drunet", "drunet_small", "set_noise_level"]
