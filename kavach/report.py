"""A certification job judged by gates, and its reports: JSON, JUnit XML and Markdown with a PNG curve.

A gate is one pass/fail check a CI pipeline asks for (``kavach submit --min-certified-accuracy 0.5:0.6``).
Figures are computed from the job's rows with ``engine.metrics``, the same functions as the summary, so the
certified accuracy at radius r counts inputs predicted correctly with a certified radius of at least r.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.models import JobPublic, ResultRowPublic
from engine.metrics import average_certified_radius, certified_accuracy_curve, radius_grid


@dataclass(frozen=True)
class Gate:
    """One check: ``measured`` against ``required`` (at least ``required``, figures as fractions)."""

    name: str
    measured: float
    required: float
    point: tuple[float, float] | None = None  # (radius, required accuracy) to mark on the curve

    @property
    def passed(self) -> bool:
        # both sides are exact fractions of counts or means of radii: no tolerance that could pass a miss
        return self.measured >= self.required

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{verdict}: {self.name}: measured {self.measured:.4f}, required at least {self.required:.4f}"


@dataclass(frozen=True)
class Figures:
    """A job's figures from its rows: certified accuracy at each asked radius, ACR, clean accuracy."""

    count: int
    acr: float
    clean_accuracy: float
    abstain_rate: float
    certified_accuracy: dict[float, float] = field(default_factory=dict)


def figures(rows: Sequence[ResultRowPublic], radii: Sequence[float]) -> Figures:
    """Figures of ``rows`` with the certified accuracy at each of ``radii`` (Cohen et al. 2019, Fig. 2)."""
    r = np.array([row.radius for row in rows], dtype=np.float64)
    correct = np.array([row.correct for row in rows], dtype=bool)
    levels = sorted({float(x) for x in radii} | {0.0})
    accuracy = certified_accuracy_curve(r, correct, levels)
    abstain = float(np.mean([row.prediction == -1 for row in rows])) if rows else 0.0
    return Figures(count=len(rows), acr=average_certified_radius(r, correct), clean_accuracy=float(correct.mean())
                   if rows else 0.0, abstain_rate=abstain,
                   certified_accuracy={lv: float(a) for lv, a in zip(levels, accuracy, strict=True)})


def parse_accuracy_gate(text: str) -> tuple[float, float]:
    """``"0.5:0.6"`` -> (radius 0.5, accuracy 0.6); accuracy may be a percentage (``0.5:60%``)."""
    radius_text, sep, accuracy_text = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r}: write RADIUS:ACCURACY, e.g. 0.5:0.6 (at radius 0.5 at least 60%)")
    percent = accuracy_text.strip().endswith("%")
    try:
        radius = float(radius_text)
        accuracy = float(accuracy_text.strip().rstrip("%")) / (100 if percent else 1)
    except ValueError:
        raise ValueError(f"{text!r}: RADIUS and ACCURACY must be numbers, e.g. 0.5:0.6") from None
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"{text!r}: the radius must be a finite number >= 0")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"{text!r}: the accuracy must lie in [0, 1] (or [0%, 100%])")
    return radius, accuracy


def gates(ours: Figures, *, min_certified_accuracy: Sequence[tuple[float, float]] = (), min_acr: float | None = None,
          baseline: Figures | None = None, baseline_job: int | None = None, max_drop: float | None = None,
          drop_radii: Sequence[float] = ()) -> list[Gate]:
    """The checks asked for, in order: certified accuracy floors, an ACR floor, then no drop against a baseline
    (certified accuracy at each of ``drop_radii`` and the ACR, each at most ``max_drop`` below the baseline's)."""
    out = [Gate(f"certified accuracy at radius {r:g} >= {a:g}", ours.certified_accuracy[r], a, (r, a))
           for r, a in min_certified_accuracy]
    if min_acr is not None:
        out.append(Gate(f"ACR >= {min_acr:g}", ours.acr, min_acr))
    if baseline is not None and max_drop is not None:
        against = f"job {baseline_job}" if baseline_job is not None else "the baseline"
        for r in drop_radii:
            then = baseline.certified_accuracy[r]
            out.append(Gate(f"certified accuracy at radius {r:g} at most {max_drop:g} below {against}'s {then:.4f}",
                            ours.certified_accuracy[r], then - max_drop, (r, then - max_drop)))
        out.append(Gate(f"ACR at most {max_drop:g} below {against}'s {baseline.acr:.4f}", ours.acr,
                        baseline.acr - max_drop))
    return out


@dataclass(frozen=True)
class Report:
    """Everything a report shows: the job, its figures, the gates and (optionally) the baseline's curve."""

    job: JobPublic
    model_name: str
    figures: Figures
    gates: list[Gate]
    radii: np.ndarray
    curve: np.ndarray
    baseline_job: int | None = None
    baseline_curve: np.ndarray | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


def build_report(job: JobPublic, model_name: str, rows: Sequence[ResultRowPublic], gate_list: list[Gate],
                 ours: Figures, baseline_rows: Sequence[ResultRowPublic] | None = None,
                 baseline_job: int | None = None) -> Report:
    """The report of ``job``: its curve on a 0.01 grid up to its largest radius (and the baseline's)."""
    radii_of = [row.radius for row in rows] + [row.radius for row in baseline_rows or ()]
    grid = np.round(radius_grid(max([0.0, *radii_of]), 0.25), 6)
    fine = np.linspace(0.0, float(grid[-1]) or 0.25, 201)

    def curve(of: Sequence[ResultRowPublic]) -> np.ndarray:
        return certified_accuracy_curve([r.radius for r in of], [r.correct for r in of], fine)

    return Report(job=job, model_name=model_name, figures=ours, gates=gate_list, radii=fine, curve=curve(rows),
                  baseline_job=baseline_job, baseline_curve=None if baseline_rows is None else curve(baseline_rows))


def _config_line(job: JobPublic) -> str:
    c = job.config
    noise = "Gaussian" if c.noise.value == "gaussian" else f"generalized Gaussian (k = {c.k})"
    return (f"{c.method.value.upper()}, {noise} noise, sigma = {c.sigma:g}, n = {c.n:,}, n0 = {c.n0:,}, "
            f"alpha = {c.alpha:g}, {job.dataset} ({job.split}), {job.progress.total} inputs")


def to_json(report: Report) -> str:
    """Machine-readable: verdict, gates, figures, the job and its curve."""
    f = report.figures
    body = {
        "passed": report.passed,
        "job": json.loads(report.job.model_dump_json()),
        "model": report.model_name,
        "gates": [{"name": g.name, "measured": g.measured, "required": g.required, "passed": g.passed}
                  for g in report.gates],
        "figures": {"count": f.count, "acr": f.acr, "clean_accuracy": f.clean_accuracy,
                    "abstain_rate": f.abstain_rate,
                    "certified_accuracy": [{"radius": r, "accuracy": a} for r, a in f.certified_accuracy.items()]},
        "curve": [{"radius": float(r), "certified_accuracy": float(a)}
                  for r, a in zip(report.radii, report.curve, strict=True)],
        "baseline_job": report.baseline_job,
    }
    return json.dumps(body, indent=2) + "\n"


def to_junit(report: Report, seconds: float | None = None) -> str:
    """JUnit XML: one test case per gate, a failure element on each that failed (CI systems show them)."""
    suite = ET.Element("testsuite", name=f"kavach job {report.job.id}", tests=str(len(report.gates)),
                       failures=str(len(report.failed)), errors="0", skipped="0")
    if seconds is not None:
        suite.set("time", f"{seconds:.3f}")
    properties = ET.SubElement(suite, "properties")
    for name, value in (("job", report.job.id), ("model", report.model_name), ("config", _config_line(report.job)),
                        ("acr", f"{report.figures.acr:.6f}"), ("clean_accuracy", f"{report.figures.clean_accuracy:.6f}")):
        ET.SubElement(properties, "property", name=name, value=str(value))
    for gate in report.gates:
        case = ET.SubElement(suite, "testcase", classname="kavach.gates", name=gate.name)
        if not gate.passed:
            failure = ET.SubElement(case, "failure", message=gate.message(), type="GateFailed")
            failure.text = gate.message()
    root = ET.Element("testsuites", tests=str(len(report.gates)), failures=str(len(report.failed)))
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def plot_curve(report: Report, path: Path) -> Path:
    """Certified accuracy against L2 radius (and the baseline's), the accuracy gates as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(report.radii, report.curve, label=f"job {report.job.id} ({report.model_name})", color="C0",
            drawstyle="steps-post")
    if report.baseline_curve is not None:
        ax.plot(report.radii, report.baseline_curve, label=f"baseline job {report.baseline_job}", color="C7",
                linestyle="--", drawstyle="steps-post")
    for passed in (True, False):
        points = [g.point for g in report.gates if g.point is not None and g.passed is passed]
        if points:
            ax.plot(*zip(*points, strict=True), marker="v" if passed else "x", markersize=9, linestyle="none",
                    color="C2" if passed else "C3", label="gate passed" if passed else "gate FAILED")
    ax.set(xlabel="L2 radius", ylabel="certified accuracy", ylim=(0, 1.02), xlim=(0, float(report.radii[-1])),
           title=f"{'passed' if report.passed else 'FAILED'}: job {report.job.id}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def to_markdown(report: Report, image: str | None = None) -> str:
    """A pull-request comment: verdict, the gates, the figures, the curve (``image``: the PNG's link)."""
    f = report.figures
    verdict = "✅ passed" if report.passed else f"❌ failed ({len(report.failed)} of {len(report.gates)} gates)"
    lines = [f"### Kavach robustness gate: {verdict}", "",
             f"Job {report.job.id}, model **{report.model_name}**: {_config_line(report.job)}.", ""]
    if report.gates:
        lines += ["| Gate | Measured | Required | Result |", "|---|---:|---:|---|"]
        lines += [f"| {g.name} | {g.measured:.4f} | {g.required:.4f} | {'pass' if g.passed else '**FAIL**'} |"
                  for g in report.gates]
        lines.append("")
    lines += ["| Radius | Certified accuracy |", "|---:|---:|"]
    lines += [f"| {r:g} | {a:.2%} |" for r, a in f.certified_accuracy.items()]
    lines += ["", (f"ACR {f.acr:.4f} · clean accuracy {f.clean_accuracy:.2%} · abstained {f.abstain_rate:.2%} "
                   f"· {f.count} inputs"), ""]
    if image:
        lines += [f"![certified accuracy against radius]({image})", ""]
    lines.append("Certified accuracy at r: inputs predicted correctly with a certified L2 radius of at least r "
                 f"(the bound holds with probability at least {1 - report.job.config.alpha:g} per input).")
    return "\n".join(lines) + "\n"
