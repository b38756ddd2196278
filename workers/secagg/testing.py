"""Test helpers: real parties on a static roster, advanced stage by stage.

`Stages` runs an honest `server.RoundServer` against real `party.Party`
objects one stage at a time, so a test can stop anywhere and play a lying
server with the requests it holds. Test-only (no mocks: every party is the
real state machine).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import numpy as np

from workers.secagg import keys
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import server as server_lib
from workers.secagg import state as state_lib


def make_parties(n: int, policy: policy_lib.Policy, prefix: str = 'edge',
                 state_dir: str | None = None):
  """(parties, identity keys, roster) for parties `<prefix>-0`..."""
  names = [f'{prefix}-{i}' for i in range(n)]
  identities = {p: keys.generate_identity() for p in names}
  roster = keys.Roster.of(identities)
  parties = {}
  for p in names:
    path = None if state_dir is None else os.path.join(state_dir, p + '.json')
    parties[p] = party_lib.Party(p, identities[p], roster, policy,
                                 state_lib.ServedRounds(path))
  return parties, identities, roster


def make_ca(name: str = 'secagg-test-ca'):
  """(key, certificate) of a throwaway EC P-256 CA, like workers.certs'."""
  key = ec.generate_private_key(ec.SECP256R1())
  subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=10))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .sign(key, hashes.SHA256()))
  return key, cert


def random_inputs(names: Iterable[str], bits: int, length: int, seed: int = 0
                  ) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {p: rng.integers(0, 2**bits, length, dtype=np.uint64) for p in names}


class Stages:
  """An honest server and real parties, one stage per call."""

  def __init__(self, parties: Mapping[str, party_lib.Party],
               rid: messages.RoundId, bits: int, length: int,
               policy: policy_lib.Policy, roster):
    self.parties = parties
    self.server = server_lib.RoundServer(rid, bits, length, policy, roster)
    self.rid = rid
    self.requests: dict[str, object] = {}
    self.forward: dict[str, dict] = {}
    self.masked: dict[str, tuple[dict, bytes]] = {}

  def _names(self, names):
    return sorted(self.parties) if names is None else list(names)

  def advertise(self, names=None) -> 'Stages':
    request = self.requests['advertise'] = self.server.advertise_request()
    for name in self._names(names):
      self.server.add_advert(self.parties[name].advertise(request))
    return self

  def reveal(self, names=None) -> 'Stages':
    request = self.requests['participants'] = (
        self.server.participants_request())
    for name in self._names(names):
      self.server.add_reveal(self.parties[name].reveal(request))
    return self

  def share(self, names=None) -> 'Stages':
    request = self.requests['reveals'] = self.server.reveals_request()
    for name in self._names(names):
      self.server.add_shares(self.parties[name].share_keys(request))
    return self

  def mask(self, inputs: Mapping[str, np.ndarray], names=None) -> 'Stages':
    self.forward = self.server.forwarded_shares_requests()
    for name in self._names(names):
      header, payload = self.parties[name].masked_input(self.forward[name],
                                                        inputs[name])
      self.masked[name] = (header, payload)
      self.server.add_masked_input(header, payload)
    return self

  def through_masked_input(self, inputs) -> 'Stages':
    return self.advertise().reveal().share().mask(inputs)

  def sign(self, names=None) -> 'Stages':
    request = self.requests['survivors'] = self.server.survivors_request()
    for name in self._names(names):
      self.server.add_consistency(self.parties[name].consistency(request))
    return self

  def unmask(self, names=None) -> 'Stages':
    request = self.requests['signatures'] = self.server.signatures_request()
    for name in self._names(names):
      self.server.add_unmask(self.parties[name].unmask(request))
    return self
