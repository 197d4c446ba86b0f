"""The ``kavach`` command: certify a model on a dataset and summarise the certificates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from engine.config import CertifyConfig, explain
from engine.data import load_dataset
from engine.denoise import denoised_classifier
from engine.hardware import native_bf16
from engine.metrics import (
    abstain_rate,
    average_certified_radius,
    certified_accuracy_curve,
    clean_accuracy,
    radius_grid,
)
from engine.models import UnsafeModelError, list_models, load_model
from engine.models.loading import ExportedModel, OnnxModel
from engine.options import ISSMode, Method, NoiseKind
from engine.progress import progress_bar
from engine.sampling import model_dtype
from engine.smooth import SmoothedClassifier, certify_group
from engine.train.cli import train_app

app = typer.Typer(help="Certified robustness of image classifiers by randomized smoothing.", no_args_is_help=True,
                  add_completion=False)
console = Console()
progress_console = Console(stderr=True)
DEFAULTS = CertifyConfig()  # the options' defaults are the service's: one config
DEFAULT_ISS_MODE = ISSMode(DEFAULTS.iss_mode)


@app.callback()
def main() -> None:
    """Kavach: certify, with probability 1 - alpha, that no L2 perturbation below a radius changes a prediction."""


def parse_indices(spec: str, size: int) -> list[int]:
    """'0,5,10-19' -> [0, 5, 10, ..., 19]; every index must lie in [0, size)."""
    picks: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, sep, high = part.partition("-")
        try:
            picks.extend(range(int(low), int(high) + 1) if sep else [int(low)])
        except ValueError:
            raise typer.BadParameter(f"cannot read index range {part!r}; use e.g. 0,5,10-19") from None
    bad = [i for i in picks if not 0 <= i < size]
    if bad:
        raise typer.BadParameter(f"indices {bad[:5]} are outside the dataset (size {size})")
    return picks


def select_indices(size: int, indices: str | None, stride: int, count: int | None) -> list[int]:
    chosen = parse_indices(indices, size) if indices else list(range(0, size, stride))
    return chosen if count is None else chosen[:count]


def is_eager(model: torch.nn.Module) -> bool:
    """Python modules and exported programs take NHWC weights; TorchScript archives are left as saved."""
    return not isinstance(model, torch.jit.ScriptModule)


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def print_summary(rows: list[dict], seconds: float) -> None:
    radii = np.array([r["radius"] for r in rows])
    correct = np.array([r["correct"] for r in rows])
    grid = radius_grid(max(float(radii.max(initial=0.0)), 0.25))
    curve = certified_accuracy_curve(radii, correct, grid)
    table = Table(title=f"certified accuracy ({len(rows)} inputs)")
    table.add_column("radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for r, acc in zip(grid, curve):
        table.add_row(f"{r:.2f}", f"{acc:.3f}")
    console.print(table)
    samples = sum(r["samples"] for r in rows)
    console.print(f"clean accuracy (smoothed) {clean_accuracy(correct):.3f}   "
                  f"ACR {average_certified_radius(radii, correct):.4f}   "
                  f"abstain rate {abstain_rate([r['prediction'] for r in rows]):.3f}")
    console.print(f"{samples:,} samples in {seconds:.1f} s ({samples / max(seconds, 1e-9):,.0f} samples/s)")


@app.command()
def certify(
    model: Annotated[Path, typer.Argument(help="model file: TorchScript, state dict (.pt/.pth), .safetensors, .pt2")],
    out: Annotated[Path, typer.Option(help="JSON lines output, one per input")] = Path("results.jsonl"),
    dataset: Annotated[str, typer.Option(help="digits, fashion_mnist, or an .npz with x and y")] = "digits",
    split: Annotated[str, typer.Option(help="dataset split")] = "test",
    arch: Annotated[str | None, typer.Option(help="architecture for weights-only files (kavach models)")] = None,
    format: Annotated[str | None, typer.Option(help="torchscript|state_dict|safetensors|export")] = None,
    num_classes: Annotated[int | None, typer.Option(help="classes of --arch (default: its own)")] = None,
    sigma: Annotated[float, typer.Option(help="noise level on the [0, 1] input scale")] = DEFAULTS.sigma,
    noise: Annotated[NoiseKind, typer.Option(help="smoothing distribution")] = DEFAULTS.noise,
    k: Annotated[int, typer.Option(help="generalized Gaussian exponent (d/2 - k > 0)")] = DEFAULTS.k,
    method: Annotated[Method, typer.Option(help="np (Cohen et al.) or dsrs (Li et al.)")] = DEFAULTS.method,
    q_sigma: Annotated[float | None, typer.Option(help="DSRS: Q is the same noise at this smaller sigma")] = None,
    q_threshold: Annotated[str | None, typer.Option(help="DSRS: Q is P truncated at this quantile, or auto")] = None,
    n0: Annotated[int, typer.Option(help="selection samples")] = DEFAULTS.n0,
    n: Annotated[int, typer.Option(help="estimation samples (DSRS: total over P and Q; ISS: maximum)")] = DEFAULTS.n,
    alpha: Annotated[float, typer.Option(help="failure probability")] = DEFAULTS.alpha,
    batch_size: Annotated[int, typer.Option(help="noisy copies per forward pass")] = DEFAULTS.batch_size,
    iss_delta: Annotated[float | None, typer.Option(help="ISS: radius loss allowed against n samples")] = None,
    iss_mode: Annotated[ISSMode, typer.Option(help="ISS: absolute or relative delta")] = DEFAULT_ISS_MODE,
    sequential_delta: Annotated[float | None, typer.Option(
        help="anytime-valid sequential sampling: stop once n cannot add more than this radius")] = None,
    pack: Annotated[int, typer.Option(help="certify this many inputs together, their noisy copies sharing "
                                           "batches (NP; fills the device for small inputs)")] = DEFAULTS.pack,
    indices: Annotated[str | None, typer.Option(help="inputs to certify, e.g. 0,5,10-19")] = None,
    stride: Annotated[int, typer.Option(min=1, help="every stride-th input")] = 1,
    count: Annotated[int | None, typer.Option(min=0, help="at most this many inputs")] = None,
    seed: Annotated[int | None, typer.Option(help="seed; input i uses seed + i (below 2^64)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available)")] = None,
    channels_last: Annotated[bool, typer.Option(help="run convolutions in NHWC layout (faster on CPU and GPU)")] = True,
    bf16: Annotated[bool, typer.Option(help="run the model in bfloat16 (GPUs from Ampere on, CPUs with AVX512-BF16, "
                                            "AMX or Arm BF16; refused elsewhere, where it is slower); the "
                                            "certificate is for the bf16 model")] = False,
    force_bf16: Annotated[bool, typer.Option("--force-bf16", help="--bf16 even where bf16 is emulated (5-10x "
                                                                "slower), e.g. to reproduce a bf16 certificate")]
    = False,
    denoiser: Annotated[Path | None, typer.Option(help="denoiser checkpoint put in front of the model (told --sigma)")]
    = None,
    compile: Annotated[bool, typer.Option("--compile", help="run the model through torch.compile: pays on long "
                                                          "runs; the first batch waits for the compile")] = False,
    freeze: Annotated[bool, typer.Option("--freeze", help="script and freeze the model into one TorchScript graph "
                                                        "(BatchNorm folded, weights prepacked): the fast path on a "
                                                        "CPU, ready at once")] = False,
) -> None:
    """Certify each selected input and write one JSON line per input, then print a summary."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = bf16 or force_bf16
    if bf16 and not force_bf16:  # refused, not warned: a warning scrolls past a run that takes 5-10x as long
        try:
            native, why = native_bf16(device)
        except (ValueError, RuntimeError) as error:
            raise fail(str(error)) from None
        if not native:
            raise fail(f"--bf16 would be slower than fp32 on {device}: {why}. Leave it out, or pass --force-bf16 "
                       "to certify the bf16 model anyway")
    try:  # every rule of the config is checked before a model is loaded
        config = CertifyConfig(method=method, noise=noise, k=k, sigma=sigma, alpha=alpha, n0=n0, n=n,
                               batch_size=batch_size, pack=pack, iss_delta=iss_delta, iss_mode=iss_mode.value,
                               sequential_delta=sequential_delta, q_sigma=q_sigma, q_threshold=q_threshold,
                               bf16=bf16, compile=compile, freeze=freeze, seed=seed)
    except ValidationError as error:
        raise fail(explain(error, option_name)) from None
    arch_kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        data = load_dataset(dataset, split=split)
        net = load_model(model, format=format, arch=arch, map_location=device, **arch_kwargs).to(device)
        if denoiser is not None:
            net = denoised_classifier(net, load_model(denoiser, map_location=device).to(device), sigma)
    except UnsafeModelError as error:
        raise fail(str(error)) from None
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        raise fail(str(error)) from None
    picks = select_indices(len(data.x), indices, stride, count)
    try:
        smoothing = config.make_noise(data.x[0].numel())
        config.input_seed(max(picks, default=0))  # the last input's seed must exist
    except ValueError as error:
        raise fail(str(error)) from None
    try:
        with torch.inference_mode():
            classes = int(net(data.x[:1].to(device)).shape[-1])
    except (RuntimeError, ValueError) as error:
        raise fail(f"the model cannot read {dataset} inputs of shape {tuple(data.x.shape[1:])}: {error}") from None
    if bf16 and not is_eager(net):
        raise fail("--bf16 converts PyTorch modules; a TorchScript archive fixes its precision")
    if compile and (not is_eager(net) or isinstance(net, OnnxModel)):
        raise fail("--compile compiles PyTorch modules; TorchScript and ONNX files are compiled graphs already")
    if freeze and isinstance(net, OnnxModel | ExportedModel):
        raise fail("--freeze scripts PyTorch modules; ONNX and torch.export files do not script")
    try:
        smoothed = SmoothedClassifier(net, classes, smoothing, channels_last=channels_last and is_eager(net),
                                      dtype=torch.bfloat16 if bf16 else None, compile=compile, freeze=freeze)
    except ValueError as error:
        raise fail(str(error)) from None
    if bf16 and model_dtype(net) != torch.bfloat16:
        raise fail("--bf16 needs a model with floating-point weights to convert (this format fixes its precision)")
    schedule = config.make_schedule()
    rows: list[dict] = []
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as sink, progress_bar("certifying", console=progress_console) as progress:
        task = progress.add_task("certify", total=len(picks), status="")
        for group in config.groups(picks):
            try:
                results = certify_group(smoothed, config, data.x[group], group[0], schedule)
            except ValueError as error:
                raise fail(str(error)) from None
            for i, result in zip(group, results, strict=True):
                label = int(data.y[i])
                row = {"index": i, "label": label, "prediction": result.prediction, "radius": result.radius,
                       "p_lower": result.p_lower, "p_upper": result.p_upper, "q_lower": result.q_lower,
                       "q_upper": result.q_upper, "samples": result.samples, "seconds": result.seconds,
                       "correct": result.prediction == label,
                       # on abstention: the selection draws' top two classes, for reading failures
                       "top_class": result.top_class, "runner_up": result.runner_up}
                sink.write(json.dumps(row) + "\n")
                rows.append(row)
            sink.flush()
            certified = sum(r["correct"] for r in rows)
            progress.update(task, advance=len(group), status=f"correct {certified}/{len(rows)}")
    console.print(f"wrote {len(rows)} certificates to {out} (model in {str(model_dtype(net)).removeprefix('torch.')})")
    if rows:
        print_summary(rows, time.perf_counter() - start)


@app.command()
def models() -> None:
    """List the registered architectures (any torchvision classification name works too)."""
    for name in list_models():
        console.print(name)


app.add_typer(train_app, name="train")


if __name__ == "__main__":
    app()
