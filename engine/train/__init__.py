"""Training noise-robust classifiers for randomized smoothing (Gaussian, consistency, SmoothMix)."""
