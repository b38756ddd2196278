"""Reads and writes IDX files, the array format of the MNIST family.

An IDX file is a 4-byte magic (0x00 0x00 <type code> <ndim>), ndim big-endian
uint32 dimensions, then the row-major big-endian payload. Files may be gzip
compressed; compression is detected from the gzip magic bytes, not the file
suffix, because mirrors are inconsistent about naming.
"""

import gzip
import math
import os
import struct
import zlib
from typing import BinaryIO

import numpy as np

from data_prep import errors

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 20

# IDX type code -> (name used in messages, big-endian dtype).
_TYPES = {
    0x08: ("ubyte", np.dtype(">u1")),
    0x09: ("sbyte", np.dtype(">i1")),
    0x0B: ("short", np.dtype(">i2")),
    0x0C: ("int", np.dtype(">i4")),
    0x0D: ("float", np.dtype(">f4")),
    0x0E: ("double", np.dtype(">f8")),
}
_CODE_BY_DTYPE = {dtype.newbyteorder("="): code
                  for code, (_, dtype) in _TYPES.items()}

# Errors the gzip module raises for a corrupt or truncated stream.
_GZIP_ERRORS = (gzip.BadGzipFile, zlib.error, EOFError)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzip compressed or not) into a native-endian array.

  Args:
    path: the file to read.

  Returns:
    An array with the file's dimensions and the dtype of its type code, in
    native byte order.

  Raises:
    DataPrepError: the file cannot be opened.
    DataFormatError: bad magic, unknown type code, truncated header, payload
      shorter or longer than the header declares, or a corrupt gzip stream.
  """
  compressed = _is_gzip(path)
  opener = gzip.open if compressed else open
  where = "decompressed stream" if compressed else "file"
  try:
    with opener(path, "rb") as stream:
      return _read_stream(stream, path, where)
  except _GZIP_ERRORS as e:
    raise errors.DataFormatError(
        f"idx file {path} is not a valid gzip stream ({e}); it is corrupt "
        "or truncated, re-download or regenerate it") from e


def write_idx(path: str, array: np.ndarray, compress: bool = True) -> None:
  """Writes `array` as an IDX file, gzip compressed unless `compress=False`.

  Args:
    path: destination file; overwritten if it exists.
    array: array of uint8, int8, int16, int32, float32 or float64 with
      1 to 255 dimensions.
    compress: whether to gzip the output.

  Raises:
    ValueError: the dtype or rank cannot be represented in IDX.
  """
  array = np.asarray(array)
  code = _CODE_BY_DTYPE.get(array.dtype.newbyteorder("="))
  if code is None:
    raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of "
                     f"{sorted(str(d) for d in _CODE_BY_DTYPE)}")
  if not 1 <= array.ndim <= 255:
    raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
  header = bytes([0, 0, code, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape)
  payload = np.ascontiguousarray(array, dtype=_TYPES[code][1])
  if compress:
    # mtime=0 keeps the output byte-identical across runs.
    stream = gzip.GzipFile(path, "wb", compresslevel=6, mtime=0)
  else:
    stream = open(path, "wb")
  with stream:
    stream.write(header)
    stream.write(memoryview(payload.reshape(-1)).cast("B"))


def _is_gzip(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      return f.read(2) == _GZIP_MAGIC
  except OSError as e:
    raise errors.DataPrepError(
        f"cannot open idx file {path} ({e.strerror}); check that the path "
        "exists and is readable") from e


def _read_stream(stream: BinaryIO, path: str, where: str) -> np.ndarray:
  """Parses an open IDX byte stream; `where` describes offsets in errors."""
  magic = stream.read(4)
  if len(magic) < 4 or magic[:2] != b"\0\0":
    raise errors.DataFormatError(
        f"idx file {path} has bad magic {magic.hex() or '(empty)'} at byte "
        "0; expected 0000 + type code + ndim; the file is not IDX or is "
        "corrupt, re-download or regenerate it")
  if magic[2] not in _TYPES:
    raise errors.DataFormatError(
        f"idx file {path} has unknown type code 0x{magic[2]:02x} at byte 2;"
        " expected one of 08 09 0b 0c 0d 0e; the file is corrupt, "
        "re-download or regenerate it")
  type_name, dtype = _TYPES[magic[2]]
  ndim = magic[3]
  if ndim == 0:
    raise errors.DataFormatError(
        f"idx file {path} declares 0 dimensions at byte 3; the file is "
        "corrupt, re-download or regenerate it")
  raw_dims = stream.read(4 * ndim)
  if len(raw_dims) < 4 * ndim:
    raise errors.DataFormatError(
        f"idx file {path} is truncated in its header: expected "
        f"{4 + 4 * ndim} header bytes, the {where} holds "
        f"{4 + len(raw_dims)}; re-download or regenerate it")
  dims = struct.unpack(f">{ndim}I", raw_dims)
  header_bytes = 4 + 4 * ndim
  expected = math.prod(dims) * dtype.itemsize
  declared = (f"header declares {ndim}-d {type_name} array {dims} = "
              f"{expected} payload bytes")

  if where == "file":
    # Raw files: compare against the size up front, so a corrupt header
    # cannot make us allocate an absurd buffer.
    actual = os.fstat(stream.fileno()).st_size - header_bytes
    if actual != expected:
      _raise_size_mismatch(path, where, declared, expected, actual,
                           header_bytes)
  try:
    payload = np.empty(expected, np.uint8)
  except (MemoryError, ValueError) as e:
    raise errors.DataFormatError(
        f"idx file {path}: {declared}, more than can be allocated; the "
        "header is corrupt, re-download or regenerate it") from e

  view = memoryview(payload)
  filled = 0
  while filled < expected:
    n = stream.readinto(view[filled:filled + _CHUNK_BYTES])
    if not n:
      _raise_size_mismatch(path, where, declared, expected, filled,
                           header_bytes)
    filled += n
  extra = _count_remaining(stream)
  if extra:
    _raise_size_mismatch(path, where, declared, expected, expected + extra,
                         header_bytes)
  array = payload.view(dtype).reshape(dims)
  return array.astype(dtype.newbyteorder("="), copy=False)


def _count_remaining(stream: BinaryIO) -> int:
  # Reading to EOF also makes gzip verify its CRC and length trailer.
  total = 0
  while chunk := stream.read(_CHUNK_BYTES):
    total += len(chunk)
  return total


def _raise_size_mismatch(path: str, where: str, declared: str, expected: int,
                         actual: int, header_bytes: int) -> None:
  problem = "is truncated" if actual < expected else "is oversize"
  raise errors.DataFormatError(
      f"idx file {path} {problem}: {declared}, the {where} holds {actual} "
      f"payload bytes (payload starts at byte {header_bytes}, mismatch from "
      f"byte {header_bytes + min(actual, expected)}); re-download or "
      "regenerate it")
