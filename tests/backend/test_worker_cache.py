"""The worker's model processes: which jobs share one, which never do, and that each answers as the engine."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backend.core.config import Settings
from backend.models import Job, JobConfig, Model, ModelFormat, ModelKind
from backend.sandbox.loading import load_registered
from backend.sandbox.process import ModelProcess, RemoteGenerator
from backend.worker import Resources, channels_last_for, model_options
from engine.denoise import DRUNet, denoised_classifier
from engine.models import create_model
from engine.noise import Gaussian
from engine.sampling import ModelVoter, make_generator
from engine.smooth import prepare_model
from engine.train.checkpoint import save_checkpoint
from tests.backend.test_service import DRUNET_KWARGS

CLASSIFIER, DENOISER = 1, 2


class Rows:
    """Stands in for a database session: Session.get(Model, id) is all the worker's caches ask of it."""

    def __init__(self, folder: Path) -> None:
        torch.manual_seed(0)
        classifier = save_checkpoint(folder / "digits_cnn.pt", create_model("digits_cnn", width=4), "digits_cnn",
                                     {"num_classes": 10, "width": 4})
        denoiser = save_checkpoint(folder / "drunet.pt", DRUNet(**DRUNET_KWARGS), "drunet_small", DRUNET_KWARGS)
        common = {"owner_id": 1, "format": ModelFormat.state_dict, "input_shape": [1, 8, 8], "size_bytes": 1}
        self.rows = {CLASSIFIER: Model(id=CLASSIFIER, name="cnn", arch="digits_cnn", num_classes=10,
                                       path=str(classifier), **common),
                     DENOISER: Model(id=DENOISER, name="drunet", kind=ModelKind.denoiser, path=str(denoiser), **common)}

    def get(self, table: type, id: int) -> Model:
        assert table is Model
        return self.rows[id]

    def load(self, id: int) -> torch.nn.Module:
        row = self.rows[id]
        return load_registered(row.path, format=row.format.value, arch=row.arch, num_classes=row.num_classes,
                               input_shape=row.input_shape)


@pytest.fixture
def rows(tmp_path) -> Rows:
    return Rows(tmp_path)


@pytest.fixture
def resources():
    made = Resources(Settings(DEVICE="cpu", SANDBOX_CACHE_SIZE=8, SANDBOX_THREADS=1))
    yield made
    made.close()


def process(resources: Resources, rows: Rows, **config) -> ModelProcess:
    job = Job(id=1, owner_id=1, model_id=CLASSIFIER, dataset="digits", split="test", subset={}, config={}, total=1)
    return resources.model_process(rows, job, JobConfig(**config))


X = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def remote_votes(proc: ModelProcess, seed: int = 5) -> list[int]:
    return proc.votes(X, Gaussian(0.25), [300], 128, RemoteGenerator(seed))[0].tolist()


def local_votes(model: torch.nn.Module, seed: int = 5, **conversion) -> list[int]:
    """Votes of ``model`` converted in this process as the worker converts a weights file: NHWC, and ``conversion``."""
    prepared = prepare_model(model, channels_last=True, **conversion)
    return ModelVoter(prepared, 10, channels_last=True).votes(X, Gaussian(0.25), [300], 128,
                                                              make_generator(seed, "cpu"))[0].tolist()


def test_jobs_that_convert_the_model_alike_share_a_model_process_and_others_never_do(resources, rows):
    eager = process(resources, rows)
    assert process(resources, rows, sigma=0.5) is eager  # no denoiser: sigma does not enter the model
    frozen = process(resources, rows, freeze=True)
    bf16 = process(resources, rows, bf16=True)
    assert len({id(p) for p in (eager, frozen, bf16)}) == 3
    assert len({p.process.pid for p in (eager, frozen, bf16)}) == 3
    assert process(resources, rows, freeze=True, sigma=0.5) is frozen
    # each answers exactly as the engine's own conversion of the same file, seed for seed
    assert remote_votes(eager) == local_votes(rows.load(CLASSIFIER))
    assert remote_votes(frozen) == local_votes(rows.load(CLASSIFIER), freeze=True)
    assert remote_votes(bf16) == local_votes(rows.load(CLASSIFIER), dtype=torch.bfloat16)
    resources.close()
    assert not any(p.alive for p in (eager, frozen, bf16))


def test_a_denoised_job_has_one_model_process_per_sigma_with_the_level_fixed_inside(resources, rows):
    for sigma in (0.25, 0.5):
        proc = process(resources, rows, freeze=True, denoiser_id=DENOISER, sigma=sigma)
        assert process(resources, rows, freeze=True, denoiser_id=DENOISER, sigma=sigma) is proc
        reference = denoised_classifier(rows.load(CLASSIFIER), rows.load(DENOISER), sigma)
        assert remote_votes(proc) == local_votes(reference, freeze=True)
    assert len(resources.processes) == 2


def test_a_dead_model_process_is_replaced_and_the_oldest_is_stopped_beyond_the_cache(rows):
    resources = Resources(Settings(DEVICE="cpu", SANDBOX_CACHE_SIZE=1, SANDBOX_THREADS=1))
    try:
        first = process(resources, rows)
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
        second = process(resources, rows)
        assert second is not first and second.alive
        other = process(resources, rows, freeze=True)  # one slot: the eager process is stopped
        assert other.alive and not second.alive and list(resources.processes) == [Resources.process_key(
            Job(id=1, owner_id=1, model_id=CLASSIFIER, dataset="d", split="test", subset={}, config={}, total=1),
            JobConfig(freeze=True))]
    finally:
        resources.close()


def test_the_worker_s_cpu_default_is_the_variant_the_bench_measures_for_it(monkeypatch, rows):
    # issue 15: no default slower than Cohen's loop on any CPU. make bench reports WORKER_CPU_VARIANT as what a
    # dashboard job (default form: fp32, eager) runs on a CPU worker; the worker must run exactly that
    from bench.engine_bench import VARIANT_OPTIONS, WORKER_CPU_VARIANT

    def engine_kwargs(options: dict) -> dict:  # the worker's model-process options as SmoothedClassifier's
        kwargs = {"channels_last": options["channels_last"], "dtype": torch.bfloat16 if options["bf16"] else None,
                  "compile": options["compile"], "freeze": options["freeze"]}
        return {k: v for k, v in kwargs.items() if v}

    seen = []

    def serve(model, denoiser, *, settings, device, options):  # what the worker asks of the model process
        seen.append((device, options))
        return SimpleNamespace(process=SimpleNamespace(pid=0), alive=True, close=lambda: None)

    monkeypatch.setattr("backend.worker.serve_registered", serve)
    resources = Resources(Settings(DEVICE="cpu", SANDBOX_CACHE_SIZE=8, SANDBOX_THREADS=1))
    job = Job(id=1, owner_id=1, model_id=CLASSIFIER, dataset="digits", split="test", subset={}, config={}, total=1)
    resources.model_process(rows, job, JobConfig())
    assert seen[0][0] == "cpu"
    assert engine_kwargs(seen[0][1]) == VARIANT_OPTIONS[WORKER_CPU_VARIANT] == {"channels_last": True}
    for fmt in ModelFormat:  # every format the worker converts; a TorchScript archive keeps its saved layout
        model = rows.get(Model, CLASSIFIER).model_copy(update={"format": fmt})
        expected = {} if fmt is ModelFormat.torchscript else VARIANT_OPTIONS[WORKER_CPU_VARIANT]
        assert engine_kwargs(model_options(model, JobConfig())) == expected
        assert channels_last_for(fmt) == (fmt is not ModelFormat.torchscript)
