"""The parent's side of a model process: start it confined, talk to it with deadlines, stop it.

``check_model_file`` is the upload check (one forward pass on a zero input); ``ModelProcess`` kept
alive by a worker answers votes for ``SmoothedClassifier`` through ``RemoteVoter``. The parent sends
a generator's state with each request and takes the advanced state back, so a seeded certificate is
the same, bit for bit, as one computed in process. Whatever goes wrong inside is reported in this
module's words: the model's own exception text never leaves the model process.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import structlog
import torch

import backend
import engine
from backend.sandbox.wire import WireClosed, WireError, WireTimeout, read_frame, write_frame
from engine.noise import Noise

log = structlog.get_logger("kavach.sandbox")
# environment a model process may see: nothing about the service (database, Redis, tokens)
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
              "CUDA_DEVICE_ORDER", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LD_LIBRARY_PATH")
MAX_COUNT_ELEMENTS = 1 << 27


class SandboxError(RuntimeError):
    """The model process failed; ``str()`` says how, in words safe to show the model's owner."""


class SandboxUnavailable(SandboxError):
    """This machine cannot confine model processes (and SANDBOX is strict)."""


class ModelFailed(SandboxError):
    """Loading or running the model failed inside the model process."""


class ModelStopped(SandboxError):
    """The model process was stopped by a limit (wall clock, CPU time) or died."""


class VotesCancelled(Exception):
    """``should_stop`` asked for it and the model process stopped between batches."""


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB"


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int
    cpu_seconds: int | None  # at start; a worker moves it per request
    start_seconds: float  # until ready (check: until the answer)
    batch_seconds: float  # between two signs of life while votes are drawn
    file_bytes: int = 1 << 30
    threads: int | None = None


@dataclass(frozen=True)
class ModelFile:
    """One file and how to load it (a registered Model row's fields)."""

    file: str
    format: str | None
    arch: str | None
    num_classes: int | None
    input_shape: list[int]
    input_max: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None

    def spec(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "arch": self.arch, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "input_max": self.input_max, "mean": self.mean, "std": self.std}


@dataclass
class RemoteGenerator:
    """A torch generator living in a model process: its seed, and its state after the last request."""

    seed: int
    state: torch.Tensor | None = None


def _stage_words(stage: str) -> str:
    return {"load": "loading the file", "forward": "the forward pass", "prepare": "preparing the model",
            "confine": "confining the model process",
            "export": "compiling the smoothed classifier"}.get(stage, stage)


def _failure_message(header: dict[str, Any], limits: SandboxLimits, fmt: str | None, context: str) -> SandboxError:
    stage, code, detail = str(header.get("stage")), str(header.get("code")), header.get("detail")
    detail = detail if isinstance(detail, str) and detail else None
    if code == "confine":
        return SandboxUnavailable(f"this server cannot sandbox model files: {detail or 'confinement failed'}")
    if code == "memory":
        return ModelFailed(f"{_stage_words(stage)} needed more than the model sandbox's memory limit of "
                           f"{_gib(limits.memory_bytes)}")
    if code == "unsafe":
        return ModelFailed(f"refused: {detail}")
    if stage == "load":
        what = f"cannot load the file as {fmt}" if fmt else "cannot load the file"
        return ModelFailed(f"{what}: {detail}" if detail else f"{what} (the loader failed inside the sandbox)")
    if stage == "export":
        return ModelFailed("neither torch.export nor TorchScript could compile this model into a standalone "
                           "program (an ONNX model, or code neither can trace or script)")
    if stage == "prepare":
        return ModelFailed(f"preparing the model failed: {detail}" if detail else
                           "preparing the model (freeze or compile) failed inside the sandbox")
    return ModelFailed(f"the model raised an error during {context}")


class ModelProcess:
    """A confined child process holding one model (optionally with its denoiser).

    Not for concurrent use by several threads at once: a lock serialises requests.
    """

    def __init__(self, task: str, files: Sequence[ModelFile], *, limits: SandboxLimits, confine: bool = True,
                 device: str = "cpu", options: dict[str, Any] | None = None, scratch_root: Path | None = None) -> None:
        self.task, self.files, self.limits, self.confine = task, list(files), limits, confine
        self.device, self.options = device, dict(options or {})
        self.scratch = Path(tempfile.mkdtemp(prefix="kavach-model-", dir=scratch_root))
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self._to_child = self._from_child = -1
        self._requests = 0

    # -- life ----------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        root = str(Path(backend.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        scratch = str(self.scratch)
        env.update(HOME=scratch, TMPDIR=scratch, NUMBA_CACHE_DIR=scratch, XDG_CACHE_HOME=scratch,
                   TORCHINDUCTOR_CACHE_DIR=f"{scratch}/inductor", TRITON_CACHE_DIR=f"{scratch}/triton",
                   PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        return env

    def start(self) -> Self:
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        try:
            with open(self.scratch / "output.log", "wb") as output:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "backend.sandbox.child", str(child_in), str(child_out)],
                    pass_fds=(child_in, child_out), env=self._env(), cwd=self.scratch, stdin=subprocess.DEVNULL,
                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(child_in)
            os.close(child_out)
        self._to_child, self._from_child = parent_out, parent_in
        code = [str(Path(engine.__file__).resolve().parent), str(Path(backend.__file__).resolve().parent)]
        limits = {"memory_bytes": self.limits.memory_bytes, "cpu_seconds": self.limits.cpu_seconds,
                  "file_bytes": self.limits.file_bytes}
        write_frame(self._to_child, {"op": "init", "task": self.task, "models": [f.spec() for f in self.files],
                                     "device": self.device, "threads": self.limits.threads, "scratch": str(self.scratch),
                                     "code": code, "limits": limits, "confine": self.confine, **self.options})
        return self

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                write_frame(self._to_child, {"op": "exit"})
                self.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                os.close(fd)
        self._to_child = self._from_child = -1
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames --------------------------------------------------------------------------------
    def _death(self) -> ModelStopped:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self.process.returncode
        if code == -signal.SIGXCPU:
            return ModelStopped("the model process ran past its CPU-time limit and was stopped")
        if code == -signal.SIGXFSZ:
            return ModelStopped("the model process wrote more than its file-size limit and was stopped")
        if code is not None and code < 0:
            return ModelStopped(f"the model process was killed by signal {signal.Signals(-code).name}")
        return ModelStopped(f"the model process exited unexpectedly (status {code})")

    def _read(self, deadline: float, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        try:
            return read_frame(self._from_child, deadline=deadline, max_payload=8 * MAX_COUNT_ELEMENTS,
                              max_elements=MAX_COUNT_ELEMENTS)
        except WireTimeout:
            self._kill()
            raise ModelStopped(f"the model did not finish {what} within the sandbox's wall-clock limit of "
                               f"{self._limit_for(what):g} s and was stopped") from None
        except WireClosed:
            raise self._death() from None
        except WireError as error:
            self._kill()
            log.warning("model process sent a malformed frame", error=str(error))
            raise ModelStopped("the model process sent a malformed answer and was stopped") from None

    def _limit_for(self, what: str) -> float:
        return self.limits.batch_seconds if what == "a batch" else self.limits.start_seconds

    def _expect(self, header: dict[str, Any], op: str, context: str) -> None:
        if header.get("op") == "error":
            self._kill()
            fmt = self.files[0].format
            raise _failure_message(header, self.limits, fmt, context)
        if header.get("op") != op:
            self._kill()
            raise ModelStopped(f"the model process answered {str(header.get('op'))[:20]!r}, not {op!r}")

    # -- requests ------------------------------------------------------------------------------
    def wait_ready(self) -> None:
        header, _ = self._read(time.monotonic() + self.limits.start_seconds, "loading")
        self._expect(header, "ready", "loading")

    def check(self) -> dict[str, Any]:
        """The upload check's answer: {"format", "shape" (None when not a tensor), "type"}."""
        header, _ = self._read(time.monotonic() + self.limits.start_seconds, "the check")
        self._expect(header, "checked", "the forward pass on a zero input")
        return header

    def export(self, target: Path, max_bytes: int) -> str:
        """Copy the program the export process wrote to ``target`` (at most ``max_bytes``); its format."""
        header, _ = self._read(time.monotonic() + self.limits.start_seconds, "the export")
        self._expect(header, "exported", "the export")
        written = self.scratch / Path(str(header.get("file"))).name
        if not written.is_file() or written.stat().st_size > max_bytes:
            raise ModelFailed(f"the exported program is missing or larger than {max_bytes} bytes")
        shutil.copyfile(written, target)
        return "export" if header.get("format") == "export" else "torchscript"

    def _cpu_used(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _budget_cpu(self, batches: int) -> None:
        """The CPU-time limit scales with the request: this many batches at the per-batch wall clock on
        every thread. Moved from outside (prlimit): the model process may not set its own limits."""
        if self.limits.cpu_seconds is None or not sys.platform.startswith("linux"):
            return
        import resource

        threads = self.limits.threads or os.cpu_count() or 1
        soft = int(self._cpu_used() + self.limits.cpu_seconds + threads * batches * self.limits.batch_seconds)
        resource.prlimit(self.process.pid, resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))

    def votes(self, xs: torch.Tensor, noise: Noise, sizes: Sequence[int], batch_size: int,
              generator: RemoteGenerator | None, *, should_stop: Callable[[], bool] | None = None,
              stop_poll_seconds: float = 0.5) -> torch.Tensor:
        """Counts (len(xs), num_classes) from the model process, as ``count_votes_many`` computes them.

        ``should_stop`` is polled while the batches run; when it says so the process is told to stop
        after the batch in flight and VotesCancelled is raised.
        """
        with self.lock:
            if not self.alive:
                raise ModelStopped("the model process is not running")
            self._requests += 1
            request = self._requests
            total = sum(int(s) for s in sizes)
            self._budget_cpu(math.ceil(total / max(batch_size, 1)) + 1)
            header = {"op": "votes", "id": request, "sizes": [int(s) for s in sizes], "batch_size": int(batch_size),
                      "noise": {"sigma": noise.sigma, "k": noise.k, "d": noise.d, "threshold": noise.threshold},
                      "gen": {"seed": None if generator is None else int(generator.seed)}}
            tensors = {"xs": xs.detach().to("cpu", torch.float32)}
            if generator is not None and generator.state is not None:
                tensors["gen_state"] = generator.state
            write_frame(self._to_child, header, tensors)
            alive_until = time.monotonic() + self.limits.batch_seconds
            cancelling = False
            while True:
                now = time.monotonic()
                wait_until = alive_until if should_stop is None or cancelling else min(alive_until,
                                                                                       now + stop_poll_seconds)
                if not select.select([self._from_child], [], [], max(0.0, wait_until - now))[0]:
                    if time.monotonic() >= alive_until:
                        self._kill()
                        raise ModelStopped("the model did not finish a batch within the sandbox's wall-clock limit "
                                           f"of {self.limits.batch_seconds:g} s and was stopped")
                    if should_stop is not None and should_stop():
                        write_frame(self._to_child, {"op": "cancel"})
                        cancelling = True
                    continue
                frame, out = self._read(alive_until, "a batch")
                if frame.get("op") == "batch" and frame.get("id") == request:
                    alive_until = time.monotonic() + self.limits.batch_seconds
                    continue
                if frame.get("op") == "cancelled" and frame.get("id") == request:
                    raise VotesCancelled
                self._expect(frame, "votes", "a batch of noisy inputs")
                counts = out.get("counts")
                self._check_counts(counts, sizes)
                if generator is not None:
                    state = out.get("gen_state")
                    if state is None or state.dtype != torch.uint8:
                        self._kill()
                        raise ModelStopped("the model process did not return its generator's state")
                    generator.state = state
                if cancelling:  # the last batch finished before the cancel was read
                    raise VotesCancelled
                return counts

    def _check_counts(self, counts: torch.Tensor | None, sizes: Sequence[int]) -> None:
        if counts is None or counts.dtype != torch.int64 or counts.dim() != 2 or counts.shape[0] != len(sizes) \
                or bool((counts < 0).any()) or counts.sum(1).tolist() != [int(s) for s in sizes]:
            self._kill()
            raise ModelStopped("the model process answered votes that do not add up to the samples asked")


@dataclass
class RemoteVoter:
    """``engine.sampling.Voter`` answered by a model process (``ModelProcess`` serving)."""

    process: ModelProcess
    should_stop: Callable[[], bool] | None = None
    generators: list[RemoteGenerator] = field(default_factory=list)

    def generator(self, seed: int | None) -> RemoteGenerator | None:
        return None if seed is None else RemoteGenerator(int(seed))

    def votes(self, xs: torch.Tensor, noise: Noise, sizes: Sequence[int], batch_size: int,
              generator: RemoteGenerator | None) -> torch.Tensor:
        return self.process.votes(xs, noise, sizes, batch_size, generator, should_stop=self.should_stop)


def check_model_file(files: Sequence[ModelFile], *, limits: SandboxLimits, confine: bool) -> dict[str, Any]:
    """Load the file in a fresh model process and run one forward pass on a zero input; the answer."""
    with ModelProcess("check", files, limits=limits, confine=confine) as process:
        return process.check()


def export_model(files: Sequence[ModelFile], target: Path, *, limits: SandboxLimits, confine: bool,
                 options: dict[str, Any], max_bytes: int) -> str:
    """Compile the smoothed classifier ``options`` describe (engine.export) in a fresh model process and
    copy the program to ``target``; its format, ``export`` or ``torchscript``."""
    with ModelProcess("export", files, limits=limits, confine=confine, options=options) as process:
        return process.export(target, max_bytes)


def serve_model(files: Sequence[ModelFile], *, limits: SandboxLimits, confine: bool, device: str,
                options: dict[str, Any]) -> ModelProcess:
    """A started, ready model process answering votes; the caller closes it."""
    process = ModelProcess("serve", files, limits=limits, confine=confine, device=device, options=options).start()
    try:
        process.wait_ready()
    except BaseException:
        process.close()
        raise
    return process
