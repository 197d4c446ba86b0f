import pathlib
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from engine.models import UnsafeModelError, create_model, detect_format, load_model
from engine.models.loading import check_exported_archive


class TouchMarker:
    """A pickle payload that creates a file when unpickled: what a malicious checkpoint does."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def digits_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("digits_cnn")
    for m in model.modules():  # non-trivial BatchNorm statistics, so a lost buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def inputs() -> torch.Tensor:
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.inference_mode():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_state_dict_with_arch(tmp_path, digits_model, inputs):
    path = tmp_path / "w.pth"
    torch.save(digits_model.state_dict(), path)
    assert detect_format(path) == "state_dict"
    assert same_outputs(load_model(path, arch="digits_cnn"), digits_model, inputs)
    with pytest.raises(ValueError, match="architecture"):
        load_model(path)


def test_cohen_style_checkpoint_with_arch_entry_and_dataparallel_prefix(tmp_path, digits_model, inputs):
    # Cohen et al. save {"arch", "state_dict", ...} with "1.module." keys (normalize, DataParallel(net))
    state = {k.replace("1.", "1.module.", 1): v for k, v in digits_model.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "digits_cnn", "epoch": 90, "state_dict": state}, path)
    assert same_outputs(load_model(path), digits_model, inputs)
    # and a bare network without the normalisation wrapper
    bare = {k[2:]: v for k, v in digits_model.state_dict().items()}
    torch.save(bare, tmp_path / "bare.pt")
    assert same_outputs(load_model(tmp_path / "bare.pt", arch="digits_cnn"), digits_model, inputs)


def test_safetensors_with_arch_in_metadata(tmp_path, digits_model, inputs):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(path),
              metadata={"arch": "digits_cnn"})
    assert detect_format(path) == "safetensors"
    assert same_outputs(load_model(path), digits_model, inputs)


def test_torchscript(tmp_path, digits_model, inputs):
    path = tmp_path / "m.pt"
    torch.jit.trace(digits_model, inputs).save(str(path))
    assert detect_format(path) == "torchscript"
    assert same_outputs(load_model(path), digits_model, inputs)


def test_torch_export_program_with_dynamic_batch(tmp_path, digits_model, inputs):
    path = tmp_path / "m.pt2"
    program = torch.export.export(digits_model, (inputs,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    assert detect_format(path) == "export"
    loaded = load_model(path)
    assert same_outputs(loaded, digits_model, inputs)
    assert loaded(torch.rand(17, 1, 8, 8)).shape == (17, 10)


@pytest.mark.parametrize("save", ["torch_save", "raw_pickle", "full_module"])
def test_pickles_that_run_code_are_refused_and_never_run(tmp_path, save):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if save == "torch_save":
        torch.save({"weight": torch.zeros(2), "payload": TouchMarker(marker)}, path)
    elif save == "raw_pickle":
        with open(path, "wb") as f:
            pickle.dump({"payload": TouchMarker(marker)}, f)
    else:
        torch.save(create_model("digits_cnn"), path)  # a whole pickled module is code too
    for fmt in (None, "state_dict"):
        with pytest.raises(UnsafeModelError, match="refusing"):
            load_model(path, format=fmt, arch="digits_cnn")
    assert not marker.exists()
    assert issubclass(UnsafeModelError, ValueError)


def test_exported_archive_with_a_malicious_pickled_member_is_refused(tmp_path, digits_model, inputs):
    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(digits_model, (inputs,)), str(good))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                buffer = __import__("io").BytesIO()
                torch.save((TouchMarker(marker),), buffer)
                data = buffer.getvalue()
            dst.writestr(item, data)
    with pytest.raises(UnsafeModelError):
        check_exported_archive(evil)
    with pytest.raises(UnsafeModelError):
        load_model(evil)
    assert not marker.exists()


def test_garbage_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable"):
        load_model(path, arch="digits_cnn")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown model format"):
        load_model(path, format="keras")


def test_shape_mismatch_with_the_architecture_is_reported(tmp_path, digits_model):
    path = tmp_path / "w.pth"
    torch.save(digits_model.state_dict(), path)
    with pytest.raises(RuntimeError):
        load_model(path, arch="digits_cnn", num_classes=3)
