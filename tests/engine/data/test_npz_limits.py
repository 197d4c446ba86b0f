"""engine.data.npz: archives are judged by their headers before anything expands; arrays are read in chunks."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from engine.data import load_npz
from engine.data.datasets import UnitScaleImages, load_stored, read_npz
from engine.data.npz import CHUNK_BYTES, Limit, LimitExceeded, NpzLimits, SafeNpz, scan_zip


def npy_header(shape, descr="|u1", fortran=False, version=(2, 0)) -> bytes:
    out = io.BytesIO()
    write = np.lib.format.write_array_header_2_0 if version == (2, 0) else np.lib.format.write_array_header_1_0
    write(out, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def write_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


LIMITS = NpzLimits(elements=Limit(1000, "MAX_DATASET_ELEMENTS"), images=Limit(10, "MAX_DATASET_IMAGES"),
                   input_elements=Limit(64, "MAX_INPUT_ELEMENTS"))


def test_an_array_over_the_element_limit_is_refused_from_its_header(tmp_path):
    path = write_zip(tmp_path / "bomb.npz", {"x.npy": npy_header((2_000_000_000,)) + b"\0" * 100,
                                             "y.npy": npy(np.zeros(2))})
    with pytest.raises(LimitExceeded) as refused:
        SafeNpz(path, NpzLimits(elements=Limit(1_000_000_000, "MAX_DATASET_ELEMENTS")))
    assert str(refused.value) == "x holds 2,000,000,000 values; the limit is MAX_DATASET_ELEMENTS = 1,000,000,000"
    with pytest.raises(ValueError, match="declares shape"):  # unbounded: its size still has to be consistent
        SafeNpz(path)


@pytest.mark.parametrize(("x", "message"), [
    (np.zeros((11, 1, 2, 2), np.uint8), "x holds 11 images; the limit is MAX_DATASET_IMAGES = 10"),
    (np.zeros((2, 1, 9, 9), np.uint8), "holds 81 values; the limit is MAX_INPUT_ELEMENTS = 64"),
    (np.zeros((5, 3, 10, 10), np.uint8), "x holds 1,500 values; the limit is MAX_DATASET_ELEMENTS = 1,000"),
    (np.zeros((2, 4, 4, 3), np.uint8), None),  # channels last, 48 values per input: fine
])
def test_dataset_limits_name_the_setting_and_the_value(tmp_path, x, message):
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.zeros(len(x), np.int64))
    if message is None:
        assert read_npz(path, LIMITS)[0].shape == (2, 3, 4, 4)
        return
    with pytest.raises(LimitExceeded, match=message):
        read_npz(path, LIMITS)


@pytest.mark.parametrize(("descr", "message"), [
    ("|O", "pickle"), ("<U4", "only plain numbers"), ("<c8", "only plain numbers"),
    ([("a", "<f4"), ("b", "<i4")], "only plain numbers"), ("|V8", "only plain numbers")])
def test_arrays_that_are_not_plain_numbers_are_refused_unread(tmp_path, descr, message):
    header = npy_header((2,), descr)
    path = write_zip(tmp_path / "t.npz", {"x.npy": header + b"\0" * (2 * np.dtype(descr).itemsize)})
    with pytest.raises(ValueError, match=message):
        SafeNpz(path)


def test_a_member_whose_size_disagrees_with_its_header_is_refused(tmp_path):
    for data in (b"\0" * 10, b"\0" * 100):
        path = write_zip(tmp_path / "t.npz", {"x.npy": npy_header((2, 1, 4, 4)) + data})
        with pytest.raises(ValueError, match=r"declares shape \(2, 1, 4, 4\) of uint8 \(32 bytes of data\)"):
            SafeNpz(path)


def test_other_compressions_and_absurd_ratios_are_refused(tmp_path):
    zeros = {"x.npy": npy(np.zeros((64, 1, 32, 32), np.uint8)), "y.npy": npy(np.zeros(64, np.int64))}
    with pytest.raises(ValueError, match="compression method 12"):
        SafeNpz(write_zip(tmp_path / "bz.npz", zeros, zipfile.ZIP_BZIP2))
    deflated = write_zip(tmp_path / "z.npz", zeros)
    with pytest.raises(LimitExceeded, match=r"x.npy declares 65,664 bytes from \d+ compressed \(ratio \d+:1\); "
                                            r"the limit is a ratio of 10:1"):
        SafeNpz(deflated, NpzLimits(max_ratio=10, ratio_floor_bytes=0))
    assert set(SafeNpz(deflated).headers) == {"x", "y"}  # the default ratio is above deflate's ceiling


def test_a_corrupt_member_is_a_value_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, x=np.arange(4096, dtype=np.uint8).reshape(16, 1, 16, 16), y=np.zeros(16, np.int64))
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"\x00\x01\x02\x03\x04\x05") + 200] ^= 0xFF  # one byte of x's data: the CRC no longer holds
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load_npz(path)


def zip64_declaring(archive: bytes, count: int) -> bytes:
    at = archive.rfind(b"PK\x05\x06")
    _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", archive, at)
    body = archive[:at]
    return (body + struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
            + struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body), 1)
            + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, cd_size, cd_offset, 0))


def test_entries_and_names_are_counted_from_the_directory(tmp_path):
    path = write_zip(tmp_path / "m.zip", {f"a{i}.npy": b"" for i in range(70)})
    assert scan_zip(path, Limit(100, "N")) == 70
    with pytest.raises(LimitExceeded, match="the archive holds 70 entries .declared.; the limit is N = 69"):
        scan_zip(path, Limit(69, "N"))
    with pytest.raises(LimitExceeded, match="holds 70 entries .declared.; the limit is engine.data.npz.MAX_MEMBERS = 64"):
        SafeNpz(path)
    # a directory that says fewer entries than it holds is still counted entry by entry
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", raw, at + 8, 3, 3)
    (tmp_path / "lying.zip").write_bytes(bytes(raw))
    with pytest.raises(LimitExceeded, match="holds 11 entries; the limit is N = 10"):
        scan_zip(tmp_path / "lying.zip", Limit(10, "N"))
    # zip64 end records declaring millions
    (tmp_path / "z64.zip").write_bytes(zip64_declaring(path.read_bytes(), 5_000_000))
    assert zipfile.is_zipfile(tmp_path / "z64.zip")
    with pytest.raises(LimitExceeded, match="5,000,000 entries"):
        scan_zip(tmp_path / "z64.zip", Limit(1_000_000, "N"))
    long = write_zip(tmp_path / "n.zip", {"a" * 300 + ".npy": b""})
    with pytest.raises(LimitExceeded, match="name of 304 bytes; the limit is 255"):
        scan_zip(long, Limit(10, "N"), max_name_bytes=255)
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ValueError, match="not a zip"):
        scan_zip(tmp_path / "junk.zip", Limit(10, "N"))


def test_every_header_version_order_and_byte_order_reads_as_np_load_does(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random((7, 3, 5, 4))
    arrays = {"f": np.asfortranarray(base), "be": base.astype(">f4"), "c": base.astype(np.float32),
              "u": (base * 255).astype(np.uint8), "scalar": np.float64(3.5), "empty": np.zeros((0, 3))}
    path = tmp_path / "a.npz"
    np.savez(path, **arrays)
    v1 = write_zip(tmp_path / "v1.npz", {"x.npy": npy_header((2, 3), "<f8", version=(1, 0))
                                         + np.arange(6.0).tobytes()})
    with SafeNpz(path) as npz, np.load(path) as reference:
        for name in arrays:
            assert np.array_equal(npz.read(name), reference[name])
        assert npz.headers["f"].fortran_order
        chunked = np.empty(base.shape)
        npz.read_into("f", chunked, chunk_bytes=100)  # row by row of the transposed layout
        assert np.array_equal(chunked, base)
    with SafeNpz(v1) as npz:
        assert np.array_equal(npz.read("x"), np.arange(6.0).reshape(2, 3))


def test_float_pixels_are_stored_as_uint8_only_when_every_value_is_exact(tmp_path):
    levels = np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3).repeat(2, 0) * 5
    exact, y = levels.astype(np.float32) / np.float32(255), np.arange(2)
    for name, x, dtype in (("u8", levels, np.uint8), ("exact32", exact, np.uint8),
                           ("exact64", levels / 255.0, None), ("off", exact + np.float32(1e-4), np.float32)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=x, y=y)
        stored, labels = read_npz(path, store=True)
        loaded = load_npz(path).x.numpy()
        assert stored.shape == loaded.shape == (2, 3, 4, 4) and labels.dtype == np.int64
        expected = (x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32))
        assert np.array_equal(loaded, expected.transpose(0, 3, 1, 2))  # what loading always returned
        if dtype is not None:
            assert stored.dtype == dtype
        # storing never changes what a load gives back
        back = stored.astype(np.float32) / np.float32(255) if stored.dtype == np.uint8 else stored
        assert np.array_equal(back, loaded)


def test_stored_datasets_are_memory_mapped_and_converted_per_index(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (6, 3, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=pixels, y=np.arange(6))
    np.savez(tmp_path / "f32.npz", x=pixels.astype(np.float32) / 255, y=np.arange(6))
    np.savez_compressed(tmp_path / "packed.npz", x=pixels, y=np.arange(6))
    reference = load_npz(tmp_path / "u8.npz")
    for name in ("u8", "f32"):
        data = load_stored(tmp_path / f"{name}.npz", LIMITS.__class__(elements=Limit(10_000, "E")))
        assert isinstance(data.x, UnitScaleImages) and isinstance(data.x.pixels, np.memmap)
        assert len(data.x) == 6 and data.x.shape == (6, 3, 5, 5) and data.x[0].numel() == 75
        assert data.x.dtype == torch.float32 and data.num_classes == 6
        for index in (2, -1, slice(1, 4), [0, 5, 3], torch.tensor([1, 2]), np.array([4])):
            assert torch.equal(data.x[index], reference.x[index]), index
        assert torch.equal(data.x.to("cpu"), reference.x)
        data.x[0].add_(1)  # a fresh tensor each time: the file is never written
        assert torch.equal(data.x[0], reference.x[0])
    packed = load_stored(tmp_path / "packed.npz")
    assert isinstance(packed.x, torch.Tensor) and torch.equal(packed.x, reference.x)
    with pytest.raises(LimitExceeded, match="MAX_INPUT_ELEMENTS"):
        load_stored(tmp_path / "u8.npz", LIMITS)


def test_loading_holds_one_float32_copy_and_a_few_chunks(tmp_path):
    x = np.random.default_rng(0).random((2000, 1, 64, 64))  # 66 MB of float64
    np.savez(tmp_path / "f.npz", x=x, y=np.zeros(2000, np.int64))
    del x
    tracemalloc.start()
    try:
        data = load_npz(tmp_path / "f.npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = data.x.numel() * 4
    assert peak < out + 4 * CHUNK_BYTES < out + 2000 * 64 * 64 * 8  # never the float64 array beside it
