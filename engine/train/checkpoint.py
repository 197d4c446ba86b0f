"""Checkpoints the trainers write and the engine's loader reads weights-only.

A checkpoint is a plain dict: ``arch`` (a registered name), ``arch_kwargs`` (plain values such as
widths and class counts), ``state_dict`` and ``meta`` (how it was trained). No pickled classes, so
``torch.load(weights_only=True)`` reads it and ``engine.models.load_model(path)`` rebuilds the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def checkpoint_dict(model: nn.Module, arch: str, arch_kwargs: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict saved by ``save_checkpoint``: tensors on the CPU, in float32, contiguous."""
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    return {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "state_dict": state, "meta": dict(meta or {})}


def save_checkpoint(path: str | Path, model: nn.Module, arch: str, arch_kwargs: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically (a temporary file renamed into place), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint_dict(model, arch, arch_kwargs, meta), tmp)
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` entry of a trainer's checkpoint, read weights-only."""
    from engine.models.loading import safe_torch_load

    checkpoint = safe_torch_load(path, name=path)
    return dict(checkpoint.get("meta", {})) if isinstance(checkpoint, dict) else {}
