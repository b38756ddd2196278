"""A pod's SecAgg+ party behind its control routes (workers.edge_pod).

The pod is the party (docs/secagg.md): its input to a round is the modular
sum of its clients' quantized updates, masked once. This module holds what
the pod's Python does for SecAgg+ and nothing else:

* its long-term Ed25519 identity key (created 0600 at first start, never
  sent anywhere) and the certificate that binds it: the pod's own TLS
  certificate, whose CSR carried the identity (workers.certs,
  workers.identity), checked against the cluster CA and its CRL; without a
  CA (--insecure) a self-signed one;
* its policy (`--secagg_threshold` and friends) and its served-rounds record
  (`workers.secagg.state`, fsynced before each guarded reply);
* `round(request)`: stages 1-3, 5 and 6 (advertise, participants, reveals,
  survivors, signatures) as JSON in, JSON out;
* `mask(request)`: stage 4. The forwarded shares go in; the pod's mask is
  written to `<data_dir>/secagg/<tag>/pod.mask` for the round computation
  (tff_pipeline.secagg.form's `pod_round`, run next by the edge server on
  this pod's executor) to add; the masked input leaves the pod only inside
  that computation's result.

Mask files live from stage 4 until the survivor list of the same round (or
the next round's advertisement) arrives; `pod_round` empties the file as it
reads it. Refusals (`workers.secagg.messages.ProtocolError`) become HTTP 409
with one line saying why.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from typing import Any, Optional

from absl import logging
from cryptography import x509

from workers.secagg import keys
from workers.secagg import maskfile
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import state as state_lib

IDENTITY_FILE = 'secagg-identity.key'
STATE_FILE = 'secagg-state.json'


@dataclasses.dataclass(frozen=True)
class CaFiles:
  """Where the pod reads its certificate, the CA and the CA's CRL."""
  cert: str
  ca: str
  crl: Optional[str] = None

  def stamp(self) -> tuple:
    out = []
    for path in (self.cert, self.ca, self.crl):
      try:
        st = os.stat(path) if path else None
      except OSError:
        st = None
      out.append(None if st is None else (st.st_ino, st.st_mtime_ns,
                                          st.st_size))
    return tuple(out)


def policy_from_flags(threshold: int, neighbors: int = 0,
                      quorum: float = 0.0) -> policy_lib.Policy:
  """The pod's Policy: min parties, degree (0: default), quorum (0: 2/3)."""
  return policy_lib.Policy(
      min_parties=threshold, neighbors=neighbors or None,
      quorum_ratio=quorum or policy_lib.Policy.quorum_ratio)


def policy_to_json(policy: policy_lib.Policy) -> dict[str, Any]:
  return dataclasses.asdict(policy)


def policy_from_json(raw: Any) -> policy_lib.Policy:
  """A Policy from `policy_to_json`; ValueError if it is not one."""
  if not isinstance(raw, dict):
    raise ValueError('SecAgg policy: expected an object')
  fields = {f.name for f in dataclasses.fields(policy_lib.Policy)}
  unknown = sorted(set(raw) - fields)
  if unknown:
    raise ValueError(f'SecAgg policy: unknown fields {unknown[:5]}')
  try:
    return policy_lib.Policy(**raw)
  except (TypeError, ValueError) as e:
    raise ValueError(f'SecAgg policy: {e}') from None


class PodParty:
  """The SecAgg+ party of one pod."""

  def __init__(self, name: str, data_dir: str, policy: policy_lib.Policy,
               identity_key: str = '', state_path: str = '',
               ca_files: Optional[CaFiles] = None):
    """Loads (or creates) the identity and the served-rounds record.

    Args:
      name: The pod's name: its party id and its certificate's name.
      data_dir: The executor's working directory (mask files go under it).
      policy: What this pod enforces in every round.
      identity_key: The Ed25519 key file ('' = <data_dir>/secagg-identity.key).
      state_path: The served-rounds file ('' = <data_dir>/secagg-state.json).
      ca_files: This pod's certificate, the CA and its CRL; None: no CA
        (--insecure), the identity vouches for itself.

    Raises:
      ValueError: an unreadable key or state file (the message says how to
        fix it; the pod refuses to start rather than forget its rounds).
    """
    self.name = messages.check_party(name)
    self.data_dir = data_dir
    self.policy = policy
    self.identity_key = identity_key or os.path.join(data_dir, IDENTITY_FILE)
    self._identity = keys.load_or_create_identity(self.identity_key)
    self._state = state_lib.ServedRounds(
        state_path or os.path.join(data_dir, STATE_FILE))
    self._ca_files = ca_files
    self._lock = threading.Lock()
    self._stamp: Optional[tuple] = None
    self._party: Optional[party_lib.Party] = None
    self.problem: Optional[str] = None
    self._refresh()

  def public_identity(self) -> bytes:
    return keys.public_bytes(self._identity)

  def _refresh(self) -> None:
    """(Re)builds the party when the certificate, CA or CRL changed."""
    with self._lock:
      if self._ca_files is None:
        if self._party is None:
          self._party = party_lib.Party(
              self.name, self._identity, keys.SelfSignedRoster(), self.policy,
              self._state, keys.self_signed_certificate(self._identity,
                                                        self.name))
        return
      stamp = self._ca_files.stamp()
      if stamp == self._stamp:
        return
      self._stamp = stamp
      try:
        self._party = self._certified_party()
        self.problem = None
      except (OSError, ValueError, messages.ProtocolError) as e:
        self._party = None
        self.problem = str(e)
        logging.warning('%s: SecAgg disabled until fixed: %s', self.name, e)

  def _certified_party(self) -> party_lib.Party:
    files = self._ca_files
    with open(files.cert, 'rb') as f:
      cert = x509.load_pem_x509_certificates(f.read())[0]
    certified = keys.parse_identity_extension(cert.extensions, self.name,
                                              cert.public_key())
    if certified is None or (keys.public_bytes(certified) !=
                             self.public_identity()):
      raise ValueError(
          f'{files.cert} does not certify this pod\'s SecAgg identity '
          f'{self.identity_key}; make a CSR with it (python -m '
          'workers.identity --secagg_key=...) and have it signed')
    with open(files.ca, 'rb') as f:
      ca_pem = f.read()
    revoked = []
    if files.crl and os.path.exists(files.crl):
      with open(files.crl, 'rb') as f:
        revoked = [e.serial_number for e in x509.load_pem_x509_crl(f.read())]
    roster = keys.CertificateRoster.from_pem(ca_pem, revoked)
    der = keys.certificate_der(cert)
    roster.identity(self.name, der)  # Our own must pass what others check.
    return party_lib.Party(self.name, self._identity, roster, self.policy,
                           self._state, der)

  def describe(self) -> dict[str, Any]:
    """What the coordinator may know: party id, policy, readiness."""
    self._refresh()
    return {'party': self.name, 'policy': policy_to_json(self.policy),
            'ready': self._party is not None, 'problem': self.problem or ''}

  def _current(self, refresh: bool = False) -> party_lib.Party:
    # Rebuilt only between attempts: a rotated certificate must not end a
    # live session.
    if refresh:
      self._refresh()
    party = self._party
    if party is None:
      raise messages.Refused(f'SecAgg is disabled on {self.name}: '
                             f'{self.problem}')
    return party

  def _clear_masks(self, keep: str = '') -> None:
    root = os.path.join(self.data_dir, maskfile.MASK_DIR)
    if not os.path.isdir(root):
      return
    for entry in os.listdir(root):
      if entry != keep:
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)

  def round(self, request: Any) -> tuple[int, dict[str, Any]]:
    """Stages 1-3, 5, 6: (HTTP status, reply or {'error': why})."""
    try:
      stage = request.get('stage') if isinstance(request, dict) else None
      party = self._current(refresh=stage == 'advertise')
      if stage == 'advertise':
        self._clear_masks()  # A new attempt: no older mask may be used.
      elif stage == 'survivors':
        rid = messages.RoundId.from_json(request)
        maskfile.remove(self.data_dir, rid.tag)  # The input has left.
      return 200, party.handle(request)
    except messages.ProtocolError as e:
      logging.warning('%s: SecAgg request refused: %s', self.name, e)
      return 409, {'error': str(e)}

  def mask(self, request: Any) -> tuple[int, dict[str, Any]]:
    """Stage 4: writes the pod's mask for the round computation."""
    try:
      party = self._current()
      rid = messages.RoundId.from_json(request) if isinstance(
          request, dict) else None
      if rid is None:
        raise messages.ProtocolError('expected a JSON object')
      self._clear_masks(keep=rid.tag)
      reply, mask = party.mask_vector(request)
      maskfile.write(self.data_dir, rid.tag, mask)
      return 200, reply
    except messages.ProtocolError as e:
      logging.warning('%s: SecAgg mask request refused: %s', self.name, e)
      return 409, {'error': str(e)}
