import gzip
import struct

import numpy as np
import pytest
import torch

from engine.data import load_dataset, load_fashion_mnist
from engine.data.idx import read_idx


def test_digits_is_on_the_unit_scale_and_split_without_overlap():
    test, train, everything = (load_dataset("digits", split=s) for s in ("test", "train", "all"))
    assert test.x.shape == (359, 1, 8, 8) and test.x.dtype == torch.float32 and test.y.dtype == torch.int64
    assert len(test.x) + len(train.x) == len(everything.x) == 1797
    assert float(everything.x.min()) == 0.0 and float(everything.x.max()) == 1.0
    assert set(test.y.tolist()) == set(range(10)) and test.num_classes == 10
    # no image of the test split appears in the training split
    train_rows = {row.tobytes() for row in train.x.flatten(1).numpy()}
    overlap = sum(row.tobytes() in train_rows for row in test.x.flatten(1).numpy())
    assert overlap <= 5  # a few digits are pixel-identical duplicates in sklearn's data


def test_npz_round_trip_in_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    expected = torch.from_numpy(pixels.transpose(0, 3, 1, 2) / 255.0).float()
    labels = np.arange(6)
    for name, x in {"nhwc_uint8": pixels, "nchw_float": pixels.transpose(0, 3, 1, 2) / 255.0}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=labels)
        data = load_dataset(tmp_path / f"{name}.npz")
        assert torch.allclose(data.x, expected) and data.y.tolist() == list(range(6))
    np.savez(tmp_path / "grey.npz", x=pixels[..., 0], y=labels)
    assert load_dataset(str(tmp_path / "grey.npz")).x.shape == (6, 1, 5, 5)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.full((2, 1, 4, 4), 255.0), [0, 1], r"\[0, 1\]"),
        (np.full((2, 1, 4, 4), np.nan), [0, 1], "NaN"),
        (np.zeros((2, 16)), [0, 1], "shape"),
        (np.zeros((2, 1, 4, 4)), [0, 1, 2], "one label per image"),
        (np.zeros((2, 1, 4, 4)), [0.5, 1.0], "integer"),
        (np.zeros((2, 1, 4, 4)), [-1, 0], ">= 0"),
    ],
)
def test_npz_validation_errors_say_what_is_wrong(tmp_path, x, y, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.asarray(y))
    with pytest.raises(ValueError, match=message):
        load_dataset(path)


def test_npz_needs_x_and_y_and_no_pickles(tmp_path):
    np.savez(tmp_path / "keys.npz", images=np.zeros((1, 1, 2, 2)), y=[0])
    with pytest.raises(ValueError, match="missing"):
        load_dataset(tmp_path / "keys.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([object()], dtype=object), y=[0])
    with pytest.raises(ValueError, match="pickle"):
        load_dataset(tmp_path / "objects.npz")


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_fashion_mnist_from_idx_files(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 0, 3]))
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte").tolist() == [9, 0, 3]
    data = load_fashion_mnist(root=tmp_path)
    assert data.x.shape == (3, 1, 28, 28) and data.y.tolist() == [9, 0, 3]
    assert torch.allclose(data.x[0, 0], torch.from_numpy(images[0] / 255.0).float())
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_fashion_mnist(split="train", root=tmp_path)


def test_missing_fashion_mnist_and_unknown_names_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not installed"):
        load_fashion_mnist(root=tmp_path / "absent")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent.npz")
    (tmp_path / "x.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "x.idx")
