"""The model process's wire: length-prefixed frames of a JSON header and raw tensor bytes.

Nothing on it is ever unpickled: the parent must be able to read what a compromised model process
sends without running it. A frame is ``!II`` (header length, payload length), the header as UTF-8
JSON, then the payload; the header's ``tensors`` list names each tensor's dtype, shape and place in
the payload. The reader caps both lengths before allocating anything.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

import numpy as np
import torch

_PREFIX = struct.Struct("!II")
# dtypes that may cross, by name; nothing else is accepted from the other side
DTYPES = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}
MAX_HEADER_BYTES = 1 << 20


class WireError(RuntimeError):
    """The other side sent something that is not a well-formed frame within the limits."""


class WireTimeout(TimeoutError):
    """No whole frame arrived before the deadline."""


class WireClosed(EOFError):
    """The other side closed its end (it exited or was killed)."""


def encode(header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    parts, specs, offset = [], [], 0
    for name, tensor in (tensors or {}).items():
        data = tensor.detach().cpu().contiguous()
        dtype = next(k for k, v in DTYPES.items() if v == data.dtype)
        raw = data.numpy().tobytes()
        specs.append({"name": name, "dtype": dtype, "shape": list(data.shape), "offset": offset, "nbytes": len(raw)})
        parts.append(raw)
        offset += len(raw)
    body = json.dumps({**header, "tensors": specs}, separators=(",", ":")).encode()
    payload = b"".join(parts)
    return _PREFIX.pack(len(body), len(payload)) + body + payload


def write_frame(fd: int, header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
    data = memoryview(encode(header, tensors))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise WireTimeout(f"no answer within the time allowed ({size - left} of {size} bytes came)")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise WireClosed("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _tensor(payload: bytes, spec: Any, max_elements: int) -> torch.Tensor:
    try:
        dtype = DTYPES[spec["dtype"]]
        shape = [int(v) for v in spec["shape"]]
        offset, nbytes = int(spec["offset"]), int(spec["nbytes"])
    except (KeyError, TypeError, ValueError) as error:
        raise WireError(f"malformed tensor spec: {error!r}") from None
    if min(shape, default=0) < 0 or int(np.prod(shape, dtype=np.int64)) > max_elements:
        raise WireError(f"tensor of shape {shape} is over the limit of {max_elements} elements")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize or offset < 0 or offset + nbytes > len(payload):
        raise WireError("a tensor's byte range does not match its shape or the payload")
    array = np.frombuffer(payload, dtype=str(dtype).removeprefix("torch."), count=nbytes // itemsize, offset=offset)
    return torch.from_numpy(array.copy()).reshape(shape)


def read_frame(fd: int, *, deadline: float | None = None, max_payload: int = 1 << 30,
               max_elements: int = 1 << 28) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The next frame's header and tensors; WireTimeout when ``deadline`` (monotonic) passes first."""
    header_len, payload_len = _PREFIX.unpack(_read_exactly(fd, _PREFIX.size, deadline))
    if header_len > MAX_HEADER_BYTES or payload_len > max_payload:
        raise WireError(f"frame of {header_len} + {payload_len} bytes is over the limit")
    try:
        header = json.loads(_read_exactly(fd, header_len, deadline))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(f"the header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    payload = _read_exactly(fd, payload_len, deadline) if payload_len else b""
    specs = header.pop("tensors", [])
    if not isinstance(specs, list):
        raise WireError("the header's tensors are not a list")
    return header, {str(spec.get("name")): _tensor(payload, spec, max_elements) for spec in specs
                    if isinstance(spec, dict)}


def readable(fd: int) -> bool:
    """Whether a frame (or the end of the channel) is waiting; never blocks."""
    return bool(select.select([fd], [], [], 0)[0])
