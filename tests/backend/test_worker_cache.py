"""The worker's per-process model caches: which jobs share a loaded module, and which never do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

from backend.core.config import Settings
from backend.models import Job, JobConfig, Model, ModelFormat, ModelKind
from backend.worker import Resources
from engine.denoise import DRUNet
from engine.models import create_model
from engine.sampling import model_dtype
from engine.train.checkpoint import save_checkpoint
from tests.backend.test_service import DRUNET_KWARGS

CLASSIFIER, DENOISER = 1, 2


class Rows:
    """Stands in for a database session: Session.get(Model, id) is all the caches ask of it."""

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


@pytest.fixture
def rows(tmp_path) -> Rows:
    return Rows(tmp_path)


def base(resources: Resources, rows: Rows, **config) -> torch.nn.Module:
    job = Job(id=1, owner_id=1, model_id=CLASSIFIER, dataset="digits", split="test", subset={}, config={}, total=1)
    return resources.base_classifier(rows, job, JobConfig(**config))


def weights(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_compiled_jobs_share_one_torch_compile_wrapper_over_copies_no_eager_job_uses(rows):
    resources = Resources(Settings(DEVICE="cpu"))
    compiled = base(resources, rows, compile=True)
    eager = base(resources, rows)
    assert isinstance(compiled, OptimizedModule) and not isinstance(eager, OptimizedModule)
    # the next compiled shard (of this job or another on the model) runs the same wrapper, and its graphs
    assert base(resources, rows, compile=True, sigma=0.5) is compiled
    assert base(resources, rows) is eager and not weights(eager) & weights(compiled)
    # bf16 converts its copies in place: a compiled bf16 job has a wrapper of its own
    compiled_bf16 = base(resources, rows, compile=True, bf16=True)
    assert compiled_bf16 is not compiled and not weights(compiled_bf16) & weights(compiled)


def test_a_compiled_denoised_job_compiles_the_composed_classifier_at_its_sigma(rows):
    resources = Resources(Settings(DEVICE="cpu"))
    wrappers = {sigma: base(resources, rows, compile=True, denoiser_id=DENOISER, sigma=sigma) for sigma in (0.25, 0.5)}
    for sigma, wrapper in wrappers.items():
        assert isinstance(wrapper, OptimizedModule)
        denoiser, classifier = wrapper._orig_mod  # classifier(denoiser(x)), compiled as one module
        assert isinstance(denoiser, DRUNet) and denoiser.noise_level == sigma
        assert not isinstance(classifier, DRUNet)
    assert base(resources, rows, compile=True, denoiser_id=DENOISER, sigma=0.25) is wrappers[0.25]
    eager = base(resources, rows, denoiser_id=DENOISER, sigma=0.25)
    assert not isinstance(eager, OptimizedModule) and not weights(eager) & weights(wrappers[0.25])


def test_frozen_jobs_share_one_frozen_graph_per_model_precision_and_denoiser_sigma(rows):
    from engine.denoise import denoised_classifier
    from engine.freeze import FrozenModel

    resources = Resources(Settings(DEVICE="cpu"))
    frozen = base(resources, rows, freeze=True)
    assert isinstance(frozen, FrozenModel) and model_dtype(frozen) == torch.float32
    assert base(resources, rows, freeze=True, sigma=0.5) is frozen  # no denoiser: sigma does not enter the graph
    eager, compiled = base(resources, rows), base(resources, rows, compile=True)
    assert not isinstance(eager, FrozenModel) and compiled is not frozen
    frozen_bf16 = base(resources, rows, freeze=True, bf16=True)
    assert frozen_bf16 is not frozen and model_dtype(frozen_bf16) == torch.bfloat16
    assert model_dtype(eager) == torch.float32  # converting for bf16 touched fresh copies only
    x = torch.rand(5, 1, 8, 8)
    for sigma in (0.25, 0.5):  # the denoiser's level is a constant of each graph: one graph per sigma
        graph = base(resources, rows, freeze=True, denoiser_id=DENOISER, sigma=sigma)
        assert base(resources, rows, freeze=True, denoiser_id=DENOISER, sigma=sigma) is graph
        reference = denoised_classifier(resources.load(rows.get(Model, CLASSIFIER)),
                                        resources.load(rows.get(Model, DENOISER)), sigma)
        with torch.inference_mode():
            assert torch.allclose(graph(x), reference(x), atol=1e-5)
