"""The model process: ``python -m backend.sandbox.child IN_FD OUT_FD``, started by ``ModelProcess``.

It reads one ``init`` frame, copies the model files it names into its scratch folder, imports and
warms up everything it will need, confines itself (``backend.sandbox.confine``), and only then
loads the files. A ``check`` process runs one forward pass on a zero input and says what came out;
a ``serve`` process answers ``votes`` requests until told to exit, sending a ``batch`` heartbeat
as it goes and stopping between batches when a ``cancel`` frame arrives; an ``export`` process writes
the smoothed classifier (``engine.export``) into its scratch folder as one standalone program.

What it reports of a failure is a code from a fixed list; a description goes along only when the
failing code is this project's own (the weights formats' loader, the pickle check), never the text
of an exception raised by a model's own code.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from backend.sandbox import confine as confinement
from backend.sandbox.loading import WEIGHTS_FORMATS, load_registered
from backend.sandbox.wire import read_frame, readable, write_frame
from engine.denoise import denoised_classifier
from engine.export import SmoothedPredictor, save_predictor
from engine.models import ModelFileError, UnsafeModelError, detect_format
from engine.noise import Noise
from engine.sampling import ModelVoter
from engine.smooth import prepare_model

HEARTBEAT_SECONDS = 0.25
DETAIL_CHARS = 500


class Failure(Exception):
    def __init__(self, stage: str, code: str, detail: str | None = None) -> None:
        super().__init__(stage, code)
        self.stage, self.code, self.detail = stage, code, detail


class Cancelled(Exception):
    pass


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "out of memory" in text \
        or "cannot allocate memory" in text


def _clean(text: str, scratch: Path) -> str:
    text = text.replace(str(scratch) + "/", "").replace(str(scratch), "")
    return "".join(c if c.isprintable() else " " for c in text)[:DETAIL_CHARS]


def _failure(stage: str, error: BaseException, fmt: str | None, scratch: Path) -> Failure:
    if _out_of_memory(error):
        return Failure(stage, "memory")
    if isinstance(error, UnsafeModelError):
        return Failure(stage, "unsafe", _clean(str(error), scratch))
    # our loaders' own words, and the weights formats' (read by our code, no code of the file's runs)
    ours = isinstance(error, ModelFileError) or fmt in WEIGHTS_FORMATS and stage == "load"
    return Failure(stage, stage, _clean(str(error), scratch) if ours else None)


def stage_files(spec: dict[str, Any], scratch: Path) -> list[dict[str, Any]]:
    """Copy each model file into the scratch folder (before confinement), keeping its suffix."""
    staged = []
    for number, model in enumerate(spec["models"]):
        source = Path(model["file"])
        target = scratch / f"model{number}{''.join(source.suffixes[-1:])}"
        shutil.copyfile(source, target)
        staged.append({**model, "file": str(target)})
    return staged


def warm_up(device: str) -> None:
    """Load the libraries a forward pass needs while files may still be opened (cuDNN, cuBLAS, oneDNN)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8, 2)).to(device).eval()
    with torch.inference_mode():
        net(torch.zeros(2, 1, 4, 4, device=device)).argmax(1)
        torch.randn(4, 4, device=device).normal_(0, 1)


def load_one(model: dict[str, Any], device: str, scratch: Path) -> tuple[torch.nn.Module, str]:
    fmt = model.get("format")
    try:
        fmt = fmt or detect_format(model["file"])
        net = load_registered(model["file"], format=fmt, arch=model.get("arch"), num_classes=model.get("num_classes"),
                              input_shape=model["input_shape"], input_max=model.get("input_max", 1.0),
                              mean=model.get("mean"), std=model.get("std"), device=device)
    except Exception as error:  # noqa: BLE001  reported as a code (with our own words for our own loaders)
        raise _failure("load", error, fmt, scratch) from None
    return net, fmt


def check(spec: dict[str, Any], out_fd: int, scratch: Path) -> None:
    model = spec["models"][0]
    net, fmt = load_one(model, spec["device"], scratch)
    try:
        with torch.inference_mode():
            out = net(torch.zeros((1, *model["input_shape"]), device=spec["device"]))
    except Exception as error:  # noqa: BLE001
        raise _failure("forward", error, fmt, scratch) from None
    shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    write_frame(out_fd, {"op": "checked", "format": fmt, "shape": shape,
                         "type": "tensor" if shape is not None else type(out).__name__[:40]})


def load_base(spec: dict[str, Any], scratch: Path) -> tuple[torch.nn.Module, set[str]]:
    """The base classifier, behind its denoiser when the spec names one; the formats of its files."""
    device = spec["device"]
    net, fmt = load_one(spec["models"][0], device, scratch)
    formats = {fmt}
    if len(spec["models"]) > 1:
        denoiser, denoiser_fmt = load_one(spec["models"][1], device, scratch)
        formats.add(denoiser_fmt)
        net = denoised_classifier(net, denoiser, float(spec["sigma"]))
    return net, formats


def build(spec: dict[str, Any], scratch: Path) -> ModelVoter:
    """The base classifier (with its denoiser) converted as the job asks, behind a ModelVoter."""
    net, formats = load_base(spec, scratch)
    try:
        prepared = prepare_model(net, channels_last=spec.get("channels_last", False),
                                 dtype=torch.bfloat16 if spec.get("bf16") else None,
                                 compile=spec.get("compile", False), freeze=spec.get("freeze", False))
    except Exception as error:  # noqa: BLE001
        ours = formats <= set(WEIGHTS_FORMATS) and isinstance(error, ValueError)
        raise Failure("prepare", "prepare", _clean(str(error), scratch) if ours else None) from None
    return ModelVoter(prepared, spec["num_classes"], channels_last=spec.get("channels_last", False),
                      static_shapes=bool(spec.get("compile")))


def export(spec: dict[str, Any], out_fd: int, scratch: Path) -> None:
    """Write Cohen's PREDICT over the base classifier, with the job's noise, n and alpha, as one program."""
    net, formats = load_base(spec, scratch)
    try:
        if spec.get("bf16"):
            net = prepare_model(net, dtype=torch.bfloat16)
        predictor = SmoothedPredictor(net, spec["num_classes"], spec["models"][0]["input_shape"], spec["sigma"],
                                      spec["n"], spec["alpha"], spec["batch_size"], bf16=bool(spec.get("bf16")))
        blob, fmt = save_predictor(predictor, spec.get("metadata", {}))
    except Exception as error:  # noqa: BLE001  a model TorchScript and torch.export cannot compile
        raise _failure("export", error, None, scratch) from None
    name = "smoothed.pt2" if fmt == "export" else "smoothed.pt"
    (scratch / name).write_bytes(blob)
    write_frame(out_fd, {"op": "exported", "format": fmt, "file": name, "bytes": len(blob),
                         "formats": sorted(formats)})


def serve(spec: dict[str, Any], in_fd: int, out_fd: int, scratch: Path) -> None:
    voter = build(spec, scratch)
    write_frame(out_fd, {"op": "ready"})
    while True:
        header, tensors = read_frame(in_fd)
        if header.get("op") == "exit":
            return
        if header.get("op") == "cancel":  # arrived after its request finished: nothing to stop
            continue
        if header.get("op") != "votes":
            raise RuntimeError(f"unknown request {header.get('op')!r}")
        request = header["id"]
        last = [time.monotonic()]

        def on_batch(samples: int, request: int = request, last: list[float] = last) -> None:
            while readable(in_fd):
                frame, _ = read_frame(in_fd)
                if frame.get("op") == "cancel":
                    raise Cancelled
            if time.monotonic() - last[0] >= HEARTBEAT_SECONDS:
                write_frame(out_fd, {"op": "batch", "id": request, "samples": samples})
                last[0] = time.monotonic()

        seed = header["gen"]["seed"]
        generator = voter.generator(seed)
        if generator is not None and "gen_state" in tensors:
            generator.set_state(tensors["gen_state"])
        voter.on_batch = on_batch
        try:
            counts = voter.votes(tensors["xs"], Noise(**header["noise"]), header["sizes"], header["batch_size"],
                                 generator)
        except Cancelled:
            write_frame(out_fd, {"op": "cancelled", "id": request})
            continue
        except Exception as error:  # noqa: BLE001
            raise _failure("forward", error, None, scratch) from None
        out = {"counts": counts}
        if generator is not None:
            out["gen_state"] = generator.get_state()
        write_frame(out_fd, {"op": "votes", "id": request}, out)


def main(in_fd: int, out_fd: int) -> int:
    spec, _ = read_frame(in_fd)
    scratch = Path(spec["scratch"])
    try:
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        try:
            spec["models"] = stage_files(spec, scratch)
        except OSError:
            raise Failure("load", "load", "the stored file cannot be read") from None
        warm_up(spec["device"])
        if spec.get("confine", True):
            limits = confinement.Limits(**spec["limits"])
            try:
                confinement.confine(limits, confinement.default_paths(scratch, [Path(p) for p in spec["code"]]))
            except (confinement.SandboxUnavailable, OSError) as error:
                raise Failure("confine", "confine", str(error)[:DETAIL_CHARS]) from None
        else:
            confinement.apply_rlimits(confinement.Limits(**spec["limits"]))
        if spec["task"] == "check":
            check(spec, out_fd, scratch)
        elif spec["task"] == "export":
            export(spec, out_fd, scratch)
        else:
            serve(spec, in_fd, out_fd, scratch)
    except Failure as failure:
        write_frame(out_fd, {"op": "error", "stage": failure.stage, "code": failure.code, "detail": failure.detail})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
