"""Kavach: certified robustness of image classifiers by randomized smoothing.

``kavach.Client`` talks to a running service; ``engine`` certifies in-process; ``backend`` is the service.
"""
