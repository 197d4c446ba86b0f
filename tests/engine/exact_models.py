"""Small exact base classifiers whose smoothed behaviour is known in closed form."""

from __future__ import annotations

import torch


class LinearBinary(torch.nn.Module):
    """F(x) = [w.x + b > 0] as two logits (-z, z): under N(0, sigma^2 I), pA = Phi(|w.x + b| / (sigma ||w||))
    and the smoothed classifier's exact robust radius is |w.x + b| / ||w||."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten().clone())
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z, z], dim=1)

    def margin(self, x: torch.Tensor) -> float:
        return float(x.flatten() @ self.w + self.b)

    def true_radius(self, x: torch.Tensor) -> float:
        return abs(self.margin(x)) / float(self.w.norm())


class RadialBinary(torch.nn.Module):
    """F(x) = [||x||^2 <= c]: at x = 0 its vote probability is a chi-square or Gamma CDF."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)
        self.register_buffer("anchor", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x.flatten(1).square().sum(1) <= self.c).float()
        return torch.stack([1.0 - inside, inside], dim=1)


class Constant(torch.nn.Module):
    """Always votes for ``label``."""

    def __init__(self, label: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(label), num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class CallCounter(torch.nn.Module):
    """Wraps a model and records the size of every batch it sees."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []
        self.inference: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        return self.inner(x)
