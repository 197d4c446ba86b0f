"""Certified L2 radii from probability bounds: Neyman-Pearson (``np_radius``) and DSRS."""

from engine.radius.dsrs import dsrs_radius, dsrs_threshold_heuristic
from engine.radius.np import np_radius

__all__ = ["dsrs_radius", "dsrs_threshold_heuristic", "np_radius"]
