"""Kavach engine: certified robustness of classifiers by randomized smoothing.

No web imports live here; the package is usable on its own as a library and via ``kavach``.

The names below are imported on first use (PEP 562), so that importing a light submodule
(``engine.config``, ``engine.options``) does not import torch and SciPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.bounds import clopper_pearson, clopper_pearson_lower, split_alpha
    from engine.noise import Gaussian, GeneralizedGaussian, Noise
    from engine.radius import dsrs_radius, np_radius

_LAZY = {
    "Gaussian": "engine.noise",
    "GeneralizedGaussian": "engine.noise",
    "Noise": "engine.noise",
    "clopper_pearson": "engine.bounds",
    "clopper_pearson_lower": "engine.bounds",
    "dsrs_radius": "engine.radius",
    "np_radius": "engine.radius",
    "split_alpha": "engine.bounds",
}

__all__ = [
    "Gaussian",
    "GeneralizedGaussian",
    "Noise",
    "clopper_pearson",
    "clopper_pearson_lower",
    "dsrs_radius",
    "np_radius",
    "split_alpha",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it without this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
