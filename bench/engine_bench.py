"""Engine throughput: our certify against a plain loop of Cohen's algorithm, and DSRS radius cost.

Run ``python -m bench.engine_bench`` (``make bench``); ``BENCH=full`` for the literature's n = 100k.
Both certifiers run the same model, device, inputs, n0, n and alpha, and both certified-accuracy
curves are reported side by side so that no speed is bought with a weaker bound.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench import cohen_reference
from bench.reference_radius import cold_dsrs_radius
from bench.sample_oracle import counts_from_lower_bounds, oracle_reduction
from engine.data import load_dataset
from engine.hardware import cpu_model_name, native_bf16
from engine.metrics import average_certified_radius, certified_accuracy_curve, clean_accuracy
from engine.models import create_model
from engine.noise import Gaussian
from engine.radius import dsrs_radius
from engine.radius.dsrs import _dsrs_certificate
from engine.radius.np import _general_gaussian_np_radius, np_curve, radial_setting
from engine.radius.tables import cosine_cdf_table
from engine.sampling import model_dtype
from engine.smooth import SmoothedClassifier

RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"
PRESETS = {
    "quick": {"n": 10_000, "n0": 100, "inputs": 16, "batch_size": 1000, "radius_calls": 40, "repeats": 3,
              "pack_inputs": 200, "pack_n": 1000, "schedule_inputs": 24, "schedule_n": 20_000,
              "published_inputs": 100},
    "full": {"n": 100_000, "n0": 100, "inputs": 100, "batch_size": 10_000, "radius_calls": 100, "repeats": 2,
             "pack_inputs": 1000, "pack_n": 1000, "schedule_inputs": 200, "schedule_n": 100_000,
             "published_inputs": 1000},
}
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
SIGMA, ALPHA, WIDTH = 0.25, 0.001, 16
# our certifier's variants: SmoothedClassifier options, and what each runs, for the report
VARIANT_OPTIONS = {
    "ours": {"channels_last": True},
    "ours_nchw": {},
    "ours_bf16": {"channels_last": True, "dtype": torch.bfloat16},
    "ours_compiled": {"channels_last": True, "compile": True},
    "ours_frozen": {"channels_last": True, "freeze": True},
    # on a GPU: torch.compile's CUDA graphs, replayed on the static noise buffer
    "ours_cudagraphs": {"channels_last": True, "compile": "reduce-overhead"},
}
VARIANT_NAMES = {
    "ours": "eager fp32 (NHWC)", "ours_nchw": "eager fp32 (NCHW)", "ours_bf16": "eager bf16 (NHWC)",
    "ours_compiled": "torch.compile fp32", "ours_frozen": "frozen TorchScript fp32 (--freeze)",
    "ours_cudagraphs": "torch.compile fp32, CUDA graphs",
}
VARIANTS = ("ours", "ours_nchw", "ours_bf16", "ours_compiled", "ours_frozen")
# What the service's worker runs on a CPU for a job from the dashboard's default form (fp32, eager) on a
# model file it converts (not a TorchScript archive): NHWC, as kavach certify by default
# (backend/worker.py's channels_last_for). tests/backend/test_worker_layout.py keeps the two equal.
WORKER_CPU_VARIANT = "ours"
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model_name() or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def precision_choice(device: torch.device) -> dict:
    """Whether bf16 is native on ``device`` and why (``engine.hardware``), and the variant each default path
    runs there: ``kavach certify`` with its defaults (eager fp32, channels_last), a dashboard job from the
    default form (fp32, eager) on a worker of this device, and ``kavach certify --bf16``, which is refused
    (so picks nothing) where bf16 is emulated. Neither the CLI nor the dashboard defaults to bf16."""
    native, why = native_bf16(device)
    picks = {"kavach certify (defaults)": "ours",
             "dashboard job (default form)": WORKER_CPU_VARIANT if device.type == "cpu" else "ours"}
    if native:
        picks["kavach certify --bf16"] = "ours_bf16"
    return {"bf16_native": native, "bf16_reason": why, "picked": picks,
            "bf16_note": ("ours_bf16 is what kavach certify --bf16 runs here" if native else
                          "ours_bf16 is measured for the record only: kavach certify refuses --bf16 here "
                          "(without --force-bf16) and no default picks it")}


def picked_ratios(r: dict, variant: str) -> list[tuple[str, float]]:
    """(model, speed-up over Cohen's fp32 loop) of ``variant`` on each model of result ``r`` that measured it."""
    key = "speedup_vs_cohen" + variant.removeprefix("ours")
    rows = [("digits CNN", r)] + [(m["model"], m) for m in r.get("large_models", []) if key in m]
    return [(model, row[key]) for model, row in rows if key in row]


def picked_below_cohen(r: dict) -> list[str]:
    """Each (default path, model) whose picked variant runs below 1.0x Cohen's fp32 loop in result ``r``:
    issue 15 asks that none does, on any CPU."""
    return [f"{who} -> {variant}: {ratio:.2f}x on {model}" for who, variant in r["precision_choice"]["picked"].items()
            for model, ratio in picked_ratios(r, variant) if ratio < 1.0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_digits_cnn(device: torch.device, epochs: int = 12, seed: int = 0) -> torch.nn.Module:
    """A digits_cnn trained with Gaussian augmentation at SIGMA (Cohen et al.), a few seconds on a CPU."""
    torch.manual_seed(seed)
    data = load_dataset("digits", split="train")
    x, y = data.x.to(device), data.y.to(device)
    model = create_model("digits_cnn", width=WIDTH).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), device=device).split(64):
            batch = x[idx] + SIGMA * torch.randn_like(x[idx])
            loss = torch.nn.functional.cross_entropy(model(batch), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def summarise(radii: list[float], correct: list[bool]) -> dict:
    return {
        "acr": average_certified_radius(radii, correct),
        "clean_accuracy": clean_accuracy(correct),
        "certified_accuracy": dict(zip(map(str, GRID), certified_accuracy_curve(radii, correct, GRID).tolist())),
    }


def run_both(model, xs, ys, cfg, device, *, num_classes: int = 10, sigma: float = SIGMA,
             variants: tuple[str, ...] = VARIANTS) -> dict[str, tuple[float, int, dict]]:
    """Certify every input with each of our ``variants`` and with Cohen's loop, interleaved (alternating
    which goes first) so that drift in machine load hits every timing alike; and time the bare forward
    pass of each variant's model on a pre-drawn noisy batch (the ceiling of its sampling). Each variant's
    summary also holds ``setup_s``, the seconds its SmoothedClassifier took to build (freezing's cost)."""
    engines, setup = {}, {}
    for name in variants:
        start = time.perf_counter()
        engines[name] = SmoothedClassifier(model if name == "ours_nchw" else copy.deepcopy(model), num_classes,
                                           Gaussian(sigma), **VARIANT_OPTIONS[name])
        setup[name] = time.perf_counter() - start

    def engine(name: str) -> Callable[[int, torch.Tensor], tuple[int, float, int]]:
        def run(i: int, x: torch.Tensor) -> tuple[int, float, int]:
            r = engines[name].certify(x, cfg["n0"], cfg["n"], ALPHA, cfg["batch_size"], seed=i)
            return r.prediction, r.radius, r.samples

        return run

    def cohen(i: int, x: torch.Tensor) -> tuple[int, float, int]:
        torch.manual_seed(i)
        c, radius = cohen_reference.certify(model, x, cfg["n0"], cfg["n"], ALPHA, cfg["batch_size"], sigma,
                                            num_classes)
        return c, radius, cfg["n0"] + cfg["n"]

    noisy = {}  # one pre-drawn noisy batch per input: the forward pass alone, in each layout

    def forward_only(net: torch.nn.Module, layout: torch.memory_format) -> Callable[[int, torch.Tensor], tuple]:
        def run(i: int, x: torch.Tensor) -> tuple[int, float, int]:
            if (i, layout, id(net)) not in noisy:
                gen = torch.Generator(device=x.device).manual_seed(i)
                batch = x + sigma * torch.randn((cfg["batch_size"], *x.shape), device=x.device, generator=gen)
                noisy[i, layout, id(net)] = batch.contiguous(memory_format=layout).to(model_dtype(net))
            steps = -(-(cfg["n0"] + cfg["n"]) // cfg["batch_size"])
            with torch.inference_mode():
                for _ in range(steps):
                    net(noisy[i, layout, id(net)]).argmax(1)
            return -1, 0.0, steps * cfg["batch_size"]

        return run

    runners: dict[str, Callable] = {name: engine(name) for name in variants}
    runners["cohen"] = cohen
    runners["forward_only"] = forward_only(model, torch.contiguous_format)
    for name in variants:
        if (ceiling := forward_only_name(name)) is not None:
            runners[ceiling] = forward_only(engines[name].model, torch.channels_last)
    seconds = dict.fromkeys(runners, 0.0)
    samples = dict.fromkeys(runners, 0)
    radii: dict[str, list[float]] = {name: [] for name in runners}
    correct: dict[str, list[bool]] = {name: [] for name in runners}
    for i, (x, y) in enumerate(zip(xs, ys)):
        names = list(runners)
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first
            synchronize(device)
            start = time.perf_counter()
            prediction, radius, used = runners[name](i, x)
            synchronize(device)
            seconds[name] += time.perf_counter() - start
            samples[name] += used
            radii[name].append(radius)
            correct[name].append(prediction == int(y))
    return {name: (seconds[name], samples[name],
                   {**summarise(radii[name], correct[name]), **({"setup_s": setup[name]} if name in setup else {})})
            for name in runners}


# Issue 6, target 2 on CIFAR and ImageNet-size models (random weights: throughput only). On a GPU at
# BENCH=full; on a CPU a few hundred samples show the ratio at a scale the CPU can run.
LARGE_MODELS = {
    "cifar_resnet110": {"shape": (3, 32, 32), "classes": 10},
    "resnet50": {"shape": (3, 224, 224), "classes": 1000},
}
LARGE_PRESETS = {
    "cpu": {"n": 200, "n0": 20, "batch_size": 100, "inputs": 1, "repeats": 3, "models": ("cifar_resnet110",),
            "variants": ("ours", "ours_nchw", "ours_bf16", "ours_frozen")},
    "cuda": {"n": 10_000, "n0": 100, "batch_size": 1000, "inputs": 2, "repeats": 1, "models": tuple(LARGE_MODELS),
             "variants": ("ours", "ours_nchw", "ours_bf16", "ours_compiled", "ours_cudagraphs")},
}


def compare_large_models(device: torch.device) -> list[dict]:
    """Ours (each variant) against Cohen's fp32 loop on a CIFAR ResNet-110 and a torchvision ResNet-50 at
    224 px, same n, device and inputs; the fastest of ``repeats`` interleaved runs per certifier, as for the
    digits CNN (one input at n = 200 on a CPU: a single run's ratio swings with the machine's load). One failing
    model or variant is recorded, not fatal: a device run is scarce and the other figures still count."""
    preset = LARGE_PRESETS["cuda" if device.type == "cuda" else "cpu"]
    cfg = {k: preset[k] for k in ("n", "n0", "batch_size")}
    out = []
    for name in preset["models"]:
        spec = LARGE_MODELS[name]
        row: dict = {"model": f"{name} (random weights), {'x'.join(map(str, spec['shape']))}", "n": cfg["n"],
                     "n0": cfg["n0"], "batch_size": cfg["batch_size"], "inputs": preset["inputs"],
                     "repeats": preset["repeats"], "device": device_name(device)}
        try:
            torch.manual_seed(0)
            model = create_model(name, num_classes=spec["classes"]).to(device)
            xs = torch.rand((preset["inputs"], *spec["shape"]), generator=torch.Generator().manual_seed(0)).to(device)
            ys = torch.zeros(preset["inputs"], dtype=torch.long)
            warm = {**cfg, "n": cfg["batch_size"], "n0": cfg["batch_size"]}
            run_both(model, xs[:1], ys[:1], warm, device, num_classes=spec["classes"], variants=preset["variants"])
            runs = [run_both(model, xs, ys, cfg, device, num_classes=spec["classes"], variants=preset["variants"])
                    for _ in range(preset["repeats"])]
            timings = {name: min((run[name] for run in runs), key=lambda t: t[0]) for name in runs[0]}
        except Exception as error:  # noqa: BLE001 - recorded in the results, the run goes on
            row["error"] = repr(error)
            out.append(row)
            continue
        cohen_s, cohen_samples, _ = timings["cohen"]
        row.update({"cohen_s": cohen_s, "cohen_samples_per_s": cohen_samples / cohen_s})
        for variant in preset["variants"]:
            ours_s, ours_samples, stats = timings[variant]
            row[f"{variant}_s"] = ours_s
            row[f"speedup_vs_cohen{variant.removeprefix('ours')}"] = (ours_samples / ours_s) / (cohen_samples / cohen_s)
            row[f"{variant}_acr"] = stats["acr"]
        row["cohen_acr"] = timings["cohen"][2]["acr"]
        row["forward_only_samples_per_s"] = {name: s / t for name, (t, s, _) in timings.items()
                                             if name.startswith("forward_only")}
        row["precision"] = "fp32 (cohen and every variant but ours_bf16); bf16 (ours_bf16)"
        out.append(row)
    return out


def time_dsrs_radius(calls: int) -> dict:
    """Issue 6, target 5: ms per dsrs_radius call for CIFAR-10's GG(3072, 1530, 0.5), against the reference
    (``bench.reference_radius``: exact rule, cold Newton) on the same bounds. Bounds vary per call, as per
    input, so no per-result cache answers; the first call starts from empty caches and so includes
    building the tables for (d, k, sigma). The compiled kernels load from numba's cache on disk; a first
    call that also compiles them (once per machine and source) is timed apart, in a fresh interpreter."""
    uncached_s = first_call_without_kernel_cache()
    for cached in (radial_setting, np_curve, cosine_cdf_table, _dsrs_certificate, _general_gaussian_np_radius):
        cached.cache_clear()
    out = {}
    for name, q in {"q_sigma_0.45": {"q_sigma": 0.45}, "q_threshold_0.7": {"q_threshold": 0.7}}.items():
        ours, reference, diffs = [], [], []
        for i in range(calls + 1):
            shift = 2e-5 * i
            bounds = (0.8 + shift, 0.81 + shift), (0.85 + shift, 0.86 + shift)
            start = time.perf_counter()
            r = dsrs_radius(*bounds, d=3072, k=1530, sigma=0.5, **q)
            ours.append(1e3 * (time.perf_counter() - start))
            if i:
                start = time.perf_counter()
                r_ref = cold_dsrs_radius(*bounds, d=3072, k=1530, sigma=0.5, **q)
                reference.append(1e3 * (time.perf_counter() - start))
                diffs.append(r - r_ref)
        out[name] = {"cold_ms": ours[0], "median_ms": statistics.median(ours[1:]),
                     "p10_ms": float(np.percentile(ours[1:], 10)), "p90_ms": float(np.percentile(ours[1:], 90)),
                     "calls": calls, "first_call_without_kernel_cache_s": uncached_s,
                     "reference_median_ms": statistics.median(reference),
                     "speedup_vs_reference": statistics.median(reference) / statistics.median(ours[1:]),
                     "max_abs_diff_vs_reference": max(abs(v) for v in diffs),
                     "min_diff_vs_reference": min(diffs)}
    return out


def first_call_without_kernel_cache() -> float:
    """Seconds of a first dsrs_radius call in a fresh interpreter with an empty numba cache: the tables for
    (d, k, sigma) and the compile of the radius kernels, which a machine pays once per source version."""
    import subprocess
    import sys
    import tempfile

    code = ("import time; from engine.radius import dsrs_radius; t = time.perf_counter(); "
            "dsrs_radius((0.8, 0.81), (0.85, 0.86), d=3072, k=1530, sigma=0.5, q_sigma=0.45); "
            "print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "NUMBA_CACHE_DIR": cache})
    return float(done.stdout.strip().splitlines()[-1])


def time_packing(model: torch.nn.Module, xs: torch.Tensor, cfg: dict, device: torch.device) -> dict:
    """Issue 6, target 3: certify many small inputs one at a time, then packed into shared batches
    (``certify_many``), same n0, n and alpha; both certified-accuracy summaries are reported."""
    smoothed = SmoothedClassifier(copy.deepcopy(model), 10, Gaussian(SIGMA), channels_last=True)
    n0, n, batch = cfg["n0"], cfg["pack_n"], cfg["batch_size"]
    smoothed.certify_many(xs[:4], n0, n, ALPHA, batch, seed=0)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    single = [smoothed.certify(x, n0, n, ALPHA, batch, seed=i) for i, x in enumerate(xs)]
    synchronize(device)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    packed = smoothed.certify_many(xs, n0, n, ALPHA, batch, seed=0)
    synchronize(device)
    packed_s = time.perf_counter() - start
    return {"inputs": len(xs), "n0": n0, "n": n, "batch_size": batch, "one_at_a_time_s": single_s, "packed_s": packed_s,
            "speedup": single_s / packed_s,
            "one_at_a_time_certified": sum(r.radius > 0 for r in single),
            "packed_certified": sum(r.radius > 0 for r in packed)}


def compare_schedules(cfg: dict, device: torch.device) -> dict | None:
    """Issue 6, target 4: mean samples per input and ACR for fixed n, ISS and the sequential schedule on the
    Fashion-MNIST demo model trained at sigma 0.5 (skipped when Fashion-MNIST is not installed), and the
    oracle's reduction on the same inputs (``bench.sample_oracle``): what no schedule can beat."""
    from engine.models import load_model

    try:
        data = load_dataset("fashion_mnist", split="test")
    except FileNotFoundError:
        return None
    stride = len(data.x) // cfg["schedule_inputs"]
    xs, ys = data.x[::stride][: cfg["schedule_inputs"]].to(device), data.y[::stride][: cfg["schedule_inputs"]]
    net = load_model(DEMO / "fashion_cnn_gaussian_0.5.pt", map_location=device)
    return {"model": "models/demo/fashion_cnn_gaussian_0.5.pt",
            **run_schedules(SmoothedClassifier(net, 10, Gaussian(0.5), channels_last=True), xs, ys, 0.5, cfg,
                            delta=0.05)}


class HalfSpace(torch.nn.Module):
    """Class 0 where the first coordinate is negative, else class 1: under N(0, sigma^2), the input
    x = -sigma Phi^-1(p) has pA = p exactly (and its true robust radius is |x|)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = z.flatten(1)[:, :1]
        return torch.cat([-s, s], dim=1)


def compare_schedules_on_published_pa(cfg: dict, device: torch.device) -> dict | None:
    """Target 4 on a CIFAR-size model's inputs: the per-input pA of Cohen et al.'s sigma = 0.5 CIFAR-10
    ResNet-110 (the DSRS authors' sampling data, 1,000 test images, interval midpoints), each reproduced
    exactly by a half-space base classifier. The sample counts of every schedule depend on pA alone, so
    this measures them on that model's pA distribution without its weights (no CIFAR data or weights
    can be fetched here). Skipped when the reference data is absent."""
    from scipy.special import ndtri

    path = (Path(__file__).resolve().parents[1] / "tests" / "data" / "dsrs_data" / "sampling" /
            "cohen-cifar-0.50.pth" / "gaussian-None-0.5-50000-0.0005.txt")
    if not path.exists():
        return None
    rows = [line.split() for line in path.read_text().splitlines() if line.startswith("o ")]
    p_a = np.array([0.5 * (float(r[2]) + float(r[3])) for r in rows])[:: max(1, 1000 // cfg["published_inputs"])]
    sigma = 0.5
    xs = torch.tensor(-sigma * ndtri(np.clip(p_a, 1e-12, 1 - 1e-12)), dtype=torch.float32).view(-1, 1, 1, 1)
    ys = torch.zeros(len(xs), dtype=torch.long)
    smoothed = SmoothedClassifier(HalfSpace().to(device), 2, Gaussian(sigma))
    one_dim = {"schedule_n": 100_000, "batch_size": 10_000}  # the n_max: cheap on 1-pixel inputs
    return {"model": "half-space base classifiers at the published per-input pA of Cohen's CIFAR-10 ResNet-110, "
                     "sigma 0.5", **run_schedules(smoothed, xs.to(device), ys, sigma, {**cfg, **one_dim},
                                         delta=0.15)}


def run_schedules(smoothed: SmoothedClassifier, xs: torch.Tensor, ys: torch.Tensor, sigma: float, cfg: dict,
                  delta: float) -> dict:
    """Fixed n, ISS and the sequential schedule (each input's radius allowed to fall by ``delta``) on the
    same inputs and seeds, and the oracle bound."""
    from engine.schedule import ISSSchedule, SequentialSchedule

    n, batch = cfg["schedule_n"], cfg["batch_size"]
    schedules = {"fixed": None,
                 "iss": ISSSchedule(sigma, n, ALPHA, delta=delta, batch_size=batch),
                 "sequential": SequentialSchedule(sigma, n, ALPHA, delta=delta, first=batch, batch_size=batch)}
    out: dict = {"sigma": sigma, "n_max": n, "delta": delta, "inputs": len(xs)}
    for name, schedule in schedules.items():
        start = time.perf_counter()
        results = [smoothed.certify(x, cfg["n0"], n, ALPHA, batch, schedule=schedule, seed=i) for i, x in enumerate(xs)]
        seconds = time.perf_counter() - start
        radii = [r.radius for r in results]
        correct = [r.prediction == int(y) for r, y in zip(results, ys, strict=True)]
        out[name] = {"mean_samples": float(np.mean([r.samples for r in results])), "seconds": seconds,
                     **summarise(radii, correct)}
        if name == "fixed":  # pA estimates for the oracle: the counts behind the fixed run's bounds
            counts = counts_from_lower_bounds(np.array([r.p_lower for r in results]), n, ALPHA)
            p_hat = np.where([r.abstained for r in results], 0.0, counts / n)
            out["oracle"] = oracle_reduction(p_hat, np.array(correct), sigma, n, ALPHA, cfg["n0"])
    for name in ("iss", "sequential"):
        out[name]["sample_reduction"] = out["fixed"]["mean_samples"] / out[name]["mean_samples"]
        out[name]["acr_drop"] = out["fixed"]["acr"] - out[name]["acr"]
    return out


def main() -> dict:
    preset = os.environ.get("BENCH", "quick")
    cfg = PRESETS[preset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # first, on an idle process: torch's OpenMP threads keep spinning after its parallel regions and
    # would slow the (numpy) radius code that runs after them
    radius_times = time_dsrs_radius(cfg["radius_calls"])
    t0 = time.perf_counter()
    model = train_digits_cnn(device)
    train_s = time.perf_counter() - t0
    data = load_dataset("digits", split="test")
    xs, ys = data.x[: cfg["inputs"]].to(device), data.y[: cfg["inputs"]]

    # first-call costs (allocator, kernels, torch.compile for both batch shapes) out of the timing
    warm = {**cfg, "n": cfg["batch_size"]}
    warm_run = run_both(model, xs[:2], ys[:2], warm, device)
    # repeats of the whole interleaved run; the fastest total per implementation damps machine noise
    # (certificates are identical across repeats: every input has its own seed)
    runs = [run_both(model, xs, ys, cfg, device) for _ in range(cfg["repeats"])]
    timings = {name: min((run[name] for run in runs), key=lambda t: t[0]) for name in runs[0]}
    cohen_s, _, cohen_stats = timings["cohen"]
    rate = {name: samples / seconds for name, (seconds, samples, _) in timings.items()}
    packing = time_packing(model, data.x[: cfg["pack_inputs"]].to(device), cfg, device)
    schedules = compare_schedules(cfg, device)
    published = compare_schedules_on_published_pa(cfg, device)
    large = compare_large_models(device)
    result = {
        "preset": preset,
        "device": device_name(device),
        "precision_choice": precision_choice(device),
        "model": f"digits_cnn(width={WIDTH}), 1x8x8, trained {train_s:.1f} s with noise sigma={SIGMA}",
        "n": cfg["n"], "n0": cfg["n0"], "inputs": len(xs), "batch_size": cfg["batch_size"], "alpha": ALPHA,
        "repeats": cfg["repeats"],
        "sigma": SIGMA,
        "cohen_s": cohen_s, "cohen_samples_per_s": rate["cohen"], "cohen": cohen_stats,
        "forward_only_samples_per_s": rate["forward_only"],
        **{key: value for name in VARIANTS for key, value in variant_figures(name, timings, rate).items()},
        "compile_s": warm_run["ours_compiled"][0] + warm_run["forward_only_compiled"][0],
        "precision": "float32 (Cohen's loop and every variant but ours_bf16); bfloat16 (ours_bf16)",
        "ours_layout": "channels_last (NHWC); Cohen's loop and ours_nchw run the NCHW model",
        "dsrs_radius_ms": radius_times,
        "packing": packing,
        "schedules": schedules,
        "schedules_published_pa": published,
        "large_models": large,
        "torch": torch.__version__,
    }
    result["picked_below_cohen"] = picked_below_cohen(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    PERFORMANCE_DOC.parent.mkdir(parents=True, exist_ok=True)
    PERFORMANCE_DOC.write_text(performance_markdown(result))
    print_report(result)
    return result


def variant_figures(name: str, timings: dict, rate: dict) -> dict:
    """One variant's keys in engine.json: ``{name}_s``, ``{name}_samples_per_s``, ``speedup_vs_cohen{suffix}`` and,
    against the bare forward pass of its own model (same precision, layout and compilation),
    ``forward_only{suffix}_samples_per_s`` and ``sampling_efficiency{suffix}``; suffix "" for "ours"."""
    seconds, _, stats = timings[name]
    suffix = name.removeprefix("ours")
    out = {f"{name}_s": seconds, f"{name}_samples_per_s": rate[name], name: stats,
           f"speedup_vs_cohen{suffix}": rate[name] / rate["cohen"]}
    ceiling = forward_only_name(name)
    if ceiling is not None:
        out[f"{ceiling}_samples_per_s"] = rate[ceiling]
        out[f"sampling_efficiency{suffix}"] = rate[name] / rate[ceiling]
    return out


def forward_only_name(variant: str) -> str | None:
    """The runner timing the bare forward pass of ``variant``'s model (None for ours_nchw: that is Cohen's model,
    timed as "forward_only")."""
    if variant == "ours_nchw":
        return None
    return "forward_only_" + (variant.removeprefix("ours").removeprefix("_") or "channels_last")


PERFORMANCE_DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def performance_markdown(r: dict) -> str:
    """docs/performance.md: each issue-6 figure of this run, ours beside the baseline, with the device."""
    command = "make bench" if r["preset"] == "quick" else "BENCH=full make bench"
    lines = [
        "# Performance", "",
        (f"Latest run: `{command}` on **{r['device']}**, torch {r['torch']}. Every figure is a ratio of two runs in the "
        "same process on the same device (`bench/results/engine.json` holds the raw numbers)."),
    ]
    if "cpu" in r["device"].lower():
        lines.append("No GPU run is recorded yet: the GPU rows (ResNet-110 and ResNet-50 at 224 px at n = 10,000, bf16, "
                     "compile, CUDA graphs) need `scripts/device_bench.sh` (`BENCH=full`) on a GPU machine; on this CPU "
                     f"ResNet-110 runs at n = {LARGE_PRESETS['cpu']['n']}, one input, the fastest of "
                     f"{LARGE_PRESETS['cpu']['repeats']} interleaved runs.")
    p = r["packing"]
    lines += ["", f"Model: {r['model']}, {r['inputs']} inputs, n0 = {r['n0']}, batch {r['batch_size']}, alpha {r['alpha']}.",
              "", "| target | model | n | ours | baseline | ratio |", "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        suffix = name.removeprefix("ours")
        setup = r[name].get("setup_s", 0.0)
        built = (f"; compiling took {r['compile_s']:.0f} s before the timing" if name == "ours_compiled" else
                 f"; freezing took {setup:.2f} s" if name == "ours_frozen" else "")
        lines.append(f"| against Cohen's fp32 loop (>= 2x on CPU), ours {VARIANT_NAMES[name]}{unpicked(r, name)} | "
                     f"digits CNN | {r['n']:,} | "
                     f"{r[name + '_s']:.2f} s (ACR {r[name]['acr']:.4f} vs {r['cohen']['acr']:.4f}{built}) | "
                     f"{r['cohen_s']:.2f} s | {r['speedup_vs_cohen' + suffix]:.2f}x |")
    for name in VARIANTS:
        if (ceiling := forward_only_name(name)) is not None:
            lines.append(f"| certify vs its own forward pass alone (>= 0.90), {VARIANT_NAMES[name]} | digits CNN | "
                         f"{r['n']:,} | {r[name + '_samples_per_s']:,.0f} samples/s | "
                         f"{r[ceiling + '_samples_per_s']:,.0f} samples/s | "
                         f"{r['sampling_efficiency' + name.removeprefix('ours')]:.2f} |")
    lines.append(f"| packing {p['inputs']} small inputs (>= 5x) | digits CNN, eager fp32 | {p['n']:,} | "
                 f"{p['packed_s']:.2f} s | {p['one_at_a_time_s']:.2f} s one at a time | {p['speedup']:.2f}x |")
    for m in r.get("large_models", []):
        if "error" in m:
            lines.append(f"| against Cohen's loop | {m['model']} | {m['n']:,} | failed: {m['error']} | - | - |")
            continue
        for key in sorted(k for k in m if k.startswith("speedup_vs_cohen")):
            variant = "ours" + key.removeprefix("speedup_vs_cohen")
            lines.append(f"| against Cohen's fp32 loop (>= 3x on an H100), {variant}{unpicked(r, variant)} | "
                         f"{m['model']} | {m['n']:,} | "
                         f"{m[variant + '_s']:.2f} s | {m['cohen_s']:.2f} s | {m[key]:.2f}x |")
    for s in (r.get("schedules"), r.get("schedules_published_pa")):
        if not s:
            continue
        for name in ("iss", "sequential"):
            lines.append(f"| {name} samples per input (>= 5x fewer, ACR drop <= 0.02) | {s['model']}, {s['inputs']} inputs | "
                         f"max {s['n_max']:,} | {s[name]['mean_samples']:,.0f} (ACR {s[name]['acr']:.3f}) | "
                         f"{s['fixed']['mean_samples']:,.0f} (ACR {s['fixed']['acr']:.3f}) | "
                         f"{s[name]['sample_reduction']:.2f}x, ACR {-s[name]['acr_drop']:+.3f} |")
        o = s["oracle"]
        lines.append(f"| oracle bound: fewest samples any schedule could spend at ACR drop <= {o['budget']} | same | "
                     f"max {s['n_max']:,} | {o['mean_samples']:,.0f} | {s['fixed']['mean_samples']:,.0f} | "
                     f"{o['reduction']:.2f}x ({100 * o['share_pa_one']:.0f}% of inputs at pA = 1) |")
    for name, t in r["dsrs_radius_ms"].items():
        lines.append(f"| dsrs_radius, CIFAR GG(3072, 1530, 0.5), {name} (<= 5 ms; tables < 10 s) | - | {t['calls']} calls | "
                     f"{t['median_ms']:.1f} ms median (p10 {t['p10_ms']:.1f}, p90 {t['p90_ms']:.1f}); first call with "
                     f"tables {t['cold_ms']:.0f} ms, {t['first_call_without_kernel_cache_s']:.1f} s when it also "
                     f"compiles the kernels | {t['reference_median_ms']:.0f} ms (exact rule, cold Newton) | "
                     f"{t['speedup_vs_reference']:.1f}x, radii within {t['max_abs_diff_vs_reference']:.1e} |")
    lines += ["", f"Precision: {r['precision']}. Layout: {r['ours_layout']}.", "", *choice_lines(r),
              ("Certified accuracy and ACR of each certifier are in the JSON next to its time: no figure is bought "
              "with a weaker bound."), ""]
    return "\n".join(lines)


def unpicked(r: dict, variant: str) -> str:
    """A note on the ours_bf16 rows where bf16 is emulated: no default runs it (issue 15)."""
    emulated = variant == "ours_bf16" and not r["precision_choice"]["bf16_native"]
    return " (bf16 emulated here: refused by kavach certify, picked by no default)" if emulated else ""


def choice_lines(r: dict) -> list[str]:
    """What the defaults pick on this device and why, and whether any of them runs below Cohen's loop."""
    c = r["precision_choice"]
    picks = "; ".join(f"{who} runs {variant} (" + ", ".join(f"{ratio:.2f}x on {model.split(' (')[0]}"
                                                      for model, ratio in picked_ratios(r, variant)) + ")"
                      for who, variant in c["picked"].items())
    slow = r["picked_below_cohen"]
    bf16 = f"bf16 on this device: {'native' if c['bf16_native'] else 'emulated'} ({c['bf16_reason']}); {c['bf16_note']}."
    verdict = ("None of them runs below 1.0x Cohen's fp32 loop." if not slow else
               "Below 1.0x Cohen's fp32 loop: " + "; ".join(slow) + ".")
    return [bf16, f"Defaults here: {picks}. {verdict}"]


def print_report(r: dict) -> None:
    print(f"device {r['device']}; model {r['model']}")
    print(f"{r['inputs']} inputs, n0={r['n0']}, n={r['n']:,}, batch {r['batch_size']}, alpha {r['alpha']}, "
          f"best of {r['repeats']} interleaved runs")
    for name in VARIANTS:
        suffix = name.removeprefix("ours")
        efficiency = r.get(f"sampling_efficiency{suffix}")
        print(f"{name:<14} {r[name + '_samples_per_s']:>9,.0f} samples/s ({r[name + '_s']:.2f} s), "
              f"{r['speedup_vs_cohen' + suffix]:.2f}x Cohen's fp32 loop{unpicked(r, name)}"
              + ("" if efficiency is None else f", {100 * efficiency:.0f}% of its own forward pass alone"))
    print(f"{'cohen':<14} {r['cohen_samples_per_s']:>9,.0f} samples/s ({r['cohen_s']:.2f} s); its NCHW forward pass "
          f"alone {r['forward_only_samples_per_s']:,.0f} samples/s; compiling took {r['compile_s']:.0f} s")
    p = r["packing"]
    print(f"{p['inputs']} inputs at n={p['n']}: one at a time {p['one_at_a_time_s']:.2f} s, packed {p['packed_s']:.2f} s "
          f"({p['speedup']:.1f}x)")
    for s in (r.get("schedules"), r.get("schedules_published_pa")):
        if not s:
            continue
        print(s["model"])
        for name in ("fixed", "iss", "sequential"):
            extra = "" if name == "fixed" else \
                f"  ({s[name]['sample_reduction']:.1f}x fewer, ACR drop {s[name]['acr_drop']:+.4f})"
            print(f"{name:<10} mean samples {s[name]['mean_samples']:>9,.0f}  ACR {s[name]['acr']:.4f}{extra}")
        o = s["oracle"]
        print(f"oracle     mean samples {o['mean_samples']:>9,.0f}  ({o['reduction']:.1f}x fewer at ACR drop "
              f"{o['acr_drop']:.4f} <= {o['budget']})")
    header = "radius        " + " ".join(f"{g:>6}" for g in GRID) + "     ACR"
    print(header)
    for name in (*VARIANTS, "cohen"):
        curve = r[name]["certified_accuracy"]
        print(f"{name:<13} " + " ".join(f"{curve[str(g)]:>6.3f}" for g in GRID) + f"  {r[name]['acr']:.4f}")
    for m in r.get("large_models", []):
        ratios = ", ".join(f"{'ours' + k.removeprefix('speedup_vs_cohen')} {m[k]:.2f}x" for k in sorted(m)
                           if k.startswith("speedup_vs_cohen"))
        print(f"{m['model']}, n={m['n']:,}: " + m.get("error", f"against Cohen's loop {ratios}"))
    for name, t in r["dsrs_radius_ms"].items():
        print(f"dsrs_radius CIFAR GG(3072,1530,0.5) {name}: {t['median_ms']:.1f} ms median, p90 {t['p90_ms']:.1f} "
              f"(cold {t['cold_ms']:.0f} ms, {t['first_call_without_kernel_cache_s']:.1f} s compiling the kernels); "
              f"reference {t['reference_median_ms']:.0f} ms ({t['speedup_vs_reference']:.1f}x), "
              f"radii differ by at most {t['max_abs_diff_vs_reference']:.1e}")
    for line in choice_lines(r):
        print(line)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
