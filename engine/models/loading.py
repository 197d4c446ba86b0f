"""Load a trained model from disk without ever running code from the file.

One loader per format (timm's ``_helpers`` pattern): TorchScript, a weights-only state dict plus
an architecture name, safetensors plus an architecture name, and ``torch.export`` programs.
Pickles are read with ``torch.load(weights_only=True)`` only; a pickle that would need to
import or call anything else is refused with ``UnsafeModelError``, never retried unsafely.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch
from torch import nn

from engine.models.registry import create_model

Format = Literal["torchscript", "state_dict", "safetensors", "export", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "state_dict", "safetensors", "export", "onnx")


class UnsafeModelError(ValueError):
    """The file would execute code when loaded (a pickled class, function or module)."""


class ModelFileError(ValueError):
    """The file is not the model it claims to be; the message is the loader's own, safe to show the
    file's owner (it never carries text from code the file ran)."""


def detect_format(path: str | Path) -> Format:
    """Guess the format from the suffix and, for zip archives, from their members."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix == ".pt2":
        return "export"
    if path.suffix == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith(("/code/", "/constants.pkl")) or "/code/__torch__/" in n for n in names):
            return "torchscript"
        if any(n.endswith(("/archive_format", "/serialized_exported_program.json")) for n in names):
            return "export"
    return "state_dict"


def _unsafe_reason(error: Exception) -> str:
    """The one useful line of torch's weights-only refusal: which global the pickle wanted."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it would import {found.group(1)}"
    lines = [line.strip() for line in text.splitlines() if "Unsupported" in line or "WeightsUnpickler" in line]
    return lines[0] if lines else text.splitlines()[0] if text else type(error).__name__


def _refuse(name: str | Path, error: Exception) -> UnsafeModelError:
    return UnsafeModelError(
        f"{name} is a pickle that needs to import or run code to load ({_unsafe_reason(error)}); "
        "refusing to unpickle it. Save the weights alone (torch.save(model.state_dict(), ...) or "
        "safetensors) and pass the architecture name, or save a TorchScript / torch.export program."
    )


def _parses_as_pickle(stream: BinaryIO) -> bool:
    """Whether the stream starts with a well-formed pickle; read with pickletools, nothing is executed."""
    try:
        for _ in pickletools.genops(stream):
            pass
    except (ValueError, EOFError, UnicodeDecodeError, IndexError, KeyError):  # malformed: not a pickle
        return False
    return True


def _open(source: str | Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def safe_torch_load(source: str | Path | bytes, map_location: str | torch.device = "cpu",
                    name: str | Path = "<bytes>") -> Any:
    """torch.load with ``weights_only=True``: tensors, containers and plain values only."""
    try:
        with _open(source) as stream:
            return torch.load(stream, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        with _open(source) as stream:
            # torch.save archives are zips; only a bare stream can be garbage rather than a pickle
            is_zip = zipfile.is_zipfile(stream)
            stream.seek(0)
            garbage = not is_zip and not _parses_as_pickle(stream)
        if garbage and "Unsupported global" not in str(error):
            raise ModelFileError(f"{name} is not a readable torch checkpoint") from None
        raise _refuse(name, error) from None
    except (KeyError, EOFError, RuntimeError) as error:
        raise ModelFileError(f"{name} is not a readable torch checkpoint: {error!r}") from None


def _extract_state_dict(checkpoint: Any) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """The tensors of a checkpoint, unwrapping ``{"state_dict": ...}``-style dicts; also its ``arch``
    and ``arch_kwargs`` (plain values: the trainers' checkpoints record widths and class counts there)."""
    if not isinstance(checkpoint, Mapping):
        raise ModelFileError(f"expected a state dict (a mapping of names to tensors), got {type(checkpoint).__name__}")
    arch = checkpoint.get("arch") if isinstance(checkpoint.get("arch"), str) else None
    saved_kwargs = checkpoint.get("arch_kwargs")
    saved_kwargs = dict(saved_kwargs) if isinstance(saved_kwargs, Mapping) and arch else {}
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError("the checkpoint holds no tensors")
    return tensors, arch, saved_kwargs


def _match_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename keys from common wrappers (DataParallel ``module.``, a normalisation ``1.`` in front)."""
    candidates = [state, {re.sub(r"(^|\.)module\.", r"\1", k): v for k, v in state.items()}]
    for base in list(candidates):
        candidates.append({f"1.{k}": v for k, v in base.items()})
        candidates.append({k.removeprefix("1."): v for k, v in base.items()})
    for candidate in candidates:
        if set(candidate) == expected:
            return candidate
    return state  # let load_state_dict report what is missing


def _build(arch: str | None, state: dict[str, torch.Tensor], path: Path, strict: bool,
           **arch_kwargs: Any) -> nn.Module:
    if arch is None:
        raise ModelFileError(f"{path} holds only weights: name the architecture (arch=..., --arch NAME)")
    model = create_model(arch, **arch_kwargs)
    model.load_state_dict(_match_keys(state, set(model.state_dict())), strict=strict)
    return model


def load_state_dict_model(path: str | Path, arch: str | None = None, *, map_location: str | torch.device = "cpu",
                          strict: bool = True, **arch_kwargs: Any) -> nn.Module:
    """Weights saved with torch.save (read weights-only) into ``create_model(arch)``."""
    state, saved_arch, saved_kwargs = _extract_state_dict(safe_torch_load(path, map_location, name=path))
    if arch is not None and arch != saved_arch:
        saved_kwargs = {}  # the caller's architecture: the file's keyword arguments were for another
    return _build(arch or saved_arch, state, Path(path), strict, **{**saved_kwargs, **arch_kwargs})


def load_safetensors_model(path: str | Path, arch: str | None = None, *, map_location: str | torch.device = "cpu",
                           strict: bool = True, **arch_kwargs: Any) -> nn.Module:
    """Weights from a safetensors file into ``create_model(arch)``; ``arch`` may come from its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        saved_arch = (handle.metadata() or {}).get("arch")
    state = load_file(str(path), device=str(map_location))
    return _build(arch or saved_arch, state, Path(path), strict, **arch_kwargs)


def load_torchscript(path: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """A TorchScript archive (torch.jit.save): a compiled graph, no Python code is imported."""
    return torch.jit.load(str(path), map_location=map_location)


class ExportedModel(nn.Module):
    """Holds ``ExportedProgram.module()``; its train/eval mode was fixed at export, so ``train()`` is a no-op."""

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self


_UNSAFE_PT2_PREFIXES = ("custom_obj", "opaque_obj")


def check_exported_archive(path: str | Path) -> None:
    """Refuse a .pt2 whose embedded pickles would need code to load.

    ``torch.export.load`` unpickles some members without ``weights_only`` (pickled weights and
    constants, example inputs, script and opaque objects), so every such member is first read
    here weights-only.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickled = {n for n in names if n.endswith((".pt", ".pkl"))}
        for config_name in (n for n in names if n.endswith("_config.json")):
            folder = config_name.rsplit("/", 1)[0]
            entries = json.loads(archive.read(config_name)).get("config", {})
            for meta in entries.values():
                member = f"{folder}/{meta.get('path_name', '')}"
                if meta.get("path_name", "").startswith(_UNSAFE_PT2_PREFIXES):
                    raise UnsafeModelError(f"{path} embeds pickled Python objects ({member}); refusing to load it")
                if meta.get("use_pickle"):
                    pickled.add(member)
        for member in sorted(pickled):
            if member not in names:
                raise ModelFileError(f"{path}: member {member} named in the archive is missing")
            safe_torch_load(archive.read(member), name=f"{path}:{member}")


def load_exported(path: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """A ``torch.export`` program (.pt2), after checking its pickled members weights-only."""
    check_exported_archive(path)
    model = ExportedModel(torch.export.load(str(path)).module())
    return model.to(map_location)


class OnnxModel(nn.Module):
    """An ONNX graph run by onnxruntime (CPU, or CUDA when its provider is installed); no Python code is loaded."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import onnxruntime

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # noqa: BLE001  onnxruntime raises its own untyped errors
            raise ModelFileError(f"{path} is not a readable ONNX model: {error}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: an ONNX classifier must take one input, this one takes {len(inputs)}")
        batch = inputs[0].shape[0] if inputs[0].shape else None
        if isinstance(batch, int):
            raise ModelFileError(f"{path}: the ONNX input's batch dimension is fixed at {batch}; export it as dynamic "
                             "(dynamic_axes={'input': {0: 'batch'}}) so noisy copies can be batched")
        self.input_name = inputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def load_onnx(path: str | Path) -> nn.Module:
    return OnnxModel(path)


def load_model(path: str | Path, format: Format | None = None, arch: str | None = None, *,
               map_location: str | torch.device = "cpu", strict: bool = True, **arch_kwargs: Any) -> nn.Module:
    """Load a classifier from ``path`` in eval mode; ``format`` is detected when None.

    ``arch`` (and ``arch_kwargs`` such as ``num_classes``) names the registered architecture for
    the weights-only formats; a checkpoint's own ``arch`` entry is used when it has one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    fmt = format or detect_format(path)
    if fmt == "torchscript":
        model = load_torchscript(path, map_location=map_location)
    elif fmt == "state_dict":
        model = load_state_dict_model(path, arch, map_location=map_location, strict=strict, **arch_kwargs)
    elif fmt == "safetensors":
        model = load_safetensors_model(path, arch, map_location=map_location, strict=strict, **arch_kwargs)
    elif fmt == "export":
        model = load_exported(path, map_location=map_location)
    elif fmt == "onnx":
        model = load_onnx(path)
    else:
        raise ModelFileError(f"unknown model format {fmt!r}: use one of {', '.join(FORMATS)}")
    return model.eval()
