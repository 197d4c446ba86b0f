"""Where uploaded files live: a directory (STORAGE_DIR) that API and workers share."""

from __future__ import annotations

import re
import shutil
import unicodedata
import uuid
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK = 1 << 20
MAX_FILENAME_CHARS = 255
SUFFIX_CHARS = re.compile(r"[A-Za-z0-9.]*")


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


def safe_suffix(filename: str, limit: int = 16) -> str:
    """The suffix a stored copy of the upload ``filename`` takes (``.pt``, ``.safetensors``): its first ``limit``
    characters, or "" when the name's suffix holds anything but [A-Za-z0-9.].

    A name with a control character (NUL included) or longer than MAX_FILENAME_CHARS raises ValueError saying so.
    """
    if len(filename) > MAX_FILENAME_CHARS:
        raise ValueError(f"the file's name is {len(filename)} characters long; at most {MAX_FILENAME_CHARS} are allowed")
    for position, char in enumerate(filename):
        if unicodedata.category(char) == "Cc":  # C0 (NUL ... US), DEL and C1
            raise ValueError(f"the file's name holds a control character (U+{ord(char):04X} at position {position})")
    suffix = PurePosixPath(filename).suffix[:limit]
    return suffix if SUFFIX_CHARS.fullmatch(suffix) else ""


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
