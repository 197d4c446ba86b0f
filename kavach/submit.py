"""``kavach submit``: upload a model, certify it on the service, judge the result by gates, write reports.

Exit codes: 0 every gate passed (or none was asked), 1 a gate failed (each named), 2 the job could not run
(bad token, unreachable server, a refused request, a failed or cancelled job, bad options).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kavach.client import Client, KavachError
from kavach.report import (
    Report,
    build_report,
    figures,
    gates,
    parse_accuracy_gate,
    plot_curve,
    to_json,
    to_junit,
    to_markdown,
)

PASSED, GATE_FAILED, COULD_NOT_RUN = 0, 1, 2
SHOWN_RADII = (0.25, 0.5, 0.75, 1.0)  # the summary table's radii beside the gates' own

err = Console(stderr=True)
out = Console()


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]kavach submit: could not run:[/] {message}", highlight=False)
    return typer.Exit(COULD_NOT_RUN)


def _input_shape(text: str) -> list[int]:
    try:
        shape = [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write C,H,W, e.g. 1,28,28") from None
    if len(shape) != 3:
        raise typer.BadParameter(f"{text!r}: three sizes C,H,W, e.g. 1,28,28")
    return shape


def _config(config_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The job's CertifyConfig fields: the file's, then the flags given (the server checks every rule)."""
    config: dict[str, Any] = {}
    if config_file is not None:
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as error:
            raise _fail(f"--config {config_file}: {error}") from None
        if not isinstance(config, dict):
            raise _fail(f"--config {config_file}: a JSON object of the job's settings, e.g. {{\"n\": 10000}}")
    config.update({key: value for key, value in flags.items() if value is not None})
    return config


def _summary_table(report: Report) -> Table:
    f = report.figures
    table = Table(title=f"job {report.job.id}: {report.model_name}", title_justify="left")
    table.add_column("radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for radius, accuracy in f.certified_accuracy.items():
        table.add_row(f"{radius:g}", f"{accuracy:.2%}")
    return table


def _figures_line(report: Report) -> str:
    f = report.figures
    return f"ACR {f.acr:.4f} · clean accuracy {f.clean_accuracy:.2%} · abstained {f.abstain_rate:.2%} · {f.count} inputs"



def _gates_table(report: Report) -> Table:
    table = Table(title="gates", title_justify="left")
    for name, justify in (("gate", "left"), ("measured", "right"), ("required", "right"), ("result", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for g in report.gates:
        table.add_row(g.name, f"{g.measured:.4f}", f"{g.required:.4f}",
                      "[green]pass[/]" if g.passed else "[bold red]FAIL[/]")
    return table


def submit(
    model: Annotated[Path | None, typer.Argument(help="model file to upload (TorchScript, .pt2, ONNX, state dict "
                                                      "with --arch, .safetensors); leave out with --model-id")] = None,
    dataset: Annotated[str, typer.Option(help="dataset id from GET /datasets (digits, fashion_mnist, ...)")] = "",
    model_id: Annotated[int | None, typer.Option(help="certify an already registered model instead")] = None,
    name: Annotated[str | None, typer.Option(help="the model's name (default: the file name)")] = None,
    arch: Annotated[str | None, typer.Option(help="architecture of a state dict or .safetensors file")] = None,
    num_classes: Annotated[int | None, typer.Option(help="classes (default: the dataset's)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="C,H,W of one input (default: the dataset's)")] = None,
    split: Annotated[str, typer.Option(help="dataset split")] = "test",
    count: Annotated[int | None, typer.Option(help="certify this many inputs (default: the whole split)")] = None,
    start: Annotated[int, typer.Option(help="first input")] = 0,
    stride: Annotated[int, typer.Option(help="every stride-th input")] = 1,
    config_file: Annotated[Path | None, typer.Option("--config", help="JSON file of the job's settings "
                                                                     "(any CertifyConfig field); flags override")] = None,
    method: Annotated[str | None, typer.Option(help="np or dsrs")] = None,
    sigma: Annotated[float | None, typer.Option(help="noise level on the [0, 1] pixel scale")] = None,
    n: Annotated[int | None, typer.Option(help="estimation samples per input")] = None,
    n0: Annotated[int | None, typer.Option(help="selection samples per input")] = None,
    alpha: Annotated[float | None, typer.Option(help="failure probability of each certificate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="noisy copies per forward pass")] = None,
    seed: Annotated[int | None, typer.Option(help="seed; input i uses seed + i")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the result (implied by gates and "
                                                                "reports)")] = False,
    timeout: Annotated[float | None, typer.Option(help="give up waiting after this many seconds (exit 2)")] = None,
    min_certified_accuracy: Annotated[list[str] | None, typer.Option(
        help="RADIUS:ACCURACY, e.g. 0.5:0.6 = at radius 0.5 at least 60% certified; repeatable")] = None,
    min_acr: Annotated[float | None, typer.Option(help="the average certified radius at least this")] = None,
    baseline: Annotated[int | None, typer.Option(help="a finished job on the same inputs to compare with")] = None,
    max_drop: Annotated[float | None, typer.Option(
        help="with --baseline: certified accuracy (at the gates' radii, else 0.25 to 1) and ACR at most this "
             "below the baseline's")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the JSON report here")] = None,
    junit_out: Annotated[Path | None, typer.Option("--junit", help="write a JUnit XML report here (one test "
                                                                  "case per gate)")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="write a Markdown report here, the "
                                                                        "curve beside it as .png")] = None,
    download: Annotated[Path | None, typer.Option(help="save the certified smoothed classifier (torch.export "
                                                       "program) here once the job is done")] = None,
    url: Annotated[str | None, typer.Option(envvar="KAVACH_URL", help="service URL")] = None,
    token: Annotated[str | None, typer.Option(envvar="KAVACH_TOKEN", help="API token", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Certify MODEL on the service and fail (exit 1) when a robustness gate fails; exit 2 when it cannot run."""
    began = time.monotonic()
    try:
        accuracy_gates = [parse_accuracy_gate(text) for text in min_certified_accuracy or ()]
    except ValueError as error:
        raise _fail(f"--min-certified-accuracy {error}") from None
    if (baseline is None) != (max_drop is None):
        raise _fail("--baseline and --max-drop go together: compare with a job, allowing a drop")
    if (model is None) == (model_id is None):
        raise _fail("give a model file to upload, or --model-id of a registered one (not both)")
    if not dataset:
        raise _fail("--dataset is required (an id from GET /datasets, e.g. digits)")
    judging = bool(accuracy_gates or min_acr is not None or baseline is not None)
    wait = wait or judging or any(p is not None for p in (json_out, junit_out, markdown_out, download))
    config = _config(config_file, {"method": method, "sigma": sigma, "n": n, "n0": n0, "alpha": alpha,
                                   "batch_size": batch_size, "seed": seed})
    try:
        with Client(url, token) as client:
            job_id = _start(client, model, model_id, dataset, split, name, arch, num_classes, input_shape,
                            {"start": start, "stride": stride, "count": count}, config)
            if not wait:
                out.print(f"job {job_id} queued: {client.url}/#/jobs/{job_id}", highlight=False)
                return
            job = (client.wait(job_id, timeout=timeout) if quiet
                   else client.wait_with_progress(job_id, timeout=timeout))
            if job.state.value != "done":
                raise _fail(f"job {job_id} ended {job.state.value}" + (f": {job.error}" if job.error else ""))
            model_name = client.model(job.model_id).name
            rows = client.rows(job_id)
            drop_radii = [r for r, _ in accuracy_gates] or list(SHOWN_RADII)
            baseline_rows = None
            if baseline is not None:
                baseline_rows = _baseline_rows(client, baseline, job)
            radii = sorted({*SHOWN_RADII, *(r for r, _ in accuracy_gates), *drop_radii})
            ours = figures(rows, radii)
            theirs = None if baseline_rows is None else figures(baseline_rows, radii)
            gate_list = gates(ours, min_certified_accuracy=accuracy_gates, min_acr=min_acr, baseline=theirs,
                              baseline_job=baseline, max_drop=max_drop, drop_radii=drop_radii)
            report = build_report(job, model_name, rows, gate_list, ours, baseline_rows, baseline)
            if download is not None:
                saved = client.download_smoothed_model(job_id, download)
                out.print(f"smoothed classifier saved: {saved}", highlight=False)
    except KavachError as error:
        raise _fail(str(error)) from None
    _write_reports(report, json_out, junit_out, markdown_out, time.monotonic() - began)
    out.print(_summary_table(report))
    out.print(_figures_line(report), highlight=False)
    if report.gates:
        out.print(_gates_table(report))
    for gate in report.failed:
        err.print(f"[bold red]gate failed:[/] {gate.name} (measured {gate.measured:.4f}, required at least "
                  f"{gate.required:.4f})", highlight=False)
    if report.failed:
        raise typer.Exit(GATE_FAILED)
    if report.gates:
        out.print(f"[green]all {len(report.gates)} gates passed[/]")


def _start(client: Client, model: Path | None, model_id: int | None, dataset: str, split: str, name: str | None,
           arch: str | None, num_classes: int | None, input_shape: str | None, subset: dict[str, Any],
           config: dict[str, Any]) -> int:
    """Register the model (its shape and classes from the dataset unless given) and start the job."""
    if model is not None:
        known = {d.id: d for d in client.datasets().data}
        if dataset not in known:
            raise KavachError(f"no dataset {dataset!r} on the server; it has {', '.join(sorted(known)) or 'none'}")
        data = known[dataset]
        fields = {"name": name or model.name, "arch": arch, "dataset": dataset,
                  "input_shape": _input_shape(input_shape) if input_shape else data.input_shape,
                  "num_classes": num_classes or data.num_classes, "class_names": data.class_names
                  if (num_classes or data.num_classes) == data.num_classes else None, "sigma": config.get("sigma")}
        registered = client.register_model(model, **{k: v for k, v in fields.items() if v is not None})
        kind = registered.format.value if registered.format else "format detected"
        err.print(f"model {registered.id} registered: {registered.name} ({kind})", highlight=False)
        model_id = registered.id
    assert model_id is not None
    job = client.create_job(model_id, dataset, split=split,
                            subset={k: v for k, v in subset.items() if v is not None}, config=config)
    err.print(f"job {job.id} started: {job.progress.total} inputs of {dataset} ({split})", highlight=False)
    return job.id


def _baseline_rows(client: Client, baseline: int, job: Any) -> list:
    """The baseline's rows, refused unless it is done and certified the very same inputs."""
    then = client.job(baseline)
    if then.state.value != "done":
        raise KavachError(f"baseline job {baseline} is {then.state.value}, not done")
    same = (then.dataset, then.split, then.subset.model_dump()) == (job.dataset, job.split, job.subset.model_dump())
    if not same:
        raise KavachError(f"baseline job {baseline} certified other inputs ({then.dataset} {then.split} "
                          f"{then.subset.model_dump(exclude_defaults=True)}) than job {job.id} ({job.dataset} "
                          f"{job.split} {job.subset.model_dump(exclude_defaults=True)}): compare like with like")
    return client.rows(baseline)


def _write_reports(report: Report, json_out: Path | None, junit_out: Path | None, markdown_out: Path | None,
                   seconds: float) -> None:
    try:
        if json_out is not None:
            json_out.write_text(to_json(report))
        if junit_out is not None:
            junit_out.write_text(to_junit(report, seconds))
        if markdown_out is not None:
            image = plot_curve(report, markdown_out.with_suffix(".png"))
            markdown_out.write_text(to_markdown(report, image.name))
    except OSError as error:
        raise _fail(f"writing a report: {error}") from None
