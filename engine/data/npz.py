"""Reading .npz archives (and other zips) without trusting them: limits are checked before anything expands.

An .npz is a zip of .npy members. A tiny archive can declare (or really hold, compressed) billions of values,
so ``SafeNpz`` decides from what the archive declares before it decompresses any data:

- the zip's central directory is walked by hand (``scan_zip``): its entry count and name lengths are capped
  before ``zipfile`` builds one object per entry;
- each member must be stored or deflated (what numpy writes; deflate cannot expand more than 1032:1), and
  its declared expansion ratio is capped;
- each .npy header (``numpy.lib.format``: magic, then shape, dtype and order) is read from the first bytes
  of its member; dtypes that are not plain numbers (objects, strings, records) are refused, the number of
  values is capped, and the member's declared size must be exactly the header plus shape x itemsize.

Only then are arrays read, in chunks (``iter_chunks``, ``read_into``), so a caller converts them into its own
output array without ever holding the raw array beside it. Each limit is a ``Limit``: its value and the name
that the refusal quotes, e.g. ``x holds 2,000,000,000 values; the limit is MAX_DATASET_ELEMENTS =
1,000,000,000``. Refusals are ``LimitExceeded`` (a ValueError); malformed archives raise ValueError.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np
from numpy.lib import format as npy_format

MAX_MEMBERS = 64  # arrays (and any other entries) in one .npz
MAX_NAME_BYTES = 1024  # one entry's name, in bytes
MAX_COMPRESSION_RATIO = 1100  # declared size / compressed size; deflate's ceiling is about 1032
RATIO_FLOOR_BYTES = 1 << 20  # members that expand to less than this are never refused for their ratio
CHUNK_BYTES = 4 << 20  # raw bytes decompressed per chunk
NUMBER_KINDS = "biuf"  # bool, signed and unsigned integers, floats
COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}

_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")


class LimitExceeded(ValueError):
    """An archive declares more than a limit allows; the message names the limit and its value."""


class Limit(NamedTuple):
    value: int
    name: str

    def check(self, what: str, amount: int, unit: str = "values") -> None:
        if amount > self.value:
            raise LimitExceeded(f"{what} holds {amount:,} {unit}; the limit is {self.name} = {self.value:,}")


@dataclass(frozen=True)
class NpzLimits:
    """Caps for one archive. None: unbounded (the command line reads the user's own files)."""

    elements: Limit | None = None  # values in any one array (for a dataset's x: N x C x H x W)
    images: Limit | None = None  # N, the first axis of a dataset's x
    input_elements: Limit | None = None  # C x H x W, one input of a dataset's x
    members: Limit = field(default_factory=lambda: Limit(MAX_MEMBERS, "engine.data.npz.MAX_MEMBERS"))
    max_name_bytes: int = MAX_NAME_BYTES
    max_ratio: float = MAX_COMPRESSION_RATIO
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES


class ArrayHeader(NamedTuple):
    name: str  # the member's name without .npy
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    info: zipfile.ZipInfo
    offset: int  # bytes of magic and header before the data, inside the member

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _find_end(f, size: int) -> tuple[int, int, int]:
    """(declared entries, central directory size, its start) from the end-of-central-directory records."""
    tail_length = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_length)
    tail = f.read(tail_length)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise ValueError("not a zip archive (no end of central directory record)")
    _, _, _, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    end = size - tail_length + at  # where the directory (or a zip64 end record) stops
    if at >= _ZIP64_LOCATOR.size and tail[at - _ZIP64_LOCATOR.size:at].startswith(b"PK\x06\x07"):
        end = size - tail_length + at - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
        f.seek(max(end, 0))
        raw = f.read(_ZIP64_EOCD.size)
        if end < 0 or len(raw) < _ZIP64_EOCD.size or not raw.startswith(b"PK\x06\x06"):
            raise ValueError("malformed zip64 end of central directory")
        fields = _ZIP64_EOCD.unpack(raw)
        entries, cd_size = fields[7], fields[8]
    start = end - cd_size
    if start < 0:
        raise ValueError("malformed zip: the central directory would start before the file")
    return entries, cd_size, start


def scan_zip(path: str | Path, entries: Limit, max_name_bytes: int = MAX_NAME_BYTES) -> int:
    """Count a zip's entries by walking its central directory, refusing more than ``entries`` or a name
    longer than ``max_name_bytes``, before ``zipfile`` builds an object per entry. Returns the count."""
    path = Path(path)
    with path.open("rb") as f:
        size = f.seek(0, 2)
        declared, cd_size, start = _find_end(f, size)
        entries.check("the archive", declared, "entries (declared)")
        f.seek(start)
        count = walked = 0
        while walked < cd_size:
            raw = f.read(_CENTRAL.size)
            if len(raw) < _CENTRAL.size or not raw.startswith(b"PK\x01\x02"):
                break  # zipfile will say what is wrong with the rest
            fields = _CENTRAL.unpack(raw)
            name_length, extra_length, comment_length = fields[12], fields[13], fields[14]
            count += 1
            entries.check("the archive", count, "entries")
            if name_length > max_name_bytes:
                raise LimitExceeded(f"entry {count} of the archive has a name of {name_length:,} bytes; "
                                    f"the limit is {max_name_bytes:,}")
            f.seek(name_length + extra_length + comment_length, 1)
            walked += _CENTRAL.size + name_length + extra_length + comment_length
    return count


def check_member(info: zipfile.ZipInfo, limits: NpzLimits) -> None:
    """Refuse a member whose compression could expand without bound or whose declared ratio is absurd."""
    if info.compress_type not in COMPRESSIONS:
        raise ValueError(f"{info.filename} uses zip compression method {info.compress_type}; only stored or "
                         "deflated members are read (as numpy and common zip tools write them)")
    if info.flag_bits & 0x1:
        raise ValueError(f"{info.filename} is encrypted")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
        raise LimitExceeded(f"{info.filename} declares {info.file_size:,} bytes from {info.compress_size:,} "
                            f"compressed (ratio {ratio:,.0f}:1); the limit is a ratio of {limits.max_ratio:,.0f}:1")


def read_exact(stream, n: int, what: str) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(min(n - got, CHUNK_BYTES))
        if not part:
            raise ValueError(f"{what} ends after {got:,} of its {n:,} bytes of data")
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class SafeNpz:
    """An .npz opened under ``limits``: every member's header is read and checked on opening.

    ``headers`` maps each array's name (member name without .npy) to its ``ArrayHeader``; entries that are not
    .npy files are counted, checked for their compression, and otherwise ignored (as np.load would).
    """

    def __init__(self, path: str | Path, limits: NpzLimits | None = None) -> None:
        self.path, self.limits = Path(path), limits or NpzLimits()
        if not self.path.is_file():
            raise FileNotFoundError(f"no dataset file at {self.path}")
        scan_zip(self.path, self.limits.members, self.limits.max_name_bytes)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{self.path.name} is not a valid .npz (zip) archive: {error}") from None
        try:
            self.headers = {}
            for info in self.zip.infolist():
                check_member(info, self.limits)
                if info.filename.endswith(".npy") and not info.is_dir():
                    header = self._read_header(info)
                    self.headers[header.name] = header
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.zip.close()

    def _read_header(self, info: zipfile.ZipInfo) -> ArrayHeader:
        name = info.filename[:-len(".npy")]
        try:
            with self.zip.open(info) as stream:
                version = npy_format.read_magic(stream)
                if version == (1, 0):
                    shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
                elif version in ((2, 0), (3, 0)):  # 3.0 differs only in the header's text encoding
                    shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
                else:
                    raise ValueError(f"unknown .npy format version {version}")
                offset = stream.tell()
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{name}: not a readable .npy array ({error})") from None
        if dtype.hasobject:
            raise ValueError(f"{name} holds Python objects (dtype {dtype}), which would need pickle; "
                             "store numbers (uint8 pixels or floats in [0, 1], integer labels)")
        if dtype.kind not in NUMBER_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"{name} has dtype {dtype}; only plain numbers (bool, integers, floats) are read")
        header = ArrayHeader(name, tuple(int(s) for s in shape), dtype, bool(fortran_order), info, offset)
        if self.limits.elements is not None:
            self.limits.elements.check(name, header.size)
        expected = offset + header.size * dtype.itemsize
        if info.file_size != expected:
            raise ValueError(f"{name} declares shape {header.shape} of {dtype} ({expected - offset:,} bytes of "
                             f"data) but its archive member holds {info.file_size - offset:,} bytes")
        return header

    def iter_chunks(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
        """Array ``name`` in consecutive chunks along the first axis of its layout on disk: (rows, chunk).

        On disk a C-order array is rows of its first axis; a Fortran-order one is rows of its transpose, so
        ``rows`` index ``a`` or ``a.T`` accordingly (``read_into`` does this). Chunks are read-only views of
        about ``chunk_bytes``; a chunk is at least one row. The member must end exactly after its data.
        """
        header = self.headers[name]
        disk = header.shape[::-1] if header.fortran_order else header.shape
        row_count, row_shape = (disk[0], disk[1:]) if disk else (1, ())
        row_bytes = math.prod(row_shape) * header.dtype.itemsize
        step = max(1, chunk_bytes // max(row_bytes, 1))
        try:
            with self.zip.open(header.info) as stream:
                read_exact(stream, header.offset, name)
                for start in range(0, row_count, step):
                    rows = min(step, row_count - start)
                    data = read_exact(stream, rows * row_bytes, name)
                    chunk = np.frombuffer(data, dtype=header.dtype).reshape((rows, *row_shape) if disk else ())
                    yield (slice(start, start + rows) if disk else ...), chunk
                if stream.read(1):  # also makes zipfile check the member's CRC
                    raise ValueError(f"{name} holds more data than its header declares")
        except (EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{name}: corrupt archive member ({error})") from None

    def read_into(self, name: str, dest: np.ndarray, convert: Callable[[np.ndarray], np.ndarray] | None = None,
                  chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
        """Fill ``dest`` (any dtype; shape the array's, may be a strided view) chunk by chunk, through
        ``convert`` when given (it may check values too); returns ``dest``."""
        header = self.headers[name]
        if dest.shape != header.shape:
            raise ValueError(f"{name}: destination shape {dest.shape} is not the array's {header.shape}")
        target = dest.T if header.fortran_order else dest
        for rows, chunk in self.iter_chunks(name, chunk_bytes):
            target[rows] = chunk if convert is None else convert(chunk)
        return dest

    def read(self, name: str) -> np.ndarray:
        """A whole array in native byte order (for small arrays such as labels; its size is capped)."""
        header = self.headers[name]
        return self.read_into(name, np.empty(header.shape, dtype=header.dtype.newbyteorder("=")))

    def memmap(self, name: str) -> np.ndarray | None:
        """A read-only memory map of a stored (uncompressed), C-order member; None when it is not one."""
        header = self.headers[name]
        if header.info.compress_type != zipfile.ZIP_STORED or header.fortran_order or header.size == 0:
            return None
        with self.path.open("rb") as f:
            f.seek(header.info.header_offset)
            raw = f.read(_LOCAL.size)
        if len(raw) < _LOCAL.size or not raw.startswith(b"PK\x03\x04"):
            return None
        fields = _LOCAL.unpack(raw)
        start = header.info.header_offset + _LOCAL.size + fields[10] + fields[11] + header.offset
        return np.memmap(self.path, dtype=header.dtype, mode="r", offset=start, shape=header.shape)
