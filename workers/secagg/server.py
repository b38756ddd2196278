"""The aggregation side of a SecAgg+ round: relay, bookkeeping, unmasking.

Two roles, matching the hierarchy:

* `MaskedSum` is all an edge server holds: a sum mod 2^b of masked inputs
  and the set of parties in it. It adds pod inputs and other sums, and
  serialises to a JSON header plus b-bit packed bytes. It never sees a key
  or a share in the clear (the encrypted shares it relays are opaque), so
  what it holds stays uniformly random mod 2^b until the coordinator
  removes the masks of the whole round.
* `RoundServer` is the coordinator's state for one attempt of one round. It
  collects adverts and reveals, routes encrypted shares to their receivers,
  takes masked sums, asks survivors to sign the survivor list, and finally
  takes each survivor's self-mask seed b (revealed by the survivor itself,
  or rebuilt from t Shamir shares if it dropped after its input) and each
  dropped party's mask key s (rebuilt from t shares), removing PRG(b_u)
  for survivors and the pairwise masks survivors shared with dropped
  parties. The result is the
  exact sum mod 2^b of the survivors' inputs.

It checks what it can (signatures if given a roster, share counts and
consistency, that a rebuilt mask key matches its advertised public key), but
security never rests on it: the parties enforce the protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from workers.secagg import crypto
from workers.secagg import graph as graph_lib
from workers.secagg import keys as keys_lib
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import shamir

_RID = ('run', 'round', 'attempt')


class AttemptFailed(messages.RoundFailed):
  """Some parties never revealed: redo the key stages without them."""

  def __init__(self, message: str, retry_with: list[str]):
    super().__init__(message)
    self.retry_with = retry_with


class MaskedSum:
  """Masked inputs summed mod 2^b, with the parties they came from."""

  def __init__(self, bits: int, length: int):
    self.bits = prg.check_bits(bits)
    self.length = length
    self.values = np.zeros(length, np.uint64)
    self.parties: set[str] = set()

  def add(self, parties: Iterable[str], vector: np.ndarray) -> None:
    parties = set(parties)
    if not parties:
      raise messages.ProtocolError('a masked vector from no party')
    if parties & self.parties:
      twice = sorted(parties & self.parties)[:3]
      raise messages.ProtocolError(f'parties {twice} are already in this sum')
    if vector.shape != (self.length,):
      raise messages.ProtocolError(f'a masked vector of shape {vector.shape}, '
                                   f'expected ({self.length},)')
    self.values += vector.astype(np.uint64, copy=False)
    prg.reduce(self.values, self.bits)
    self.parties |= parties

  def add_input(self, header: Any, payload: bytes, rid: messages.RoundId
                ) -> str:
    """Adds a party's `masked_input` reply; returns the party."""
    messages.check_fields(header, 'masked_input',
                          _RID + ('party', 'bits', 'length'))
    if messages.RoundId.from_json(header) != rid:
      raise messages.ProtocolError('a masked input of another round')
    party = messages.check_party(header['party'])
    if (header['bits'], header['length']) != (self.bits, self.length):
      raise messages.ProtocolError(f'masked input of {party} has the wrong '
                                   'bit width or length')
    self.add([party], _unpack(payload, self.bits, self.length))
    return party

  def merge(self, other: 'MaskedSum') -> None:
    if (other.bits, other.length) != (self.bits, self.length):
      raise messages.ProtocolError('merging sums of different shapes')
    if other.parties:
      self.add(other.parties, other.values)

  def to_wire(self, rid: messages.RoundId) -> tuple[dict[str, Any], bytes]:
    return ({'stage': 'masked_sum', **rid.to_json(), 'bits': self.bits,
             'length': self.length, 'parties': sorted(self.parties)},
            prg.pack(self.values, self.bits))

  @classmethod
  def from_wire(cls, header: Any, payload: bytes, rid: messages.RoundId,
                max_parties: int, max_length: int) -> 'MaskedSum':
    messages.check_fields(header, 'masked_sum',
                          _RID + ('bits', 'length', 'parties'))
    if messages.RoundId.from_json(header) != rid:
      raise messages.ProtocolError('a masked sum of another round')
    bits = messages.get_int(header, 'bits', 1, prg.MAX_BITS)
    length = messages.get_int(header, 'length', 1, max_length)
    parties = messages.get_party_list(header, 'parties', max_parties)
    out = cls(bits, length)
    out.add(parties, _unpack(payload, bits, length))
    return out


def _unpack(payload: bytes, bits: int, length: int) -> np.ndarray:
  if not isinstance(payload, (bytes, bytearray, memoryview)):
    raise messages.ProtocolError('masked vector payload must be bytes')
  try:
    return prg.unpack(bytes(payload), bits, length)
  except ValueError as e:
    raise messages.ProtocolError(str(e)) from None


@dataclasses.dataclass
class Outcome:
  """Who took part at each stage of an attempt (for logs and metrics)."""
  participants: list[str]
  shared: list[str]
  survivors: list[str]
  signed: list[str]
  unmasked: list[str]
  params: policy_lib.RoundParams | None = None
  neighbors: dict[str, list[str]] = dataclasses.field(default_factory=dict)


class RoundServer:
  """The coordinator's side of one attempt of one round."""

  def __init__(self, rid: messages.RoundId, bits: int, length: int,
               policy: policy_lib.Policy, roster=None):
    self.rid = rid
    self.bits = prg.check_bits(bits)
    if not 1 <= length <= policy.max_length:
      raise ValueError(f'length {length} outside [1, {policy.max_length}]')
    self.length = length
    self.policy = policy
    self._roster = roster
    self._phase = 'advertise'
    self._adverts: dict[str, party_lib.Advert] = {}
    self._order: list[str] = []
    self._index: dict[str, int] = {}
    self._reveals: dict[str, bytes] = {}
    self._shares: dict[str, dict[str, bytes]] = {}
    self._delivered: dict[str, list[str]] = {}
    self._sum = MaskedSum(bits, length)
    self._signatures: dict[str, bytes] = {}
    self._b_points: dict[str, list[tuple[int, int]]] = {}
    self._s_points: dict[str, list[tuple[int, int]]] = {}
    self._unmasked: list[str] = []
    self._self_seeds: dict[str, bytes] = {}
    self._context = b''
    self._salt = b''
    self._survivors: list[str] = []
    self.params: policy_lib.RoundParams | None = None
    self.graph: graph_lib.Graph | None = None

  def _expect(self, phase: str) -> None:
    if self._phase != phase:
      raise messages.ProtocolError(f'server is at phase {self._phase!r}, '
                                   f'not {phase!r}')

  def _reply(self, message: Any, stage: str, fields: tuple[str, ...]
             ) -> tuple[dict[str, Any], str]:
    messages.check_fields(message, stage, _RID + ('party',) + fields)
    if messages.RoundId.from_json(message) != self.rid:
      raise messages.ProtocolError(f'a {stage} reply of another round')
    return message, messages.check_party(message['party'])

  # Stage 1.
  def advertise_request(self) -> dict[str, Any]:
    return {'stage': 'advertise', **self.rid.to_json()}

  def add_advert(self, message: Any) -> None:
    self._expect('advertise')
    advert = party_lib.Advert.parse(message, self.rid)
    if advert.party in self._adverts:
      raise messages.ProtocolError(f'a second advert from {advert.party}')
    if self._roster is not None:
      advert.verify(self.rid, self._roster)
    self._adverts[advert.party] = advert

  # Stage 2.
  def participants_request(self) -> dict[str, Any]:
    self._expect('advertise')
    self._order = sorted(self._adverts)
    self._index = {p: i for i, p in enumerate(self._order)}
    try:
      self.params = self.policy.derive(len(self._order))
    except messages.Refused as e:
      self._phase = 'failed'
      raise messages.RoundFailed(f'round {self.rid.tag}: {e}') from None
    adverts = [self._adverts[p] for p in self._order]
    self._context = crypto.context(
        self.rid, self.bits, self.length, dataclasses.astuple(self.params),
        [a.fields() for a in adverts])
    self._phase = 'reveal'
    return {'stage': 'participants', **self.rid.to_json(), 'bits': self.bits,
            'length': self.length,
            'adverts': [a.to_json(self.rid) for a in adverts]}

  def add_reveal(self, message: Any) -> None:
    self._expect('reveal')
    message, party = self._reply(message, 'reveal', ('reveal',))
    if party not in self._index or party in self._reveals:
      raise messages.ProtocolError(f'unexpected reveal from {party}')
    reveal = messages.b64decode(message['reveal'], 'reveal', 32)
    commit = crypto.commitment(self.rid, party, reveal)
    if commit != self._adverts[party].commit:
      raise messages.ProtocolError(f'the reveal of {party} does not match its '
                                   'commitment')
    self._reveals[party] = reveal

  # Stage 3.
  def reveals_request(self) -> dict[str, Any]:
    self._expect('reveal')
    missing = [p for p in self._order if p not in self._reveals]
    if missing:
      self._phase = 'failed'
      raise AttemptFailed(
          f'round {self.rid.tag}: {len(missing)} parties never revealed '
          f'(first {missing[:3]}); redo the key stages without them',
          sorted(self._reveals))
    seed = crypto.graph_seed(self._context,
                             [self._reveals[p] for p in self._order])
    self._salt = crypto.round_salt(self._context, seed)
    self.graph = graph_lib.Graph(len(self._order), self.params.neighbors,
                                 seed)
    self._phase = 'shares'
    return {'stage': 'reveals', **self.rid.to_json(),
            'reveals': {p: messages.b64encode(r)
                        for p, r in self._reveals.items()}}

  @property
  def salt(self) -> bytes:
    """The round salt (known to the server; binds every derived key)."""
    return self._salt

  def index(self, party: str) -> int:
    return self._index[party]

  def neighbors(self, party: str) -> list[str]:
    return [self._order[i] for i in self.graph.neighbors(self._index[party])]

  def add_shares(self, message: Any) -> None:
    self._expect('shares')
    message, party = self._reply(message, 'shares', ('shares',))
    if party not in self._index or party in self._shares:
      raise messages.ProtocolError(f'unexpected shares from {party}')
    raw = messages.get_party_map(message, 'shares', self.params.neighbors)
    if set(raw) != set(self.neighbors(party)):
      raise messages.ProtocolError(f'{party} sent shares to parties other than '
                                   'its neighbours')
    self._shares[party] = {
        v: messages.b64decode(c, f'shares {party}->{v}',
                              crypto.SHARE_CIPHERTEXT_BYTES)
        for v, c in raw.items()}

  # Stage 4.
  def forwarded_shares_requests(self) -> dict[str, dict[str, Any]]:
    """Per party that shared keys: the ciphertexts its neighbours sent it."""
    self._expect('shares')
    requests = {}
    for receiver in sorted(self._shares):
      senders = [v for v in self.neighbors(receiver) if v in self._shares]
      self._delivered[receiver] = senders
      requests[receiver] = {
          'stage': 'forwarded_shares', **self.rid.to_json(),
          'shares': {v: messages.b64encode(self._shares[v][receiver])
                     for v in senders}}
    self._phase = 'masked'
    return requests

  def add_masked_input(self, header: Any, payload: bytes) -> None:
    self._expect('masked')
    if not isinstance(header, dict) or header.get('party') not in (
        self._delivered):
      raise messages.ProtocolError('a masked input from a party that was not '
                                   'asked for one')
    self._sum.add_input(header, payload, self.rid)

  def add_masked_sum(self, masked: MaskedSum) -> None:
    """Adds an edge server's sum of its pods' masked inputs."""
    self._expect('masked')
    strangers = sorted(masked.parties - set(self._delivered))
    if strangers:
      raise messages.ProtocolError(f'masked sum holds parties {strangers[:3]} '
                                   'that were not asked for input')
    self._sum.merge(masked)

  # Stage 5.
  def survivors_request(self) -> dict[str, Any]:
    self._expect('masked')
    survivors = sorted(self._sum.parties)
    floor = max(self.params.min_parties, self.params.quorum)
    if len(survivors) < floor:
      self._phase = 'failed'
      raise messages.RoundFailed(
          f'round {self.rid.tag}: {len(survivors)} masked inputs, fewer than '
          f'{floor}; the round is skipped and nothing is unmasked')
    self._survivors = survivors
    self._phase = 'consistency'
    return {'stage': 'survivors', **self.rid.to_json(), 'survivors': survivors}

  def add_consistency(self, message: Any) -> None:
    self._expect('consistency')
    message, party = self._reply(message, 'consistency', ('signature',))
    if party not in self._sum.parties or party in self._signatures:
      raise messages.ProtocolError(f'unexpected signature from {party}')
    signature = messages.b64decode(message['signature'], 'signature',
                                   keys_lib.SIGNATURE_BYTES)
    if self._roster is not None:
      identity = self._roster.identity(party,
                                       self._adverts[party].certificate)
      if not keys_lib.verify(identity, signature, crypto.consistency_message(
          self._salt, self._survivors)):
        raise messages.ProtocolError(f'bad consistency signature from {party}')
    self._signatures[party] = signature

  # Stage 6.
  def signatures_request(self) -> dict[str, Any]:
    self._expect('consistency')
    if len(self._signatures) < self.params.quorum:
      self._phase = 'failed'
      raise messages.RoundFailed(
          f'round {self.rid.tag}: {len(self._signatures)} consistency '
          f'signatures, fewer than the quorum {self.params.quorum}')
    self._phase = 'unmask'
    return {'stage': 'signatures', **self.rid.to_json(),
            'signatures': {p: messages.b64encode(s)
                           for p, s in sorted(self._signatures.items())}}

  def add_unmask(self, message: Any) -> None:
    self._expect('unmask')
    message, party = self._reply(message, 'unmask',
                                 ('b_shares', 's_shares', 'self_seed'))
    if party not in self._signatures or party in self._unmasked:
      raise messages.ProtocolError(f'unexpected unmask reply from {party}')
    limit = self.params.neighbors
    b_raw = messages.get_party_map(message, 'b_shares', limit)
    s_raw = messages.get_party_map(message, 's_shares', limit)
    held = set(self._delivered[party])
    for kind, raw, want_survivor in (('b', b_raw, True), ('s', s_raw, False)):
      for owner in raw:
        if owner not in held or (owner in self._sum.parties) != want_survivor:
          raise messages.ProtocolError(f'{party} revealed a {kind}-share of '
                                       f'{owner} it should not')
    own = messages.b64decode(message['self_seed'], 'self_seed')
    if len(own) not in (0, 32):
      raise messages.ProtocolError(f'self_seed of {party} is {len(own)} bytes')
    x = self._index[party] + 1
    for raw, store in ((b_raw, self._b_points), (s_raw, self._s_points)):
      for owner, encoded in raw.items():
        share = messages.b64decode(encoded, f'share of {owner}',
                                   shamir.SHARE_BYTES)
        try:
          store.setdefault(owner, []).append((x, shamir.decode(share)))
        except shamir.ShareError as e:
          raise messages.ProtocolError(str(e)) from None
    if own:
      self._self_seeds[party] = own
    self._unmasked.append(party)

  def result(self) -> np.ndarray:
    """The exact sum mod 2^b of the survivors' inputs, else RoundFailed."""
    self._expect('unmask')
    self._phase = 'done'
    t = self.params.threshold
    total = self._sum.values.copy()
    survivors = self._sum.parties

    def rebuild(points, owner, kind) -> bytes:
      try:
        value = shamir.combine(points or [], t)
      except shamir.ShareError as e:
        raise messages.RoundFailed(
            f'round {self.rid.tag}: cannot rebuild the {kind} of {owner}: '
            f'{e}') from None
      if value >> 256:
        raise messages.RoundFailed(f'round {self.rid.tag}: the rebuilt {kind} '
                                   f'of {owner} is not 32 bytes')
      return value.to_bytes(32, 'big')

    for u in sorted(survivors):
      seed = self._self_seeds.get(u)
      points = self._b_points.get(u) or []
      if seed is None or len(points) >= t:
        rebuilt = rebuild(points, u, 'self-mask seed')
        if seed is not None and seed != rebuilt:
          raise messages.RoundFailed(f'round {self.rid.tag}: {u} revealed a '
                                     'self-mask seed its shares contradict')
        seed = rebuilt
      prg.add_stream(total, crypto.self_mask_key(seed, self._salt, u), -1)
    dropped: dict[str, list[str]] = {}
    for u in sorted(survivors):
      for v in self._delivered[u]:
        if v not in survivors:
          dropped.setdefault(v, []).append(u)
    for v, partners in sorted(dropped.items()):
      secret = x25519.X25519PrivateKey.from_private_bytes(
          rebuild(self._s_points.get(v), v, 'mask key'))
      if keys_lib.public_bytes(secret) != self._adverts[v].s_public:
        raise messages.RoundFailed(f'round {self.rid.tag}: the rebuilt mask '
                                   f'key of {v} does not match its advert')
      for u in partners:
        public = keys_lib.check_x25519(self._adverts[u].s_public, f'{u} s key')
        key = crypto.pair_key(secret, public, self._salt, v, u)
        # u added +PRG if it sorts before v, -PRG otherwise: take it back.
        prg.add_stream(total, key, -1 if self._index[u] < self._index[v]
                       else +1)
    return prg.reduce(total, self.bits)

  def outcome(self) -> Outcome:
    neighbors = {}
    if self.graph is not None:
      neighbors = {p: self.neighbors(p) for p in self._order}
    return Outcome(list(self._order), sorted(self._shares),
                   sorted(self._sum.parties), sorted(self._signatures),
                   sorted(self._unmasked), self.params, neighbors)
