"""numpy ↔ pyarrow arrays through their buffers, without loading pandas.

``pa.array(...)`` and ``Array.to_numpy()`` look pandas up on their first call when it is
installed (pyarrow's lazy pandas shim), which costs the batch scorer a second of
start-up and breaks the rule that it never imports pandas. These helpers build and read
the few kinds of arrays it needs from and into their buffers directly; they copy
nothing that need not be copied.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

_TYPES = {np.dtype(np.float64): pa.float64(), np.dtype(np.int32): pa.int32(),
          np.dtype(np.int64): pa.int64()}


def from_numpy(values: np.ndarray) -> pa.Array:
    """A float64, int32 or int64 arrow array over a numpy array's memory (no nulls)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(_TYPES[values.dtype], len(values),
                                 [None, pa.py_buffer(values)])


def to_numpy(array: pa.Array, dtype: type, fill: float | int = 0) -> np.ndarray:
    """The values of a fixed-width arrow array of numpy type ``dtype``, nulls as ``fill``."""
    validity, data = array.buffers()[:2]
    n, offset = len(array), array.offset
    if data is None:  # an array of nulls only
        return np.full(n, fill, dtype=dtype)
    values = np.frombuffer(data, dtype=dtype, count=offset + n)[offset:]
    if array.null_count:
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        values = np.where(bits[offset:offset + n].astype(bool), values, fill).astype(dtype)
    return values


def strings(items: list[str]) -> pa.Array:
    """A string array of ``items``."""
    data = [item.encode("utf-8") for item in items]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
