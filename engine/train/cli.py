"""``kavach train classifier`` and ``kavach train denoiser``: train, log each epoch, write a checkpoint."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Self

import torch
import typer
from rich.console import Console

from engine.data import load_dataset
from engine.denoise.train import OBJECTIVES, DenoiserTraining, denoiser_meta, train_denoiser
from engine.models import create_model, load_model
from engine.models.registry import model_config
from engine.noise import Noise, make_noise
from engine.options import NoiseKind
from engine.progress import progress_bar
from engine.train.checkpoint import save_checkpoint
from engine.train.classifier import METHODS, ClassifierTraining, train_classifier, training_meta
from engine.train.loop import EpochLog

train_app = typer.Typer(help="Train noise-robust classifiers and denoisers; checkpoints load with `kavach certify`.",
                        no_args_is_help=True)
console = Console(stderr=True)

DatasetOpt = Annotated[str, typer.Option(help="digits, fashion_mnist, cifar10 (train split; the test split is "
                                              "evaluated each epoch), or an .npz with x and y")]
OutOpt = Annotated[Path, typer.Option(help="checkpoint to write (weights only, with arch and training record)")]
EpochsOpt = Annotated[int, typer.Option(min=0, help="epochs")]
BatchOpt = Annotated[int, typer.Option(min=1, help="images per step")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate (cosine decay to 0)")]
SeedOpt = Annotated[int, typer.Option(help="seed for initialisation, batches and noise")]
StepsOpt = Annotated[int | None, typer.Option(help="at most this many steps per epoch (quick runs)")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda ... (default: cuda if available)")]
EvalCountOpt = Annotated[int, typer.Option(help="test images evaluated each epoch")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def _data(dataset: str, device: str, eval_count: int) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                 tuple[torch.Tensor, torch.Tensor] | None]:
    try:
        train = load_dataset(dataset, split="train")
        test = None if dataset.endswith(".npz") else load_dataset(dataset, split="test")
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    train_xy = (train.x.to(device), train.y.to(device))
    test_xy = None if test is None else (test.x[:eval_count].to(device), test.y[:eval_count].to(device))
    return train_xy, test_xy


def _noise(kind: NoiseKind, sigma: float, k: int, d: int) -> Noise:
    try:
        return make_noise(kind.value, sigma, k=k, d=d if k else None)
    except ValueError as error:
        raise _fail(str(error)) from None


class _Bar:
    """A rich progress bar over all training steps, showing the running loss."""

    def __enter__(self) -> Self:
        self.progress = progress_bar("training", "loss {task.fields[loss]}", console=console)
        self.progress.__enter__()
        self.task = self.progress.add_task("train", total=None, loss="-")
        return self

    def step(self, done: int, total: int, loss: float) -> None:
        self.progress.update(self.task, completed=done, total=total, loss=f"{loss:.4f}")

    def epoch(self, log: EpochLog) -> None:
        self.progress.console.print(_epoch_line_text(log))

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]


def _epoch_line_text(log: EpochLog) -> str:
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in log.metrics.items())
    return f"epoch {log.epoch:3d}  loss {log.loss:.4f}  lr {log.lr:.2e}  {log.seconds:.1f}s  {metrics}"


def _command(ctx: typer.Context) -> str:
    """The command as given: every option not left at its default, in declaration order."""
    words = ["kavach", "train", ctx.info_name or ""]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # typer's own click: compare by name
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        value = getattr(value, "value", value)
        words += [param.opts[0], str(value)] if param.opts[0].startswith("-") else [str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _fresh_log(out: Path) -> Path:
    """OUT.log.jsonl, emptied: one JSON line per epoch of this run."""
    log_path = out.with_name(out.name + ".log.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    return log_path


def _save(ctx: typer.Context, out: Path, model: torch.nn.Module, arch: str, kwargs: dict, meta: dict,
          x: torch.Tensor) -> None:
    """Write the checkpoint with the command that made it, and print the last epoch as JSON on stdout."""
    meta = meta | {"command": _command(ctx), "input_shape": list(x.shape[1:])}
    save_checkpoint(out, model, arch, kwargs, meta)
    console.print(f"wrote {out} (log {out.name}.log.jsonl beside it)")
    typer.echo(json.dumps({"checkpoint": str(out), "final": meta["final"]}))


@train_app.command("classifier")
def classifier(
    ctx: typer.Context,
    out: OutOpt,
    dataset: DatasetOpt = "digits",
    arch: Annotated[str, typer.Option(help="registered architecture (kavach models)")] = "digits_cnn",
    arch_kwargs: Annotated[str, typer.Option(help='its keyword arguments as JSON, e.g. \'{"width": 16}\'')] = "{}",
    method: Annotated[str, typer.Option(help=f"objective: {', '.join(METHODS)}")] = "gaussian",
    sigma: Annotated[float, typer.Option(help="noise level to train at (the one to certify)")] = 0.25,
    noise: Annotated[NoiseKind, typer.Option(help="gaussian, or general_gaussian with --k (DSRS)")] = NoiseKind.gaussian,
    k: Annotated[int, typer.Option(help="generalized Gaussian exponent")] = 0,
    epochs: EpochsOpt = 10,
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    m: Annotated[int, typer.Option(help="consistency: noisy copies per image")] = 2,
    lbd: Annotated[float, typer.Option(help="consistency: KL weight (5 MNIST, 20 CIFAR-10)")] = 5.0,
    eta: Annotated[float, typer.Option(help="consistency: entropy weight")] = 0.5,
    smoothmix_m: Annotated[int, typer.Option(help="SmoothMix: noisy copies")] = 4,
    smoothmix_steps: Annotated[int, typer.Option(help="SmoothMix: adversarial steps T")] = 4,
    smoothmix_step_size: Annotated[float, typer.Option(help="SmoothMix: L2 step size alpha")] = 0.5,
    smoothmix_eta: Annotated[float, typer.Option(help="SmoothMix: mixup loss weight eta")] = 5.0,
    mix_step: Annotated[int, typer.Option(help="SmoothMix: 1 uses the one-step adversary as the clean side")] = 0,
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    eval_count: EvalCountOpt = 2000,
    device: DeviceOpt = None,
) -> None:
    """Train a base classifier; logs loss, clean and noisy test accuracy per epoch (OUT.log.jsonl too)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train, test = _data(dataset, device, eval_count)
    try:
        config = ClassifierTraining(method=method, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, m=m,
                                    lbd=lbd, eta=eta, smoothmix_m=smoothmix_m, smoothmix_steps=smoothmix_steps,
                                    smoothmix_step_size=smoothmix_step_size, smoothmix_eta=smoothmix_eta,
                                    mix_step=mix_step, max_steps_per_epoch=max_steps)
        num_classes = int(train[1].max()) + 1
        kwargs = json.loads(arch_kwargs) | {"num_classes": num_classes}
        torch.manual_seed(seed)
        model = create_model(arch, **kwargs).to(device)
    except (ValueError, TypeError) as error:
        raise _fail(str(error)) from None
    law = None if method == "none" else _noise(noise, sigma, k, train[0][0].numel())
    log_path = _fresh_log(out)
    with _Bar() as bar:
        history = train_classifier(model, train, law, config, num_classes=num_classes, test=test, on_step=bar.step,
                                   on_epoch=bar.epoch, log_path=log_path)
    _save(ctx, out, model, arch, kwargs, training_meta(config, law, dataset, history), train[0])


@train_app.command("denoiser")
def denoiser(
    ctx: typer.Context,
    out: OutOpt,
    dataset: DatasetOpt = "digits",
    arch: Annotated[str, typer.Option(help="drunet (colour defaults) or drunet_small")] = "drunet_small",
    widths: Annotated[str | None, typer.Option(help="four channel widths, e.g. 16,32,64,64")] = None,
    blocks: Annotated[int | None, typer.Option(help="residual blocks per stage")] = None,
    sigmas: Annotated[str, typer.Option(help="noise levels to train on, e.g. 0.25,0.5")] = "0.25,0.5",
    noise: Annotated[NoiseKind, typer.Option(help="gaussian, or general_gaussian with --k")] = NoiseKind.gaussian,
    k: Annotated[int, typer.Option(help="generalized Gaussian exponent")] = 0,
    objective: Annotated[str, typer.Option(help=f"{', '.join(OBJECTIVES)}")] = "mse",
    classifier: Annotated[Path | None, typer.Option(help="frozen classifier checkpoint (stability)")] = None,
    classifier_arch: Annotated[str | None, typer.Option(help="its architecture, for weights-only files")] = None,
    epochs: EpochsOpt = 10,
    stability_epochs: Annotated[int, typer.Option(help="mse+stability: stability epochs after the MSE ones")] = 0,
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    eval_count: EvalCountOpt = 1000,
    device: DeviceOpt = None,
) -> None:
    """Train a DRUNet denoiser on the noise levels to be certified; logs held-out MSE per level."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train, test = _data(dataset, device, eval_count)
    try:
        levels = [float(s) for s in sigmas.split(",") if s.strip()]
        config = DenoiserTraining(objective=objective, epochs=epochs, stability_epochs=stability_epochs,
                                  batch_size=batch_size, lr=lr, seed=seed, max_steps_per_epoch=max_steps)
        kwargs: dict = {"in_channels": int(train[0].shape[1])}
        if widths:
            kwargs["widths"] = [int(w) for w in widths.split(",")]
        if blocks is not None:
            kwargs["blocks"] = blocks
        if model_config(arch) is None or not arch.startswith("drunet"):
            raise ValueError(f"--arch must be drunet or drunet_small, got {arch!r}")
        torch.manual_seed(seed)
        model = create_model(arch, **kwargs).to(device)
        frozen = None if classifier is None else load_model(classifier, arch=classifier_arch, map_location=device)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    law = _noise(noise, max(levels), k, train[0][0].numel())
    log_path = _fresh_log(out)
    try:
        with _Bar() as bar:
            history = train_denoiser(model, train, law, levels, config, classifier=frozen, test=test,
                                     on_step=bar.step, on_epoch=bar.epoch, log_path=log_path)
    except ValueError as error:
        raise _fail(str(error)) from None
    kwargs["widths"], kwargs["blocks"] = list(model.widths), model.blocks
    _save(ctx, out, model, arch, kwargs,
          denoiser_meta(config, law, levels, dataset, history, str(classifier) if classifier else None), train[0])
