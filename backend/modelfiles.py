"""Registered model files: checked on upload, served to workers; both only inside a model sandbox.

The service never loads a user's file in its own processes: ``store_checked`` runs the upload check
in a fresh confined model process (``backend.sandbox``), and a worker asks ``serve_registered`` for a
model process that answers votes. What failed is said in our words (``SandboxError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from backend import storage
from backend.core.config import Settings, get_settings
from backend.models import Model, ModelCreate, ModelKind
from backend.sandbox import confine as confinement
from backend.sandbox.loading import load_registered, with_input_scaling
from backend.sandbox.process import (
    ModelFile,
    ModelProcess,
    SandboxError,
    SandboxLimits,
    SandboxUnavailable,
    check_model_file,
    export_model,
    serve_model,
)

__all__ = ["ModelRejected", "SandboxUnavailable", "check_limits", "export_registered", "load_registered",
           "serve_registered", "store_checked", "with_input_scaling", "worker_limits"]


class ModelRejected(ValueError):
    """The file cannot serve as the declared model; the message says why."""


def check_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(memory_bytes=settings.SANDBOX_CHECK_MEMORY_BYTES, cpu_seconds=settings.SANDBOX_CHECK_CPU_SECONDS,
                         start_seconds=settings.SANDBOX_CHECK_SECONDS, batch_seconds=settings.SANDBOX_CHECK_SECONDS,
                         file_bytes=64 << 20, threads=2)


def worker_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(memory_bytes=settings.SANDBOX_MEMORY_BYTES, cpu_seconds=int(settings.SANDBOX_LOAD_SECONDS) * 4,
                         start_seconds=settings.SANDBOX_LOAD_SECONDS, batch_seconds=settings.SANDBOX_BATCH_SECONDS,
                         threads=settings.SANDBOX_THREADS)


def confined(settings: Settings) -> bool:
    """Whether model processes are confined; raises SandboxUnavailable when they must be and cannot."""
    if settings.SANDBOX == "off":
        return False
    reason = confinement.available()
    if reason is not None:
        raise SandboxUnavailable(f"this server cannot sandbox model files ({reason}); it refuses to load them. "
                                 "SANDBOX=off runs them unconfined, for a machine whose only user is trusted")
    return True


def model_file(path: str | Path, *, format: str | None, arch: str | None, num_classes: int | None,
               input_shape: Sequence[int], input_max: float = 1.0, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> ModelFile:
    # absolute: the model process runs in its own scratch folder (STORAGE_DIR may be relative)
    return ModelFile(file=str(Path(path).resolve()), format=format, arch=arch, num_classes=num_classes, input_shape=list(input_shape),
                     input_max=input_max, mean=None if mean is None else list(mean),
                     std=None if std is None else list(std))


def row_file(row: Model) -> ModelFile:
    return model_file(row.path, format=row.format.value if row.format else None, arch=row.arch,
                      num_classes=row.num_classes, input_shape=row.input_shape, input_max=row.input_max,
                      mean=row.mean, std=row.std)


def check_stored(path: Path, meta: ModelCreate, settings: Settings, shown_as: str | None = None) -> str:
    """Load the stored file in a model sandbox and run one forward pass on a zero input of the declared
    shape; return its format. Raises ModelRejected naming the problem, or SandboxUnavailable."""
    file = model_file(path, format=meta.format.value if meta.format else None, arch=meta.arch,
                      num_classes=meta.num_classes, input_shape=meta.input_shape, input_max=meta.input_max,
                      mean=meta.mean, std=meta.std)
    try:
        answer = check_model_file([file], limits=check_limits(settings), confine=confined(settings))
    except SandboxUnavailable:
        raise
    except SandboxError as error:  # the sandbox names staged files model0.<suffix>; say the upload's name
        staged = "model0" + "".join(PurePosixPath(path).suffixes[-1:])
        raise ModelRejected(str(error).replace(staged, shown_as or "the file")) from None
    shape = (1, *meta.input_shape)
    denoiser = meta.kind is ModelKind.denoiser
    want = list(shape) if denoiser else [1, meta.num_classes]
    got = answer.get("shape")
    if got != want:
        shown = got if got is not None else str(answer.get("type"))
        what = "an image of the input's shape" if denoiser else f"{meta.num_classes} class scores"
        raise ModelRejected(f"the model returned {shown} for an input of shape {list(shape)}; expected {what} {want}")
    return str(answer["format"])


def store_checked(stream: BinaryIO, path: Path, meta: ModelCreate, max_bytes: int, shown_as: str | None,
                  settings: Settings | None = None) -> tuple[int, str]:
    """Copy ``stream`` to ``path`` and check it as ``meta`` declares; return (size, format).

    Raises storage.TooLarge, ModelRejected or SandboxUnavailable, and then leaves nothing at ``path``.
    """
    size = storage.save_stream(stream, path, max_bytes)
    try:
        fmt = check_stored(path, meta, settings or get_settings(), shown_as)
    except (ModelRejected, SandboxError):
        storage.remove(path)
        raise
    return size, fmt


def serve_registered(model: Model, denoiser: Model | None, *, settings: Settings, device: str,
                     options: dict[str, Any]) -> ModelProcess:
    """A ready model process holding ``model`` (behind ``denoiser`` when given) converted as ``options``
    say (num_classes, sigma, bf16, compile, freeze, channels_last)."""
    files = [row_file(model)] + ([row_file(denoiser)] if denoiser is not None else [])
    return serve_model(files, limits=worker_limits(settings), confine=confined(settings), device=device,
                       options=options)


def export_limits(settings: Settings) -> SandboxLimits:
    """The upload check's memory and CPU limits; tracing a program takes longer than one forward pass."""
    return SandboxLimits(memory_bytes=settings.SANDBOX_CHECK_MEMORY_BYTES, cpu_seconds=settings.SANDBOX_CHECK_CPU_SECONDS,
                         start_seconds=settings.SANDBOX_CHECK_SECONDS, batch_seconds=settings.SANDBOX_CHECK_SECONDS,
                         file_bytes=export_max_bytes(settings), threads=2)


def export_max_bytes(settings: Settings) -> int:
    # the weights once, plus the program's code and its (n + 1)-entry table of the binomial test
    return 2 * settings.MAX_UPLOAD_BYTES + (64 << 20)


def export_registered(model: Model, denoiser: Model | None, target: Path, *, settings: Settings,
                      options: dict[str, Any]) -> str:
    """Compile the smoothed classifier of ``model`` (behind ``denoiser``) into a standalone program at
    ``target`` in a model sandbox; ``options``: num_classes, sigma, n, alpha, batch_size, bf16, metadata.
    Returns the program's format (``export`` or ``torchscript``); raises SandboxError saying what failed."""
    files = [row_file(model)] + ([row_file(denoiser)] if denoiser is not None else [])
    return export_model(files, target, limits=export_limits(settings), confine=confined(settings), options=options,
                        max_bytes=export_max_bytes(settings))
