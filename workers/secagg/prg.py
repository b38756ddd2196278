"""Mask expansion and packing of vectors in Z_{2^b}, vectorised with numpy.

A mask is the ChaCha20 keystream (RFC 8439; OpenSSL's, through
`cryptography`) of a 32-byte key with a zero nonce, read as little-endian
uint64 words and reduced mod 2^b by keeping the low b bits: exactly uniform
for every b <= 64, since 2^b divides 2^64. Every key is used for one vector
only (keys are derived per round, per pair; see `crypto`), so a zero nonce
never repeats a keystream.

Sums accumulate in uint64 with numpy's wrap-around (arithmetic mod 2^64) and
are reduced mod 2^b once at the end, which is the same as reducing at every
step. Nothing here loops over elements in Python.

`pack` stores b-bit values back to back (d * b bits, rounded up to bytes), so
an upload costs what the field elements are worth and no more.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms

MAX_BITS = 62  # Masked values stay int64-safe in TensorFlow: x + m < 2^63.
# The 32-bit block counter covers 2^32 blocks of 64 bytes = 2^35 words.
MAX_LENGTH = 1 << 34


def check_bits(bits: int) -> int:
  if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
    raise ValueError(f'bits must be in [1, {MAX_BITS}], got {bits!r}')
  return bits


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
  """values mod 2^bits, in place."""
  values &= np.uint64((1 << bits) - 1)
  return values


def keystream_words(key: bytes, length: int) -> np.ndarray:
  """The first `length` uint64 words of ChaCha20(key, nonce 0, counter 0)."""
  if len(key) != 32:
    raise ValueError('ChaCha20 needs a 32-byte key')
  if not 0 <= length <= MAX_LENGTH:
    raise ValueError(f'length {length} out of range')
  out = np.empty(length, np.dtype('<u8'))
  zeros = np.zeros(length, np.uint64)
  # cryptography's 16-byte ChaCha20 nonce is the 32-bit block counter (LE)
  # followed by RFC 8439's 96-bit nonce.
  encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None
                     ).encryptor()
  if length:
    encryptor.update_into(memoryview(zeros).cast('B'),
                          memoryview(out).cast('B'))
  encryptor.finalize()
  return out.astype(np.uint64, copy=False)


def expand(key: bytes, length: int, bits: int) -> np.ndarray:
  """A uniform vector in Z_{2^bits}^length from `key`."""
  return reduce(keystream_words(key, length), check_bits(bits))


def add_stream(acc: np.ndarray, key: bytes, sign: int) -> None:
  """acc += sign * PRG(key) mod 2^64, in place (reduce mod 2^b at the end)."""
  words = keystream_words(key, acc.shape[0])
  if sign > 0:
    acc += words
  else:
    acc -= words


def pack(values: np.ndarray, bits: int) -> bytes:
  """b-bit little-endian bit packing of values < 2^bits (d*b/8 bytes)."""
  check_bits(bits)
  values = np.ascontiguousarray(values, dtype=np.uint64)
  if values.ndim != 1:
    raise ValueError('pack takes a vector')
  if values.size and int(values.max()) >> bits:
    raise ValueError(f'a value does not fit in {bits} bits')
  length = values.shape[0]
  num_bytes = (length * bits + 7) // 8
  if bits in (8, 16, 32):
    return values.astype(f'<u{bits // 8}').tobytes()
  # Groups of 64 values fill exactly `bits` words; loop over the 64 lanes
  # (vectorised over groups), never over elements.
  groups = (length + 63) // 64
  lanes = np.zeros((groups, 64), np.uint64)
  lanes.reshape(-1)[:length] = values
  words = np.zeros((groups, bits + 1), np.uint64)
  for i in range(64):
    offset = i * bits
    word, shift = divmod(offset, 64)
    words[:, word] |= lanes[:, i] << np.uint64(shift)
    if shift + bits > 64:
      words[:, word + 1] |= lanes[:, i] >> np.uint64(64 - shift)
  data = np.ascontiguousarray(words[:, :bits]).astype('<u8').tobytes()
  return data[:num_bytes]


def unpack(data: bytes, bits: int, length: int) -> np.ndarray:
  """Inverse of `pack`; the byte count must be exact."""
  check_bits(bits)
  num_bytes = (length * bits + 7) // 8
  if len(data) != num_bytes:
    raise ValueError(f'{len(data)} bytes of packed values, expected '
                     f'{num_bytes} for {length} values of {bits} bits')
  if bits in (8, 16, 32):
    return np.frombuffer(data, f'<u{bits // 8}').astype(np.uint64)
  groups = (length + 63) // 64
  padded = np.zeros(groups * bits * 8, np.uint8)
  padded[:num_bytes] = np.frombuffer(data, np.uint8)
  words = np.zeros((groups, bits + 1), np.uint64)
  words[:, :bits] = padded.view('<u8').reshape(groups, bits)
  lanes = np.empty((groups, 64), np.uint64)
  mask = np.uint64((1 << bits) - 1)
  for i in range(64):
    offset = i * bits
    word, shift = divmod(offset, 64)
    lane = words[:, word] >> np.uint64(shift)
    if shift + bits > 64:
      lane |= words[:, word + 1] << np.uint64(64 - shift)
    lanes[:, i] = lane & mask
  values = lanes.reshape(-1)[:length].copy()
  return values
