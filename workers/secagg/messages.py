"""SecAgg+ wire format: strict decoding of JSON messages, round ids and tags.

Every protocol message is a plain JSON object (str keys; str, int, list and
object values; bytes as standard base64 strings), so it can travel over the
pods' HTTP control routes and be relayed unchanged by edge servers. The one
large payload, a masked input vector, travels beside its JSON header as
packed bytes (see `prg.pack`).

Everything here assumes the peer is hostile: wrong types, unknown keys,
oversized lists, bad base64 and wrong lengths raise `ProtocolError` with one
line saying what is wrong; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import secrets
from collections.abc import Mapping
from typing import Any

RUN_NONCE_BYTES = 16
MAX_ROUND = 10**9 - 1
MAX_ATTEMPT = 99
MAX_B64_CHARS = 1 << 16  # Longest base64 field in a JSON message (a cert).

_PARTY = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]{0,63}')
_RUN = re.compile(r'[0-9a-f]{32}')
# <run nonce>-r<round>-a<attempt>: no dots, no slashes, at most 50 chars.
_TAG = re.compile(r'([0-9a-f]{32})-r(0|[1-9][0-9]{0,8})-a([1-9][0-9]?)')


class ProtocolError(ValueError):
  """A message is malformed or inconsistent; the message says which part."""


class Refused(ProtocolError):
  """A well-formed request the party refuses (replay, threshold, policy)."""


class RoundFailed(Exception):
  """The aggregation side cannot complete the round; nothing is released."""


def new_run_nonce() -> str:
  """A fresh random run nonce (hex), one per training run."""
  return secrets.token_hex(RUN_NONCE_BYTES)


def check_party(value: Any, what: str = 'party id') -> str:
  if not isinstance(value, str) or not _PARTY.fullmatch(value):
    raise ProtocolError(f'bad {what} {str(value)[:80]!r}: 1-64 of '
                        '[A-Za-z0-9_-], not starting with - or _')
  return value


@dataclasses.dataclass(frozen=True, order=True)
class RoundId:
  """One attempt of one round of one run: what every message is bound to."""
  run: str
  round: int
  attempt: int

  def __post_init__(self):
    if not isinstance(self.run, str) or not _RUN.fullmatch(self.run):
      raise ProtocolError('bad run nonce: 32 lowercase hex characters')
    for name, value, low, high in (('round', self.round, 0, MAX_ROUND),
                                   ('attempt', self.attempt, 1, MAX_ATTEMPT)):
      if (not isinstance(value, int) or isinstance(value, bool) or
          not low <= value <= high):
        raise ProtocolError(f'bad {name} {str(value)[:20]!r}')

  @property
  def tag(self) -> str:
    """`<run>-r<round>-a<attempt>`: safe as one path component."""
    return f'{self.run}-r{self.round}-a{self.attempt}'

  @classmethod
  def parse_tag(cls, tag: Any) -> 'RoundId':
    if not isinstance(tag, str) or len(tag) > 50:
      raise ProtocolError('bad round tag: not a short string')
    match = _TAG.fullmatch(tag)
    if not match:
      raise ProtocolError(f'bad round tag {tag[:50]!r}: expected '
                          '<32 hex>-r<round>-a<attempt>')
    return cls(match.group(1), int(match.group(2)), int(match.group(3)))

  def to_json(self) -> dict[str, Any]:
    return {'run': self.run, 'round': self.round, 'attempt': self.attempt}

  @classmethod
  def from_json(cls, message: Mapping[str, Any]) -> 'RoundId':
    return cls(message.get('run'), message.get('round'),
               message.get('attempt'))


def b64encode(data: bytes) -> str:
  return base64.b64encode(data).decode('ascii')


def b64decode(value: Any, what: str, length: int | None = None,
              max_length: int = MAX_B64_CHARS) -> bytes:
  """Strict base64 (no whitespace, padding checked), of an exact length."""
  if not isinstance(value, str) or len(value) > max_length:
    raise ProtocolError(f'{what}: expected a base64 string')
  try:
    data = base64.b64decode(value.encode('ascii'), validate=True)
  except (binascii.Error, UnicodeEncodeError, ValueError):
    raise ProtocolError(f'{what}: not valid base64') from None
  if length is not None and len(data) != length:
    raise ProtocolError(f'{what}: {len(data)} bytes, expected {length}')
  return data


def check_fields(message: Any, stage: str, required: tuple[str, ...]
                 ) -> dict[str, Any]:
  """`message` is a dict with exactly `stage` and the `required` keys."""
  if not isinstance(message, dict):
    raise ProtocolError(f'{stage}: expected a JSON object')
  if message.get('stage') != stage:
    raise ProtocolError(f'expected a {stage!r} message, got stage '
                        f'{str(message.get("stage"))[:40]!r}')
  expected = set(required) | {'stage'}
  keys = set(message)
  if keys != expected:
    extra = sorted(str(k)[:40] for k in keys - expected)
    missing = sorted(expected - keys)
    raise ProtocolError(f'{stage}: unexpected fields {extra} / missing '
                        f'fields {missing}')
  return message


def get_int(message: Mapping[str, Any], key: str, low: int, high: int) -> int:
  value = message.get(key)
  if not isinstance(value, int) or isinstance(value, bool) or not (
      low <= value <= high):
    raise ProtocolError(f'{key}: expected an integer in [{low}, {high}]')
  return value


def get_list(message: Mapping[str, Any], key: str, max_items: int) -> list:
  value = message.get(key)
  if not isinstance(value, list):
    raise ProtocolError(f'{key}: expected a list')
  if len(value) > max_items:
    raise ProtocolError(f'{key}: {len(value)} items, at most {max_items}')
  return value


def get_party_map(message: Mapping[str, Any], key: str, max_items: int
                  ) -> dict[str, Any]:
  """An object keyed by party ids, of at most `max_items` entries."""
  value = message.get(key)
  if not isinstance(value, dict):
    raise ProtocolError(f'{key}: expected an object keyed by party id')
  if len(value) > max_items:
    raise ProtocolError(f'{key}: {len(value)} entries, at most {max_items}')
  for party in value:
    check_party(party, f'{key} key')
  return value


def get_party_list(message: Mapping[str, Any], key: str, max_items: int
                   ) -> list[str]:
  """A strictly ascending list of party ids (so no duplicates)."""
  parties = [check_party(p, f'{key} entry')
             for p in get_list(message, key, max_items)]
  if any(a >= b for a, b in zip(parties, parties[1:])):
    raise ProtocolError(f'{key}: party ids must be sorted and unique')
  return parties
