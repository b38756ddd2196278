"""One party's side of a SecAgg+ round: a strict, single-use state machine.

SecAgg+ (Bell et al., CCS 2020) over Bonawitz et al.'s (CCS 2017) double
masking with their defences against a malicious server. The party is a pod;
its input is the modular sum of its clients' quantized updates. Stages, each
a request from the aggregation side and the party's reply:

 1. advertise     -> advert: fresh X25519 keys c (shares) and s (masks) and
                     a commitment to 32 random bytes r, signed with the
                     party's Ed25519 identity key.
 2. participants  -> reveal: the participant list with every advert. The
                     party derives k, t, q from its own policy, checks its own
                     advert came back unchanged, and reveals r.
 3. reveals       -> shares: every participant's r (checked against its
                     commitment) gives the graph seed. The party checks its
                     neighbours' adverts (identity signature, key validity),
                     draws its self-mask seed b, Shamir-shares b and its s
                     secret key t-of-k to its neighbours, and encrypts each
                     neighbour's pair of shares (ChaCha20-Poly1305).
 4. forwarded_shares -> masked input: the ciphertexts its neighbours sent
                     it (at least t). y = x + PRG(b) + sum over those
                     neighbours v of +-PRG(s_uv) mod 2^b (+ if u sorts before
                     v). Recorded on disk before it leaves.
 5. survivors     -> consistency: the list of parties whose masked inputs the
                     server summed (>= max(m, q), including this party and
                     only neighbours that shared keys). The party signs it.
 6. signatures    -> unmask: at least q valid signatures on the same list,
                     then, per neighbour that sent shares, the b-share if it
                     survived and the s-share if it did not. Never both kinds
                     for one party: the kind follows the one signed list. A
                     survivor with at least t neighbours on the list also
                     reveals its own b (what t b-shares would give anyway),
                     so it needs no recovery.

Any error ends the party's part in the attempt (its secrets are dropped);
the aggregation side sees a dropout. Nothing is accepted twice: a second
participant list, masked-input or unmasking request finds no session in the
right stage and is refused, and `state.ServedRounds` keeps the refusals
across restarts.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import x25519

from workers.secagg import crypto
from workers.secagg import graph as graph_lib
from workers.secagg import keys as keys_lib
from workers.secagg import messages
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import shamir
from workers.secagg import state as state_lib

_RID = ('run', 'round', 'attempt')
ADVERT_FIELDS = _RID + ('party', 'c_pk', 's_pk', 'commit', 'signature',
                        'certificate')
MAX_CERTIFICATE_BYTES = 8192


@dataclasses.dataclass(frozen=True)
class Advert:
  """A decoded (not yet verified) advert."""
  party: str
  c_public: bytes
  s_public: bytes
  commit: bytes
  signature: bytes
  certificate: bytes | None

  @classmethod
  def parse(cls, message: Any, rid: messages.RoundId) -> 'Advert':
    messages.check_fields(message, 'advert', ADVERT_FIELDS)
    if messages.RoundId.from_json(message) != rid:
      raise messages.ProtocolError('an advert belongs to another round')
    party = messages.check_party(message['party'])
    b64 = messages.b64decode
    cert = b64(message['certificate'], 'certificate',
               max_length=4 * MAX_CERTIFICATE_BYTES // 3 + 4)
    return cls(party, b64(message['c_pk'], 'c_pk', keys_lib.KEY_BYTES),
               b64(message['s_pk'], 's_pk', keys_lib.KEY_BYTES),
               b64(message['commit'], 'commit', 32),
               b64(message['signature'], 'signature',
                   keys_lib.SIGNATURE_BYTES),
               cert or None)

  def to_json(self, rid: messages.RoundId) -> dict[str, Any]:
    b64 = messages.b64encode
    return {'stage': 'advert', **rid.to_json(), 'party': self.party,
            'c_pk': b64(self.c_public), 's_pk': b64(self.s_public),
            'commit': b64(self.commit), 'signature': b64(self.signature),
            'certificate': b64(self.certificate or b'')}

  def fields(self) -> tuple[str, bytes, bytes, bytes, bytes]:
    return (self.party, self.c_public, self.s_public, self.commit,
            self.signature)

  def verify(self, rid: messages.RoundId, roster
             ) -> tuple[x25519.X25519PublicKey, x25519.X25519PublicKey]:
    """The advertised keys if the party's identity signed them, else Refused."""
    identity = roster.identity(self.party, self.certificate)
    message = crypto.advert_message(rid, self.party, self.c_public,
                                    self.s_public, self.commit)
    if not keys_lib.verify(identity, self.signature, message):
      raise messages.Refused(f'the keys advertised for {self.party} are not '
                             'signed by its identity key (substituted?)')
    return (keys_lib.check_x25519(self.c_public, f'{self.party} c key'),
            keys_lib.check_x25519(self.s_public, f'{self.party} s key'))


def parse_participants(request: Any, rid: messages.RoundId, max_parties: int,
                       max_length: int
                       ) -> tuple[int, int, list[Advert]]:
  """(bits, length, adverts in ascending party order) of a participant list."""
  messages.check_fields(request, 'participants',
                        _RID + ('bits', 'length', 'adverts'))
  bits = messages.get_int(request, 'bits', 1, prg.MAX_BITS)
  length = messages.get_int(request, 'length', 1, max_length)
  adverts = [Advert.parse(a, rid)
             for a in messages.get_list(request, 'adverts', max_parties)]
  names = [a.party for a in adverts]
  if any(a >= b for a, b in zip(names, names[1:])):
    raise messages.ProtocolError('adverts must be sorted by party id, unique')
  public = [a.c_public for a in adverts] + [a.s_public for a in adverts]
  if len(set(public)) != len(public):
    raise messages.ProtocolError('two adverts share a public key')
  return bits, length, adverts


@dataclasses.dataclass
class _Session:
  rid: messages.RoundId
  keys: keys_lib.RoundKeys
  reveal: bytes
  advert: Advert
  stage: str = 'advertised'
  bits: int = 0
  length: int = 0
  params: policy_lib.RoundParams | None = None
  adverts: list[Advert] = dataclasses.field(default_factory=list)
  index: dict[str, int] = dataclasses.field(default_factory=dict)
  context: bytes = b''
  salt: bytes = b''
  neighbors: tuple[str, ...] = ()
  c_keys: dict[str, x25519.X25519PublicKey] = dataclasses.field(
      default_factory=dict)
  s_keys: dict[str, x25519.X25519PublicKey] = dataclasses.field(
      default_factory=dict)
  self_seed: bytes = b''
  received: dict[str, tuple[int, int]] = dataclasses.field(
      default_factory=dict)
  survivors: tuple[str, ...] = ()


class Party:
  """A pod's SecAgg+ endpoint. Thread-safe; one live attempt at a time."""

  def __init__(self, party_id: str, identity: ed25519.Ed25519PrivateKey,
               roster, policy: policy_lib.Policy | None = None,
               state: state_lib.ServedRounds | None = None,
               certificate: bytes | None = None):
    self.party_id = messages.check_party(party_id)
    self._identity = identity
    self._roster = roster
    self.policy = policy or policy_lib.Policy()
    self._state = state if state is not None else state_lib.ServedRounds()
    self._certificate = certificate
    self._lock = threading.Lock()
    self._session: _Session | None = None

  # Request stage -> method, for the JSON-only stages (an HTTP route can
  # dispatch on it); `forwarded_shares` goes to masked_input/mask_vector.
  HANDLERS = {'advertise': 'advertise', 'participants': 'reveal',
              'reveals': 'share_keys', 'survivors': 'consistency',
              'signatures': 'unmask'}

  def handle(self, request: Any) -> dict[str, Any]:
    """Runs the JSON-only stage named by request['stage']."""
    stage = request.get('stage') if isinstance(request, dict) else None
    if stage not in self.HANDLERS:
      raise messages.ProtocolError(f'unknown SecAgg stage {str(stage)[:40]!r}')
    return getattr(self, self.HANDLERS[stage])(request)

  # Stage 1.
  def advertise(self, request: Any) -> dict[str, Any]:
    messages.check_fields(request, 'advertise', _RID)
    rid = messages.RoundId.from_json(request)
    with self._lock:
      self._session = None  # A new attempt ends any older one.
      self._state.begin_attempt(rid, self.policy.max_attempts)
      round_keys = keys_lib.RoundKeys.generate()
      reveal = os.urandom(32)
      commit = crypto.commitment(rid, self.party_id, reveal)
      signature = self._identity.sign(crypto.advert_message(
          rid, self.party_id, round_keys.c_public, round_keys.s_public,
          commit))
      advert = Advert(self.party_id, round_keys.c_public,
                      round_keys.s_public, commit, signature,
                      self._certificate)
      self._session = _Session(rid, round_keys, reveal, advert)
      return advert.to_json(rid)

  def _run(self, request: Any, expect: str, step):
    """Runs `step(session)` if the request's round is in stage `expect`."""
    if not isinstance(request, dict):
      raise messages.ProtocolError('expected a JSON object')
    rid = messages.RoundId.from_json(request)
    with self._lock:
      session = self._session
      if session is None or session.rid != rid:
        raise messages.Refused(f'no live session for {rid.tag} on '
                               f'{self.party_id} (replayed, stale or after '
                               'a restart)')
      if session.stage != expect:
        raise messages.Refused(
            f'{self.party_id} is at stage {session.stage!r} of {rid.tag}, '
            f'not {expect!r}: a repeated or out-of-order request')
      try:
        return step(session)
      except BaseException:
        self._session = None  # Any violation ends this attempt for us.
        raise

  # Stage 2.
  def reveal(self, request: Any) -> dict[str, Any]:
    return self._run(request, 'advertised', lambda s: self._reveal(s, request))

  def _reveal(self, s: _Session, request: Any) -> dict[str, Any]:
    bits, length, adverts = parse_participants(
        request, s.rid, self.policy.max_parties, self.policy.max_length)
    params = self.policy.derive(len(adverts))
    index = {a.party: i for i, a in enumerate(adverts)}
    if self.party_id not in index:
      raise messages.Refused(f'{self.party_id} is not in the participant list')
    if adverts[index[self.party_id]] != s.advert:
      raise messages.Refused(f'the participant list carries a different advert '
                             f'for {self.party_id} than it sent (substituted)')
    s.bits, s.length, s.params, s.adverts, s.index = (bits, length, params,
                                                      adverts, index)
    s.context = crypto.context(
        s.rid, bits, length, dataclasses.astuple(params),
        [a.fields() for a in adverts])
    s.stage = 'revealed'
    return {'stage': 'reveal', **s.rid.to_json(), 'party': self.party_id,
            'reveal': messages.b64encode(s.reveal)}

  # Stage 3.
  def share_keys(self, request: Any) -> dict[str, Any]:
    return self._run(request, 'revealed',
                     lambda s: self._share_keys(s, request))

  def _share_keys(self, s: _Session, request: Any) -> dict[str, Any]:
    messages.check_fields(request, 'reveals', _RID + ('reveals',))
    raw = messages.get_party_map(request, 'reveals', len(s.adverts))
    if set(raw) != set(s.index):
      raise messages.Refused(
          f'reveals missing for {len(set(s.index) - set(raw))} participants: '
          'the graph needs every committed contribution (start a new attempt)')
    reveals = []
    for advert in s.adverts:
      reveal = messages.b64decode(raw[advert.party], 'reveal', 32)
      if crypto.commitment(s.rid, advert.party, reveal) != advert.commit:
        raise messages.Refused(f'the reveal of {advert.party} does not match '
                               'its commitment')
      reveals.append(reveal)
    seed = crypto.graph_seed(s.context, reveals)
    s.salt = crypto.round_salt(s.context, seed)
    me = s.index[self.party_id]
    g = graph_lib.Graph(len(s.adverts), s.params.neighbors, seed)
    neighbors = [s.adverts[i] for i in g.neighbors(me)]
    for advert in neighbors:
      s.c_keys[advert.party], s.s_keys[advert.party] = advert.verify(
          s.rid, self._roster)
    s.neighbors = tuple(a.party for a in neighbors)
    s.self_seed = os.urandom(32)
    xs = [s.index[v] + 1 for v in s.neighbors]
    t = s.params.threshold
    b_shares = shamir.split(int.from_bytes(s.self_seed, 'big'), t, xs)
    s_raw = s.keys.s_secret.private_bytes_raw()
    s_shares = shamir.split(int.from_bytes(s_raw, 'big'), t, xs)
    out = {}
    for v, x, b, sh in zip(s.neighbors, xs, b_shares, s_shares):
      key = crypto.share_key(s.keys.c_secret, s.c_keys[v], s.salt,
                             self.party_id, v)
      out[v] = messages.b64encode(crypto.seal_shares(
          key, crypto.share_ad(s.salt, self.party_id, v), x, b, sh))
    s.stage = 'shared'
    return {'stage': 'shares', **s.rid.to_json(), 'party': self.party_id,
            'shares': out}

  # Stage 4.
  def masked_input(self, request: Any, x: np.ndarray
                   ) -> tuple[dict[str, Any], bytes]:
    """(reply, packed y): y = x + mask mod 2^b, for in-Python inputs."""
    def step(s):
      values = self._check_input(s, x)
      reply, mask = self._mask(s, request)
      mask += values
      return reply, prg.pack(prg.reduce(mask, s.bits), s.bits)
    return self._run(request, 'shared', step)

  def mask_vector(self, request: Any) -> tuple[dict[str, Any], np.ndarray]:
    """(reply, mask): for a pod whose TF computation adds the mask itself."""
    return self._run(request, 'shared', lambda s: self._mask(s, request))

  @staticmethod
  def _check_input(s: _Session, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (s.length,) or x.dtype.kind not in 'ui':
      raise messages.ProtocolError(f'input must be {s.length} integers, got '
                                   f'shape {x.shape} of {x.dtype}')
    if x.size and (int(x.min()) < 0 or int(x.max()) >> s.bits):
      raise messages.ProtocolError(f'input values must be in [0, 2^{s.bits})')
    return x.astype(np.uint64)

  def _mask(self, s: _Session, request: Any
            ) -> tuple[dict[str, Any], np.ndarray]:
    messages.check_fields(request, 'forwarded_shares', _RID + ('shares',))
    raw = messages.get_party_map(request, 'shares', len(s.neighbors))
    strangers = sorted(set(raw) - set(s.neighbors))
    if strangers:
      raise messages.Refused(f'shares forwarded from non-neighbours '
                             f'{strangers[:3]}')
    me = s.index[self.party_id]
    for sender, encoded in raw.items():
      ciphertext = messages.b64decode(
          encoded, f'shares from {sender}', crypto.SHARE_CIPHERTEXT_BYTES)
      key = crypto.share_key(s.keys.c_secret, s.c_keys[sender], s.salt,
                             sender, self.party_id)
      x, b_share, s_share = crypto.open_shares(
          key, crypto.share_ad(s.salt, sender, self.party_id), ciphertext)
      if x != me + 1:
        raise messages.ProtocolError(f'shares from {sender} are for point {x}, '
                                     f'not this party\'s {me + 1}')
      s.received[sender] = (b_share, s_share)
    if len(s.received) < s.params.threshold:
      raise messages.Refused(
          f'only {len(s.received)} neighbours shared keys, fewer than the '
          f'threshold {s.params.threshold}: this party could not be recovered')
    mask = np.zeros(s.length, np.uint64)
    prg.add_stream(mask, crypto.self_mask_key(s.self_seed, s.salt,
                                              self.party_id), +1)
    for v in sorted(s.received):
      key = crypto.pair_key(s.keys.s_secret, s.s_keys[v], s.salt,
                            self.party_id, v)
      prg.add_stream(mask, key, +1 if me < s.index[v] else -1)
    prg.reduce(mask, s.bits)
    self._state.record_input(s.rid)  # Before the mask can leave.
    s.stage = 'masked'
    return ({'stage': 'masked_input', **s.rid.to_json(),
             'party': self.party_id, 'bits': s.bits, 'length': s.length},
            mask)

  # Stage 5.
  def consistency(self, request: Any) -> dict[str, Any]:
    return self._run(request, 'masked',
                     lambda s: self._consistency(s, request))

  def _consistency(self, s: _Session, request: Any) -> dict[str, Any]:
    messages.check_fields(request, 'survivors', _RID + ('survivors',))
    survivors = messages.get_party_list(request, 'survivors', len(s.adverts))
    unknown = [p for p in survivors if p not in s.index]
    if unknown:
      raise messages.ProtocolError(f'survivors {unknown[:3]} are not '
                                   'participants')
    if self.party_id not in survivors:
      raise messages.Refused(f'the survivor list omits {self.party_id}, which '
                             'sent its masked input')
    floor = max(s.params.min_parties, s.params.quorum)
    if len(survivors) < floor:
      raise messages.Refused(
          f'{len(survivors)} survivors, fewer than {floor} (min parties '
          f'{s.params.min_parties}, quorum {s.params.quorum}): round skipped')
    listed = set(survivors)
    silent = [v for v in s.neighbors if v in listed and v not in s.received]
    if silent:
      raise messages.Refused(f'neighbours {silent[:3]} are listed as '
                             'survivors but never shared keys with this party')
    s.survivors = tuple(survivors)
    s.stage = 'signed'
    signature = self._identity.sign(crypto.consistency_message(s.salt,
                                                               survivors))
    return {'stage': 'consistency', **s.rid.to_json(), 'party': self.party_id,
            'signature': messages.b64encode(signature)}

  # Stage 6.
  def unmask(self, request: Any) -> dict[str, Any]:
    return self._run(request, 'signed', lambda s: self._unmask(s, request))

  def _unmask(self, s: _Session, request: Any) -> dict[str, Any]:
    messages.check_fields(request, 'signatures', _RID + ('signatures',))
    raw = messages.get_party_map(request, 'signatures', len(s.adverts))
    survivors = set(s.survivors)
    message = crypto.consistency_message(s.salt, s.survivors)
    valid = 0
    for party in sorted(raw):
      signature = messages.b64decode(raw[party], f'signature of {party}',
                                     keys_lib.SIGNATURE_BYTES)
      if party not in survivors or valid >= s.params.quorum:
        continue
      advert = s.adverts[s.index[party]]
      try:
        identity = self._roster.identity(party, advert.certificate)
      except messages.Refused:
        continue
      valid += keys_lib.verify(identity, signature, message)
    if valid < s.params.quorum:
      raise messages.Refused(
          f'{valid} valid signatures on this survivor list, fewer than the '
          f'quorum {s.params.quorum}: nothing revealed')
    self._state.record_unmask(s.rid)
    b_out, s_out = {}, {}
    for v, (b_share, s_share) in sorted(s.received.items()):
      if v in survivors:
        b_out[v] = messages.b64encode(shamir.encode(b_share))
      else:
        s_out[v] = messages.b64encode(shamir.encode(s_share))
    # Our own seed too, if t of our neighbours are in the sum: then revealing
    # b ourselves tells the server nothing that t b-shares would not, and an
    # honest neighbour among them keeps a pairwise mask on our input.
    live = sum(v in survivors for v in s.neighbors)
    own = s.self_seed if live >= s.params.threshold else b''
    s.stage = 'done'
    self._session = None
    return {'stage': 'unmask', **s.rid.to_json(), 'party': self.party_id,
            'b_shares': b_out, 's_shares': s_out,
            'self_seed': messages.b64encode(own)}
