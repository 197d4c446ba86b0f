"""Decompression bombs and oversized bodies, over real HTTP: each gets a 4xx naming its limit, nothing is stored.

The fixture's service runs with MAX_UPLOAD_BYTES = 2,000,000 and the default dataset limits
(MAX_DATASET_ELEMENTS = 1e9, MAX_DATASET_IMAGES = 1e6, MAX_IMAGE_PIXELS = 4096^2, MAX_JSON_BYTES = 1 MiB).
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.backend.conftest import MAX_UPLOAD_BYTES

MAX_JSON_BYTES = 1 << 20
FAST = {"method": "np", "sigma": 0.25, "alpha": 0.001, "n0": 20, "n": 200, "batch_size": 100, "seed": 0}


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_2_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A grey PNG; without ``pixels``, one whose IHDR declares width x height over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = pixels if pixels is not None else b"\0" * 64
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def real_png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def declare_entries(archive: bytes, count: int) -> bytes:
    """The same zip with zip64 end records that declare ``count`` entries (its directory is unchanged)."""
    at = archive.rfind(b"PK\x05\x06")
    _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", archive, at)
    body = archive[:at]
    zip64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body), 1)
    return body + zip64 + locator + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF,
                                                cd_size, cd_offset, 0)


@pytest.fixture(scope="module")
def zeros_bomb() -> bytes:
    """About 1.5 MB of .npz whose x really holds 1,505,280,000 zero bytes (deflate at its ~1000:1 ceiling)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy_header((30_000, 1, 224, 224)))
            left, block = 30_000 * 224 * 224, b"\0" * (64 << 20)
            while left:
                member.write(block[:min(left, len(block))])
                left -= min(left, len(block))
        archive.writestr("y.npy", npy(np.zeros(30_000, np.int64)))
    data = out.getvalue()
    assert len(data) < 0.8 * MAX_UPLOAD_BYTES
    return data


def stored_files(service) -> set[Path]:
    root = Path(service.env["STORAGE_DIR"])
    return {p for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def upload(client: httpx.Client, filename: str, data: bytes, name: str = "bomb") -> httpx.Response:
    return client.post("/api/v1/datasets", files={"file": (filename, data)}, data={"name": name})


def assert_refused(service, client, filename: str, data: bytes, *needles: str, status: int = 422) -> str:
    """The upload gets ``status`` quickly, its detail names each needle, and nothing new is stored."""
    before_files, before = stored_files(service), client.get("/api/v1/datasets").json()["count"]
    started = time.monotonic()
    response = upload(client, filename, data)
    assert response.status_code == status, response.text
    assert time.monotonic() - started < 20
    detail = response.json()["detail"]
    for needle in needles:
        assert needle in detail, detail
    assert stored_files(service) == before_files
    assert client.get("/api/v1/datasets").json()["count"] == before
    return detail


def test_an_npz_header_declaring_billions_of_values_is_refused_unread(service):
    bomb = zip_of({"x.npy": npy_header((100_000, 3, 224, 224)) + b"\0" * 4096,
                   "y.npy": npy(np.zeros(100_000, np.int64))})
    assert len(bomb) < 100_000
    with service.client() as client:
        detail = assert_refused(service, client, "bomb.npz", bomb, "MAX_DATASET_ELEMENTS = 1,000,000,000")
        assert "x holds 15,052,800,000 values" in detail


def test_a_real_zeros_bomb_is_refused_without_expanding(service, zeros_bomb):
    api = service.processes[0].pid  # the uvicorn process, spawned first
    peak = peak_rss_bytes(api)
    with service.client() as client:
        detail = assert_refused(service, client, "zeros.npz", zeros_bomb, "MAX_DATASET_ELEMENTS")
        assert "1,505,280,000 values" in detail
    assert peak_rss_bytes(api) - peak < 200 << 20  # expanding would take 1.5 GB (6 GB as float32)


def test_arrays_that_cannot_be_read_as_numbers_or_lie_about_their_size_are_refused(service):
    y = npy(np.zeros(2, np.int64))
    with service.client() as client:
        objects = zip_of({"x.npy": npy_header((2, 1, 8, 8), "|O") + b"\0" * 1024, "y.npy": y})
        assert_refused(service, client, "objects.npz", objects, "pickle")
        short = zip_of({"x.npy": npy_header((2, 1, 8, 8)) + b"\0" * 10, "y.npy": y})
        assert_refused(service, client, "short.npz", short, "declares shape (2, 1, 8, 8)")
        wide = zip_of({"x.npy": npy(np.zeros((2, 3, 1024, 1024), np.uint8)), "y.npy": y})
        assert_refused(service, client, "wide.npz", wide, "MAX_INPUT_ELEMENTS = 786,432")


def test_too_many_members_are_refused_before_the_zip_is_parsed(service):
    images = {f"{label}/{i}.png": real_png(np.zeros((8, 8), np.uint8)) for label in ("a", "b") for i in range(2)}
    with service.client() as client:
        arrays = {f"a{i}.npy": npy(np.zeros(1, np.uint8)) for i in range(100)}
        assert_refused(service, client, "many.npz", zip_of(arrays), "100 entries",
                       "engine.data.npz.MAX_MEMBERS = 64")
        forged = declare_entries(zip_of(images), 5_000_000)
        assert_refused(service, client, "many.zip", forged, "5,000,000 entries",
                       "2 x MAX_DATASET_IMAGES (images and their folders) = 2,000,000")


def test_image_headers_over_the_pixel_limit_are_refused_before_decoding(service):
    good = real_png(np.zeros((8, 8), np.uint8))
    with service.client() as client:
        for width, height in ((100_000, 100_000), (5_000, 5_000)):
            archive = zip_of({"a/0.png": good, "a/1.png": good, "b/0.png": good,
                              "b/huge.png": png(width, height)})
            detail = assert_refused(service, client, "huge.zip", archive, "b/huge.png",
                                    "MAX_IMAGE_PIXELS = 16,777,216")
            assert f"{width * height:,} pixels" in detail


def test_a_chunked_upload_without_content_length_is_cut_off_at_the_limit(service):
    boundary = "kavachboundary"

    def body(size: int):
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nchunked\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.npz\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        block = b"\0" * (256 << 10)
        for _ in range(size // len(block)):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with service.client() as client:
        before_files, before = stored_files(service), client.get("/api/v1/datasets").json()["count"]
        for path in ("/api/v1/datasets", "/api/v1/models"):
            request = client.build_request("POST", path, content=body(3 * MAX_UPLOAD_BYTES), headers=headers)
            assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
            response = client.send(request)
            assert response.status_code == 413, response.text
            assert "MAX_UPLOAD_BYTES = 2,000,000 bytes" in response.json()["detail"]
        assert stored_files(service) == before_files
        assert client.get("/api/v1/datasets").json()["count"] == before
        # under the limit the same chunked form is read (and refused only for what it holds)
        small = client.send(client.build_request("POST", "/api/v1/datasets", content=body(1 << 20),
                                                 headers=headers))
        assert small.status_code == 422 and "big.npz" in small.json()["detail"]
        assert stored_files(service) == before_files


def test_json_bodies_over_max_json_bytes_get_413(service):
    job = {"model_id": 1, "dataset": "digits", "subset": {"indices": list(range(200_000))}, "config": FAST}
    with service.client() as client:
        jobs = client.get("/api/v1/jobs").json()["count"]
        declared = client.post("/api/v1/jobs", json=job)
        assert declared.status_code == 413 and "MAX_JSON_BYTES = 1,048,576" in declared.json()["detail"]
        payload = httpx.Request("POST", "/", json=job).content
        assert len(payload) > MAX_JSON_BYTES

        def chunks():
            for start in range(0, len(payload), 64 << 10):
                yield payload[start:start + (64 << 10)]

        chunked = client.send(client.build_request("POST", "/api/v1/jobs", content=chunks(),
                                                   headers={"Content-Type": "application/json"}))
        assert chunked.status_code == 413 and "MAX_JSON_BYTES" in chunked.json()["detail"]
        # a body without a content type is read as JSON by FastAPI: it gets the same limit
        untyped = client.send(client.build_request("POST", "/api/v1/jobs", content=chunks()))
        assert untyped.status_code == 413 and "MAX_JSON_BYTES" in untyped.json()["detail"]
        assert client.get("/api/v1/jobs").json()["count"] == jobs


def stored_path(service, dataset_id: str) -> Path:
    from sqlalchemy import create_engine, text

    engine = create_engine(service.database_url)
    try:
        with engine.connect() as connection:
            return Path(connection.execute(text("SELECT path FROM dataset WHERE id = :id"),
                                           {"id": int(dataset_id)}).scalar_one())
    finally:
        engine.dispose()


def test_a_zip_of_images_is_stored_as_uint8_and_certifies_as_the_engine_does(service, tmp_path):
    from PIL import Image

    from engine.data import load_dataset
    from engine.noise import Gaussian
    from engine.smooth import SmoothedClassifier
    from tests.backend.test_service import DIGITS_META, start_job, tiny_digits_cnn, upload_model, wait_for

    digits = load_dataset("digits")
    picks = [int(np.flatnonzero(digits.y.numpy() == d)[0]) for d in range(10)]  # one of each digit
    pixels = np.rint(digits.x[picks, 0].numpy() * 255).astype(np.uint8)
    archive = zip_of({f"digits/{d}/{d}.png": real_png(pixels[d]) for d in range(10)})
    net = tiny_digits_cnn()
    model_path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(net), str(model_path))
    with service.client() as client:
        response = upload(client, "digits.zip", archive, name="zipped digits")
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["input_shape"] == [1, 8, 8] and dataset["class_names"] == [str(d) for d in range(10)]
        with np.load(stored_path(service, dataset["id"])) as stored:
            assert stored["x"].dtype == np.uint8 and stored["x"].shape == (10, 1, 8, 8)
            assert np.array_equal(stored["x"][:, 0], pixels) and stored["y"].tolist() == list(range(10))
        thumbnail = client.get(f"/api/v1/datasets/{dataset['id']}/images/3")
        assert thumbnail.status_code == 200
        shown = np.asarray(Image.open(io.BytesIO(thumbnail.content)))
        assert np.array_equal(shown[::8, ::8], pixels[3])  # 8x8 grows to 64x64 by whole pixels

        model = upload_model(client, model_path, DIGITS_META)
        assert model.status_code == 201, model.text
        created = start_job(client, model.json()["id"], dataset=dataset["id"], subset={"count": 10}, **FAST)
        assert created.status_code == 201, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done", job
        rows = client.get(f"/api/v1/jobs/{job['id']}/results.json").json()
    x = torch.from_numpy(pixels[:, None].astype(np.float32) / np.float32(255))
    smoothed = SmoothedClassifier(torch.jit.load(str(model_path)), 10, Gaussian(FAST["sigma"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker: the same kernels, the same floats
    try:
        expected = [smoothed.certify(x[i], FAST["n0"], FAST["n"], FAST["alpha"], FAST["batch_size"],
                                     seed=FAST["seed"] + i) for i in range(10)]
    finally:
        torch.set_num_threads(threads)
    assert [(r["label"], r["prediction"], r["radius"], r["samples"]) for r in rows] == [
        (i, e.prediction, e.radius, e.samples) for i, e in enumerate(expected)]


def test_float_uploads_are_quantised_only_when_exact(service):
    levels = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4).repeat(2, 0) * 16
    y = np.arange(2)
    with service.client() as client:
        for x, dtype in ((levels.astype(np.float32) / np.float32(255), np.uint8),
                         (levels.astype(np.float64) / 255 + 1e-3, np.float32)):
            out = io.BytesIO()
            np.savez(out, x=x, y=y)
            response = upload(client, "floats.npz", out.getvalue(), name="floats")
            assert response.status_code == 201, response.text
            with np.load(stored_path(service, response.json()["id"])) as stored:
                assert stored["x"].dtype == dtype
                assert np.array_equal(stored["x"].astype(np.float32) / np.float32(255) if dtype == np.uint8
                                      else stored["x"], x.astype(np.float32))


def small_settings(**limits):
    from backend.core.config import Settings

    return Settings(**{"MAX_DATASET_IMAGES": 1000, "MAX_DATASET_ELEMENTS": 10**6, "MAX_IMAGE_PIXELS": 4096,
                       "MAX_INPUT_ELEMENTS": 3 * 64 * 64, **limits})


@pytest.mark.parametrize(("limits", "message"), [
    ({"MAX_DATASET_IMAGES": 3}, "the zip holds 4 images; the limit is MAX_DATASET_IMAGES = 3"),
    ({"MAX_DATASET_IMAGES": 1}, "the archive holds 5 entries (declared); the limit is 2 x MAX_DATASET_IMAGES"),
    ({"MAX_DATASET_ELEMENTS": 200}, ("the zip's 4 images of shape [1, 8, 8] holds 256 values; "
                                     "the limit is MAX_DATASET_ELEMENTS = 200")),
    ({"MAX_INPUT_ELEMENTS": 63}, "one image of shape [1, 8, 8] holds 64 values; the limit is MAX_INPUT_ELEMENTS = 63"),
    ({"MAX_IMAGE_PIXELS": 63}, "a/0.png (8 x 8) holds 64 pixels; the limit is MAX_IMAGE_PIXELS = 63"),
])
def test_zip_limits_are_checked_from_headers(tmp_path, limits, message):
    from backend.datasets import images_from_zip

    image = real_png(np.zeros((8, 8), np.uint8))
    path = tmp_path / "set.zip"
    path.write_bytes(zip_of({"a/0.png": image, "a/1.png": image, "b/0.png": image, "b/1.png": image,
                             "b/notes.txt": b"ignored"}))
    with pytest.raises(ValueError) as refused:
        images_from_zip(path, 10**6, small_settings(**limits))
    assert message in str(refused.value)
    assert images_from_zip(path, 10**6, small_settings())[0].shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="declare [0-9,]+ bytes uncompressed; the limit is 4 x MAX_UPLOAD_BYTES = 100"):
        images_from_zip(path, 100, small_settings())


def test_zip_members_that_could_expand_without_bound_or_are_not_images_are_refused(tmp_path):
    from backend.datasets import images_from_zip

    image = real_png(np.zeros((8, 8), np.uint8))
    blank = io.BytesIO()
    from PIL import Image

    Image.new("L", (2048, 2048)).save(blank, format="BMP")  # 4 MiB of zeros: deflates past 1000:1
    cases = {
        "bz2.zip": (zip_of({"a/0.png": image, "b/0.png": image}, zipfile.ZIP_BZIP2), "compression method 12"),
        "ratio.zip": (zip_of({"a/0.bmp": blank.getvalue(), "b/0.bmp": blank.getvalue()}), None),
        "eps.zip": (zip_of({"a/0.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "b/0.png": image}),
                    "a/0.png is not a readable image"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        if message is None:  # deflate stays under the ratio limit: the pixel limit refuses it instead
            with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS = 4,096"):
                images_from_zip(path, 10**8, small_settings())
            continue
        with pytest.raises(ValueError, match=message):
            images_from_zip(path, 10**8, small_settings())
