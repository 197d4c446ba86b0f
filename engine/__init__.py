"""Kavach engine: certified robustness of classifiers by randomized smoothing.

No web imports live here; the package is usable on its own as a library and via ``kavach``.
"""

from engine.bounds import clopper_pearson, clopper_pearson_lower, split_alpha
from engine.noise import Gaussian, GeneralizedGaussian, Noise
from engine.radius import dsrs_radius, np_radius

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
