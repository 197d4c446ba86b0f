"""A finished job's smoothed classifier as a standalone program (``engine.export``), built once per job.

The program holds the user's model, so it is compiled inside a model sandbox like every other use of
the file; the API stores it beside the uploads and serves the stored copy afterwards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from sqlmodel import Session

from backend import storage
from backend.core.config import Settings
from backend.modelfiles import export_registered
from backend.models import Job, JobConfig, JobState, Model
from engine.options import NoiseKind

SUFFIXES = {"export": ".pt2", "torchscript": ".pt"}


class NotExportable(ValueError):
    """The job cannot be shipped as a program (not finished, or noise the program does not draw)."""


def program_metadata(job: Job, model: Model, config: JobConfig, fmt_hint: str = "") -> dict[str, Any]:
    """What the program certifies, stored inside it as ``kavach.json``."""
    return {"kavach_job": job.id, "model": model.name, "model_id": model.id, "dataset": job.dataset,
            "split": job.split, "noise": "gaussian", "sigma": config.sigma, "n": config.n, "alpha": config.alpha,
            "batch_size": config.batch_size, "bf16": config.bf16, "denoiser_id": config.denoiser_id,
            "input_shape": list(model.input_shape), "num_classes": model.num_classes,
            "output": "class index, or -1 to abstain (Cohen et al. 2019, PREDICT)",
            "input": "float tensor (B, C, H, W) on the [0, 1] scale; a .pt2 program takes B = 1"}


def stored_program(job: Job, settings: Settings) -> tuple[Path, str] | None:
    folder = storage.owner_folder(Path(settings.STORAGE_DIR), "exports", job.owner_id)
    for fmt, suffix in SUFFIXES.items():
        path = folder / f"job{job.id}{suffix}"
        if path.is_file():
            return path, fmt
    return None


def smoothed_program(*, session: Session, job: Job, settings: Settings) -> tuple[Path, str]:
    """The job's program file and its format, compiled in a sandbox on the first request.

    Raises NotExportable, or backend.sandbox's SandboxError saying why the model would not compile.
    """
    if job.state is not JobState.done:
        raise NotExportable(f"job {job.id} is {job.state.value}; only a finished (done) job's smoothed "
                            "classifier can be downloaded")
    config = JobConfig.model_validate(job.config)
    if config.noise is not NoiseKind.gaussian or config.k != 0:
        raise NotExportable("the downloadable smoothed classifier draws Gaussian noise; this job smoothed with "
                            f"{config.noise.value} noise (k = {config.k})")
    found = stored_program(job, settings)
    if found is not None:
        return found
    model = session.get(Model, job.model_id)
    denoiser = session.get(Model, config.denoiser_id) if config.denoiser_id is not None else None
    if model is None or (config.denoiser_id is not None and denoiser is None):
        raise NotExportable(f"job {job.id}'s model or denoiser is gone")
    folder = storage.owner_folder(Path(settings.STORAGE_DIR), "exports", job.owner_id)
    partial = folder / f".{uuid.uuid4().hex}.partial"
    options = {"num_classes": model.num_classes, "sigma": config.sigma, "n": config.n, "alpha": config.alpha,
               "batch_size": config.batch_size, "bf16": config.bf16,
               "metadata": program_metadata(job, model, config)}
    try:
        fmt = export_registered(model, denoiser, partial, settings=settings, options=options)
        final = folder / f"job{job.id}{SUFFIXES[fmt]}"
        os.replace(partial, final)  # two requests at once: the last complete copy wins, never a partial one
    finally:
        storage.remove(partial)
    return final, fmt
