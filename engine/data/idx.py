"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file: magic 0x0000, a type code, the rank, big-endian int32 sizes, data."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    rank = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=rank, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * rank
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} but holds {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
