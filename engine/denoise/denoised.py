"""Denoised smoothing (Salman et al. 2020): the base classifier becomes classifier(denoiser(x + e)).

The denoiser is told one fixed noise level, the sigma being certified. It must be the same
function under every sampling distribution of a certificate: DSRS's Q draws with a smaller sigma
but bounds the same base classifier, so the level is never switched to Q's.
"""

from __future__ import annotations

from torch import nn

from engine.denoise.drunet import DRUNet


def set_noise_level(denoiser: nn.Module, sigma: float) -> int:
    """Fix the noise level of every noise-conditioned network inside ``denoiser``; returns how many."""
    found = 0
    for module in denoiser.modules():
        if isinstance(module, DRUNet):
            module.noise_level = float(sigma)
            found += 1
    return found


def denoised_classifier(classifier: nn.Module, denoiser: nn.Module, sigma: float) -> nn.Sequential:
    """``classifier(denoiser(x))`` with the denoiser's noise level fixed to ``sigma``, in eval mode.

    Denoisers without a noise-level input (TorchScript, ONNX, a blind network) are used as they are.
    """
    set_noise_level(denoiser, sigma)
    return nn.Sequential(denoiser, classifier).eval()
