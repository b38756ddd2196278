"""Messages between the coordinator and edge servers.

A message is a JSON header plus named binary blobs (serialized
`executor_pb2.Value` protos: computations, model weights, partial
aggregates). TFF's own value protos are the payload so that no tier but the
coordinator ever deserializes them, and nothing is pickled.

Layout: 8-byte big-endian header length, the UTF-8 JSON header (which lists
each blob's name and size), then the blobs back to back.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Mapping

_LENGTH = struct.Struct('>Q')
_MAX_HEADER = 64 << 20


class WireError(ValueError):
  """A message that is not in this format (wrong peer or corrupted)."""


def pack(header: Mapping[str, Any],
         blobs: Mapping[str, bytes] | None = None) -> bytes:
  """Encodes a header and blobs into one message."""
  blobs = dict(blobs or {})
  full = dict(header)
  full['_blobs'] = [[name, len(data)] for name, data in blobs.items()]
  encoded = json.dumps(full, sort_keys=True).encode('utf-8')
  return b''.join([_LENGTH.pack(len(encoded)), encoded, *blobs.values()])


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
  """Decodes `pack`'s output; raises WireError on anything malformed."""
  if len(message) < _LENGTH.size:
    raise WireError(f'message of {len(message)} bytes is shorter than its '
                    'length prefix')
  (size,) = _LENGTH.unpack_from(message)
  if size > _MAX_HEADER or _LENGTH.size + size > len(message):
    raise WireError(f'header length {size} does not fit a message of '
                    f'{len(message)} bytes')
  try:
    header = json.loads(message[_LENGTH.size:_LENGTH.size + size])
    layout = header.pop('_blobs')
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise WireError(f'unreadable message header: {e}') from e
  if not isinstance(layout, list):
    raise WireError(f'blob layout is a {type(layout).__name__}, not a list')
  offset = _LENGTH.size + size
  blobs = {}
  for entry in layout:
    # Exactly [name, length] with a str name and a non-negative int length
    # (not a bool, float or string): anything else is a hostile layout.
    if (not isinstance(entry, list) or len(entry) != 2 or
        not isinstance(entry[0], str) or type(entry[1]) is not int):
      raise WireError(f'blob layout entry {str(entry)[:80]} is not '
                      '[name, length]')
    name, length = entry
    if length < 0:
      raise WireError(f'blob {name!r} has a negative length {length}')
    if name in blobs:
      raise WireError(f'blob {name!r} appears twice')
    if offset + length > len(message):
      raise WireError(f'blob {name!r} ({length} bytes) runs past the end of '
                      'the message')
    blobs[name] = message[offset:offset + length]
    offset += length
  if offset != len(message):
    raise WireError(f'{len(message) - offset} trailing bytes after the blobs')
  return header, blobs
