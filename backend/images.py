"""Dataset inputs as PNG thumbnails for the dashboard (GET .../images/{index})."""

from __future__ import annotations

import io
from functools import lru_cache

import torch

from backend.datasets import load_builtin, load_upload_file
from backend.models import Dataset
from engine.data import ImageDataset

THUMBNAIL_PX = 64


@lru_cache(maxsize=8)
def load_upload(id: int, path: str) -> ImageDataset:
    """An upload's arrays, kept in-process per dataset (its path is unique, so a reused id cannot go stale);
    x stays memory-mapped as stored and each image is converted when it is asked for."""
    return load_upload_file(path)


def load_cached(found: Dataset | str, split: str) -> ImageDataset:
    """A built-in's split or an upload, loaded once per process."""
    return load_builtin(found, split) if isinstance(found, str) else load_upload(found.id, found.path)


def image_png(data: ImageDataset, index: int, min_px: int = THUMBNAIL_PX) -> bytes:
    """Input ``index`` (values in [0, 1], shape (C, H, W), C 1 or 3) as a grey or RGB PNG.

    Images smaller than ``min_px`` grow by a whole factor with nearest-neighbour, so an 8x8 digit becomes
    64x64 with sharp pixels. Raises IndexError outside the dataset.
    """
    from PIL import Image

    if not 0 <= index < len(data.x):
        raise IndexError(f"input {index} is outside the dataset (size {len(data.x)})")
    pixels = (data.x[index].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    factor = max(1, min_px // max(image.size))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
