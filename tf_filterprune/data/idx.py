"""Reading IDX files, the format of the (Fashion-)MNIST distributions.

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, then
``ndim`` big-endian uint32 dimensions, then the array in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np

IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
"""IDX type codes (third magic byte) and their big-endian NumPy dtypes."""


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file into a NumPy array.

    Args:
        raw: the whole file content.
        source: a name for the data, used in error messages.

    Returns:
        A writable array in native byte order with the header's shape.

    Raises:
        ValueError: bad magic number, truncated header, or a payload whose
            size does not match the header's dimensions.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
        [7, 8, 9]
    """
    dtype_code, ndim = _parse_magic(raw, source)
    dims = _parse_dims(raw, ndim, source)
    dtype = np.dtype(IDX_DTYPES[dtype_code])
    offset = 4 + 4 * ndim
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(
            f"{source}: IDX payload has {len(raw) - offset} bytes but the header "
            f"announces shape {dims} of {dtype.name} ({expected} bytes)"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed when its name ends in ``.gz``.

    Args:
        path: the file.

    Returns:
        The array (see :func:`parse_idx`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid (gzip or IDX).

    Example:
        >>> import gzip, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte.gz")
        >>> with gzip.open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 2, 4, 5]))
        >>> read_idx(path).tolist()
        [4, 5]
    """
    path = os.fspath(path)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read the file ({err})") from err
    return parse_idx(raw, source=path)


def _parse_magic(raw: bytes, source: str) -> tuple[int, int]:
    """Returns the (type code, number of dimensions) of the magic number."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(
            f"{source}: not an IDX file (bad magic number 0x{raw[:4].hex()}; expected "
            f"00 00, a type code in {sorted(hex(c) for c in IDX_DTYPES)} and the rank)"
        )
    return raw[2], raw[3]


def _parse_dims(raw: bytes, ndim: int, source: str) -> tuple[int, ...]:
    """Returns the ``ndim`` big-endian uint32 dimensions after the magic number."""
    end = 4 + 4 * ndim
    if len(raw) < end:
        raise ValueError(f"{source}: truncated IDX header ({len(raw)} bytes for rank {ndim})")
    return struct.unpack(f">{ndim}I", raw[4:end])
