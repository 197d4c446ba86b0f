"""The epoch loop shared by the classifier and denoiser trainers: shuffled mini-batches, Adam with a
cosine schedule, a step callback for progress bars and an epoch log written as JSON lines."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EvalFn = Callable[[], dict[str, float]]


@dataclass
class EpochLog:
    """One epoch: mean training loss, learning rate, seconds, and the evaluation's metrics."""

    epoch: int
    loss: float
    lr: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoopConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_steps_per_epoch: int | None = None  # a short run (tests, smoke checks) stops each epoch early


def run_epochs(
    model: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    step_loss: StepFn,
    config: LoopConfig,
    *,
    evaluate: EvalFn | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    log_path: str | Path | None = None,
    first_epoch: int = 1,
) -> list[EpochLog]:
    """Minimise ``step_loss(x_batch, y_batch)`` over ``params`` for ``config.epochs`` epochs.

    ``x``/``y`` stay on their device; batches are drawn by a seeded permutation. ``on_step(done,
    total, loss)`` feeds a progress bar; each epoch's log goes to ``on_epoch`` and, as one JSON line,
    to ``log_path``.
    """
    generator = torch.Generator().manual_seed(config.seed)
    steps = math.ceil(len(x) / config.batch_size)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps))
    history: list[EpochLog] = []
    total = config.epochs * steps
    for epoch in range(config.epochs):
        started, losses = time.perf_counter(), []
        order = torch.randperm(len(x), generator=generator).to(x.device)
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        for step in range(steps):
            pick = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss = step_loss(x[pick], y[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(epoch * steps + step + 1, total, losses[-1])
        model.eval()
        metrics = evaluate() if evaluate is not None else {}
        log = EpochLog(first_epoch + epoch, sum(losses) / len(losses), lr, time.perf_counter() - started, metrics)
        history.append(log)
        if log_path is not None:
            with open(log_path, "a") as stream:
                stream.write(json.dumps(log.to_dict()) + "\n")
        if on_epoch is not None:
            on_epoch(log)
    return history


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``fn`` over ``x`` in chunks, concatenated (evaluation without holding every activation at once)."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
