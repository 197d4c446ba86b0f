"""Native bf16 detection (issue 15, item 4), and the CLI refusing --bf16 where bf16 is emulated."""

from __future__ import annotations

import platform

import pytest
import torch
from typer.testing import CliRunner

from engine.cli import app
from engine.hardware import CPUINFO, OVERRIDE_ENV, _cpu_bf16, bf16_from_cpuinfo, native_bf16
from engine.models import create_model

# /proc/cpuinfo excerpts: the lines the parser reads, with each CPU's real feature names (lists shortened)
X86_COMMON = "fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ht syscall nx lm pni ssse3 fma cx16 sse4_1 sse4_2"


def x86(model: str, flags: str) -> str:
    return f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {X86_COMMON} {flags}\n"


def arm(features: str) -> str:
    return f"processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull {features}\nCPU implementer\t: 0x41\n"


CPUINFO_SAMPLES = {  # name: (text, native)
    "intel_skylake_client": (x86("Intel(R) Core(TM) i7-6700", "avx f16c avx2 bmi1 bmi2"), False),
    "intel_cascade_lake": (x86("Intel(R) Xeon(R) Platinum 8280", "avx avx2 avx512f avx512bw avx512_vnni"), False),
    "amd_zen3": (x86("AMD EPYC 7763 64-Core Processor", "avx f16c avx2 sha_ni vaes vpclmulqdq"), False),
    "amd_zen4": (x86("AMD EPYC 9654 96-Core Processor", "avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni"), True),
    "intel_sapphire_rapids": (x86("Intel(R) Xeon(R) Platinum 8480+", "avx2 avx512f avx512_bf16 avx512_fp16 "
                                  "amx_bf16 amx_tile amx_int8"), True),
    # a hypervisor may pass AMX through but mask AVX512-BF16: oneDNN still has bf16 kernels
    "amx_only": (x86("Intel(R) Xeon(R)", "avx2 avx512f amx_bf16 amx_tile"), True),
    "aarch64_graviton3": (arm("sha1 sha2 crc32 atomics asimddp sha512 sve svei8mm svebf16 i8mm bf16 dgh rng"), True),
    "aarch64_graviton2": (arm("sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"), False),
}


@pytest.mark.parametrize("name", CPUINFO_SAMPLES)
def test_cpuinfo_samples_say_native_exactly_with_bf16_instructions(name: str) -> None:
    text, expected = CPUINFO_SAMPLES[name]
    native, why = bf16_from_cpuinfo(text)
    assert native is expected, why
    assert ("include" if expected else "lack") in why


def test_the_reason_names_what_an_x86_cpu_lacks() -> None:
    assert bf16_from_cpuinfo(CPUINFO_SAMPLES["amd_zen3"][0])[1].startswith(
        "CPU flags lack avx512_bf16 and amx_bf16 (widest: avx2)")
    assert "(widest: avx512f)" in bf16_from_cpuinfo(CPUINFO_SAMPLES["intel_cascade_lake"][0])[1]
    assert bf16_from_cpuinfo("processor\t: 0\n") == (False, "no CPU flags found in /proc/cpuinfo")


def test_the_override_decides_both_ways_and_rejects_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(OVERRIDE_ENV, value)
        assert native_bf16("cpu") == (expected, f"{OVERRIDE_ENV}={value}")
    monkeypatch.setenv(OVERRIDE_ENV, "yes")
    with pytest.raises(ValueError, match="must be 1 or 0"):
        native_bf16("cpu")


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="x86 Linux flags")
def test_this_machine_s_answer_agrees_with_torch_s_own_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    native, why = native_bf16("cpu")
    torch_says = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native is torch_says, why
    assert (native, why) == bf16_from_cpuinfo(CPUINFO.read_text())
    # read once per process: the demo and the worker ask it per job
    hits = _cpu_bf16.cache_info().hits
    assert native_bf16(torch.device("cpu")) == (native, why)
    assert _cpu_bf16.cache_info().hits == hits + 1


def test_an_unknown_device_type_is_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    assert native_bf16("meta") == (False, "no bf16 detection for meta devices")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("models") / "w.pth"
    torch.manual_seed(0)
    torch.save(create_model("digits_cnn").state_dict(), path)
    return path


def certify_args(weights, out, *extra: str) -> list[str]:
    return ["certify", str(weights), "--arch", "digits_cnn", "--sigma", "0.25", "--n0", "20", "--n", "200",
            "--batch-size", "100", "--count", "2", "--seed", "0", "--device", "cpu", "--out", str(out), *extra]


def test_the_cli_refuses_bf16_where_it_is_emulated(tmp_path, weights, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "0")
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(app, certify_args(weights, out, "--bf16"))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"--bf16 would be slower than fp32 on cpu: {OVERRIDE_ENV}=0" in message and "--force-bf16" in message
    assert not out.exists()
    # fp32, the default, is never refused
    assert CliRunner().invoke(app, certify_args(weights, out)).exit_code == 0


def test_force_bf16_certifies_the_bf16_model_anyway(tmp_path, weights, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "0")
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(app, certify_args(weights, out, "--force-bf16"))
    assert result.exit_code == 0, result.output
    assert "model in bfloat16" in " ".join(result.output.split()) and len(out.read_text().splitlines()) == 2


def test_a_bad_override_is_a_clear_error(tmp_path, weights, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "maybe")
    result = CliRunner().invoke(app, certify_args(weights, tmp_path / "r.jsonl", "--bf16"))
    assert result.exit_code == 2 and "must be 1 or 0" in result.output
