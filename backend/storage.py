"""Where uploaded files live: a directory (STORAGE_DIR) that API and workers share."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


def owner_folder(root: Path, kind: str, owner_id: int) -> Path:
    folder = root / kind / str(owner_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def new_path(root: Path, kind: str, owner_id: int, suffix: str) -> Path:
    return owner_folder(root, kind, owner_id) / f"{uuid.uuid4().hex}{suffix}"


def save_stream(stream: BinaryIO, dest: Path, limit: int) -> int:
    """Copy ``stream`` to ``dest`` in chunks; over ``limit`` bytes the partial file is removed and TooLarge raised."""
    size = 0
    try:
        with dest.open("wb") as sink:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit)
                sink.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size


def remove(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
