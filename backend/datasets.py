"""Datasets a job can name: the engine's built-ins, and uploads stored as validated .npz files."""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from sqlmodel import Session

from backend.core.config import Settings, get_settings
from backend.crud import get_owned
from backend.models import Dataset, DatasetPublic, Owner
from engine.data import ImageDataset, load_dataset
from engine.data.datasets import FASHION_MNIST_ROOT, load_cifar10, load_stored, read_npz
from engine.data.npz import Limit, LimitExceeded, NpzLimits, check_member, scan_zip

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # what PIL may open them as: no others
GREY_MODES = ("L", "1", "I;16")


def builtin_names() -> list[str]:
    names = ["digits"]
    if FASHION_MNIST_ROOT.is_dir():
        names.append("fashion_mnist")
    cifar = get_settings().CIFAR10_DIR
    if cifar is not None and cifar.is_dir():
        names.append("cifar10")
    return names


@lru_cache(maxsize=8)
def load_builtin(name: str, split: str) -> ImageDataset:
    if name == "cifar10":
        return load_cifar10(split, root=get_settings().CIFAR10_DIR)
    return load_dataset(name, split=split)


def describe(name: str, data: ImageDataset, *, id: str, builtin: bool,
             class_names: list[str] | None = None) -> DatasetPublic:
    return DatasetPublic(id=id, name=name, builtin=builtin, size=len(data.x), input_shape=list(data.x.shape[1:]),
                         num_classes=data.num_classes, class_names=class_names)


# the built-ins' label names, so that results read "Sneaker" rather than 7
BUILTIN_CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def builtin_datasets(split: str = "test") -> list[DatasetPublic]:
    return [describe(name, load_builtin(name, split), id=name, builtin=True, class_names=BUILTIN_CLASS_NAMES.get(name))
            for name in builtin_names()]


def dataset_public(row: Dataset) -> DatasetPublic:
    return DatasetPublic(id=str(row.id), name=row.name, builtin=False, size=row.size, input_shape=row.input_shape,
                         num_classes=row.num_classes, class_names=row.class_names)


def find_dataset(*, session: Session, ref: str, owner: Owner) -> Dataset | str | None:
    """A built-in's name, the owner's uploaded Dataset row, or None."""
    if ref in builtin_names():
        return ref
    if ref.isdigit():
        return get_owned(session=session, table=Dataset, id=int(ref), owner=owner)
    return None


def npz_limits(settings: Settings | None = None) -> NpzLimits:
    """The settings' caps on an uploaded or stored .npz, named as the settings are in refusals."""
    s = settings or get_settings()
    return NpzLimits(elements=Limit(s.MAX_DATASET_ELEMENTS, "MAX_DATASET_ELEMENTS"),
                     images=Limit(s.MAX_DATASET_IMAGES, "MAX_DATASET_IMAGES"),
                     input_elements=Limit(s.MAX_INPUT_ELEMENTS, "MAX_INPUT_ELEMENTS"))


def load_upload_file(path: str | Path) -> ImageDataset:
    """A stored upload: x memory-mapped and converted to float32 [0, 1] per index (``load_stored``)."""
    return load_stored(path, npz_limits())


def load_for_job(found: Dataset | str, split: str) -> ImageDataset:
    return load_builtin(found, split) if isinstance(found, str) else load_upload_file(found.path)


class Ingested(NamedTuple):
    size: int
    input_shape: list[int]
    num_classes: int
    class_names: list[str] | None


def image_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [m for m in archive.infolist() if not m.is_dir()
            and PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES
            and not any(p.startswith(("__MACOSX", ".")) for p in PurePosixPath(m.filename).parts)]


def _image_header(archive: zipfile.ZipFile, member: zipfile.ZipInfo, max_pixels: Limit) -> tuple[int, int, str]:
    """(width, height, mode) from an image's header alone; its pixels are not decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with archive.open(member) as stream, Image.open(stream, formats=IMAGE_FORMATS) as image:
            width, height = image.size
            mode = image.mode
    except Image.DecompressionBombError as error:  # PIL's own ceiling (2 x Image.MAX_IMAGE_PIXELS)
        found = re.search(r"\((\d+) pixels\)", str(error))
        if found is None or int(found.group(1)) <= max_pixels.value:  # only if MAX_IMAGE_PIXELS is set above it
            raise LimitExceeded(f"{member.filename}: {error}") from None
        raise LimitExceeded(f"{member.filename} declares {int(found.group(1)):,} pixels; the limit is "
                            f"{max_pixels.name} = {max_pixels.value:,}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, zlib.error) as error:
        raise ValueError(f"{member.filename} is not a readable image ({error})") from None
    max_pixels.check(f"{member.filename} ({width:,} x {height:,})", width * height, "pixels")
    return width, height, mode


def _decode(archive: zipfile.ZipFile, member: zipfile.ZipInfo, colour: bool, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with archive.open(member) as stream:
        data = stream.read(member.file_size + 1)  # zipfile stops at the declared size; this is the cap
    if len(data) > member.file_size:
        raise ValueError(f"{member.filename} holds more bytes than the archive declares")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.size != size:
                raise ValueError(f"{member.filename} changed size between reads")
            image = image.convert("L") if image.mode in GREY_MODES else image.convert("RGB")
            if colour and image.mode == "L":
                image = image.convert("RGB")
            pixels = np.asarray(image)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{member.filename}: {error}") from None
    except (OSError, SyntaxError, EOFError, zlib.error) as error:
        raise ValueError(f"{member.filename} is not a readable image ({error})") from None
    return pixels.transpose(2, 0, 1) if colour else pixels[None]


def images_from_zip(source: Path, max_bytes: int, settings: Settings | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A zip of class-named folders of images -> (x uint8 (N, C, H, W), y int64, class names).

    Classes are the folder names in sorted order. Every image must have the same size; images are grey
    (C = 1) unless some image has colour (C = 3). Nothing is decoded before the archive passes its limits:
    entries are counted from the zip's directory (at most 2 x MAX_DATASET_IMAGES, images and folders), images
    against MAX_DATASET_IMAGES, members must be stored or deflated with a sane declared ratio, their declared
    sizes add up to at most ``max_bytes``, each image's width x height is read from its header and held to
    MAX_IMAGE_PIXELS, and N x C x H x W to MAX_DATASET_ELEMENTS (C x H x W to MAX_INPUT_ELEMENTS). Then each
    image is read (at most its declared bytes) and decoded straight into the uint8 output.
    """
    s = settings or get_settings()
    limits = npz_limits(s)
    scan_zip(source, Limit(2 * s.MAX_DATASET_IMAGES, "2 x MAX_DATASET_IMAGES (images and their folders)"))
    with zipfile.ZipFile(source) as archive:
        members = image_members(archive)
        if not members:
            raise ValueError("the zip holds no images (expected class-named folders of .png/.jpg files)")
        Limit(s.MAX_DATASET_IMAGES, "MAX_DATASET_IMAGES").check("the zip", len(members), "images")
        for member in members:
            check_member(member, limits)
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise LimitExceeded(f"the images in the zip declare {declared:,} bytes uncompressed; the limit is "
                                f"4 x MAX_UPLOAD_BYTES = {max_bytes:,}")
        classes = sorted({PurePosixPath(m.filename).parent.name for m in members})
        if "" in classes:
            raise ValueError("images must sit in class-named folders, e.g. cat/001.png")
        if len(classes) < 2:
            raise ValueError(f"need at least two class folders, found {classes}")
        max_pixels = Limit(s.MAX_IMAGE_PIXELS, "MAX_IMAGE_PIXELS")
        headers = [_image_header(archive, m, max_pixels) for m in members]
        sizes = {(width, height) for width, height, _ in headers}
        if len(sizes) != 1:
            raise ValueError(f"all images must have the same size; found {sorted((h, w) for w, h in sizes)[:4]}")
        (width, height), = sizes
        colour = any(mode not in GREY_MODES for _, _, mode in headers)
        channels = 3 if colour else 1
        limits.input_elements.check(f"one image of shape {[channels, height, width]}", channels * height * width)
        limits.elements.check(f"the zip's {len(members):,} images of shape {[channels, height, width]}",
                              len(members) * channels * height * width)
        x = np.empty((len(members), channels, height, width), dtype=np.uint8)
        for i, member in enumerate(members):
            x[i] = _decode(archive, member, colour, (width, height))
    labels = [classes.index(PurePosixPath(m.filename).parent.name) for m in members]
    return x, np.asarray(labels, dtype=np.int64), classes


def ingest_upload(source: Path, filename: str, dest: Path, max_bytes: int) -> Ingested:
    """Validate an uploaded .npz (x, y) or zip of class folders and write it to ``dest`` as a clean .npz.

    Every limit is checked from headers before anything expands (``engine.data.npz``; ``images_from_zip``).
    The clean .npz holds x (N, C, H, W) and y int64, uncompressed so that loaders memory-map x: x is uint8 for
    a zip of images, for an .npz whose x is uint8, and for an .npz whose float x is exactly k / 255 everywhere
    in float32 (so it loads as the very same values); any other float x is kept as float32 (its values rounded
    to float32, as loading always did), within MAX_DATASET_ELEMENTS. Values are never changed otherwise.
    """
    suffix = PurePosixPath(filename).suffix.lower()
    class_names = None
    if suffix == ".npz":
        x, y = read_npz(source, npz_limits(), store=True)
    elif suffix == ".zip":
        if not zipfile.is_zipfile(source):
            raise ValueError(f"{filename} is not a zip archive")
        x, y, class_names = images_from_zip(source, max_bytes)
    else:
        raise ValueError(f"upload an .npz with arrays x and y, or a .zip of class-named image folders; "
                         f"got {filename!r}")
    if len(x) == 0:
        raise ValueError(f"{filename} holds no images")
    np.savez(dest, x=x, y=y)
    return Ingested(size=len(x), input_shape=list(x.shape[1:]), num_classes=int(y.max()) + 1,
                    class_names=class_names)
