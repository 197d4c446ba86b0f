"""Whether a device runs bfloat16 natively, and why we think so.

bf16 pays only where the hardware computes in it: CUDA GPUs from Ampere (compute capability 8.0) on,
and CPUs whose oneDNN kernels have bf16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm's BF16
extension). Elsewhere PyTorch emulates it by converting to fp32 around every operation, which made
certifying 5-10x slower than Cohen's fp32 loop on an AVX2-only AMD EPYC (issue 15). The answer is
read once per process: the CLI, the worker and the bench ask it often and the demo must stay quick.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

# Set to 1 or 0 to override the detection (tests exercise both answers on one machine; an operator may
# know better than the flags, e.g. in a VM that hides them).
OVERRIDE_ENV = "KAVACH_ASSUME_NATIVE_BF16"
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the instructions oneDNN's bf16 kernels need on x86
CPUINFO = Path("/proc/cpuinfo")


def bf16_from_cpuinfo(text: str) -> tuple[bool, str]:
    """Native bf16 from the text of /proc/cpuinfo (x86 ``flags`` or aarch64 ``Features``), with the reason.

    Only the first processor's line is read: every core of one machine reports the same features.
    """
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in ("flags", "features"):
            continue
        flags = set(value.split())
        if key == "flags":  # x86
            found = [f for f in X86_BF16_FLAGS if f in flags]
            if found:
                return True, f"CPU flags include {' and '.join(found)}"
            widest = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "below avx2"
            return False, f"CPU flags lack avx512_bf16 and amx_bf16 (widest: {widest}): bf16 is emulated in fp32"
        if "bf16" in flags:  # aarch64: the Armv8.6 BF16 extension (Graviton3, Neoverse V1/V2)
            return True, "CPU features include bf16 (Arm BF16 extension)"
        return False, "CPU features lack bf16 (Arm BF16 extension): bf16 is emulated in fp32"
    return False, "no CPU flags found in /proc/cpuinfo"


@functools.cache
def _cpu_bf16() -> tuple[bool, str]:
    if not torch.backends.mkldnn.is_available():
        return False, "this torch is built without oneDNN, whose kernels run bf16 on CPUs"
    try:
        return bf16_from_cpuinfo(CPUINFO.read_text())
    except OSError:
        pass
    # no /proc (macOS, Windows): torch's own cpuinfo, x86 only (private helpers, hence getattr)
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = [flag for flag, name in checks.items() if getattr(torch.cpu, name, lambda: False)()]
    if found:
        return True, f"torch reports {' and '.join(found)}"
    return False, f"cannot read CPU flags here ({platform.system()} {platform.machine()}); assuming bf16 is emulated"


@functools.cache
def _cuda_bf16(index: int) -> tuple[bool, str]:
    props = torch.cuda.get_device_properties(index)
    capability = f"{props.name}, compute capability {props.major}.{props.minor}"
    if torch.version.hip or props.major >= 8:
        return True, f"{capability}: bf16 tensor cores"
    return False, f"{capability}: bf16 is emulated before compute capability 8.0 (Ampere)"


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(True, why) where ``device`` computes in bfloat16 natively, (False, why) where bf16 is emulated and
    so slower than fp32. ``KAVACH_ASSUME_NATIVE_BF16`` = 1 or 0 overrides the detection."""
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override:
        if override not in ("0", "1"):
            raise ValueError(f"{OVERRIDE_ENV} must be 1 or 0, got {override!r}")
        return override == "1", f"{OVERRIDE_ENV}={override}"
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_bf16(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu":
        return _cpu_bf16()
    return False, f"no bf16 detection for {device.type} devices"


@functools.cache
def cpu_model_name() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo ("model name"), for reports; None where it is not there."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return None
