"""Datasets a job can name: the engine's built-ins, and uploads stored as validated .npz files."""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
from sqlmodel import Session

from backend.core.config import get_settings
from backend.crud import get_owned
from backend.models import Dataset, DatasetPublic, Owner
from engine.data import ImageDataset, load_dataset, load_npz
from engine.data.datasets import FASHION_MNIST_ROOT, load_cifar10, validate_images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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


def builtin_datasets(split: str = "test") -> list[DatasetPublic]:
    return [describe(name, load_builtin(name, split), id=name, builtin=True) for name in builtin_names()]


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


def load_for_job(found: Dataset | str, split: str) -> ImageDataset:
    return load_builtin(found, split) if isinstance(found, str) else load_npz(found.path)


def images_from_zip(archive: zipfile.ZipFile, max_bytes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A zip of class-named folders of images -> (x uint8 (N, H, W) or (N, H, W, 3), y, class names).

    Classes are the folder names in sorted order. Every image must have the same size; images are grey
    unless some image has colour.
    """
    from PIL import Image

    members = [m for m in archive.infolist() if not m.is_dir()
               and PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES
               and not any(p.startswith(("__MACOSX", ".")) for p in PurePosixPath(m.filename).parts)]
    if not members:
        raise ValueError("the zip holds no images (expected class-named folders of .png/.jpg files)")
    if sum(m.file_size for m in members) > max_bytes:
        raise ValueError(f"the images in the zip expand beyond {max_bytes} bytes")
    classes = sorted({PurePosixPath(m.filename).parent.name for m in members})
    if "" in classes:
        raise ValueError("images must sit in class-named folders, e.g. cat/001.png")
    if len(classes) < 2:
        raise ValueError(f"need at least two class folders, found {classes}")
    images = []
    for m in members:
        with Image.open(io.BytesIO(archive.read(m))) as image:
            images.append(image.convert("RGB") if image.mode not in ("L", "1", "I;16") else image.convert("L"))
    colour = any(image.mode == "RGB" for image in images)
    arrays = [np.asarray(image.convert("RGB") if colour else image) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all images must have the same size; found {sorted(shapes)[:4]}")
    labels = [classes.index(PurePosixPath(m.filename).parent.name) for m in members]
    return np.stack(arrays), np.asarray(labels, dtype=np.int64), classes


def ingest_upload(source: Path, filename: str, dest: Path, max_bytes: int) -> tuple[ImageDataset, list[str] | None]:
    """Validate an uploaded .npz (x, y) or zip of class folders and write it to ``dest`` as a clean .npz."""
    suffix = PurePosixPath(filename).suffix.lower()
    class_names = None
    if suffix == ".npz":
        data = load_npz(source)
    elif suffix == ".zip":
        if not zipfile.is_zipfile(source):
            raise ValueError(f"{filename} is not a zip archive")
        with zipfile.ZipFile(source) as archive:
            x, y, class_names = images_from_zip(archive, max_bytes)
        data = validate_images(x, y, filename)
    else:
        raise ValueError(f"upload an .npz with arrays x and y, or a .zip of class-named image folders; "
                         f"got {filename!r}")
    if len(data.x) == 0:
        raise ValueError(f"{filename} holds no images")
    np.savez(dest, x=data.x.numpy(), y=data.y.numpy())
    return data, class_names

