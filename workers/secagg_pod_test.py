"""A pod's SecAgg+ party: its identity, its certificate, its mask files.

Real parties all through: the pod's `PodParty` and in-process `Party`
objects certified by the same CA (workers.certs), driven by an honest
`RoundServer` stage by stage.
"""

import os
import stat
import tempfile

from absl.testing import absltest
from cryptography.hazmat.primitives import serialization
import numpy as np

from workers import certs
from workers import secagg_pod
from workers.secagg import keys
from workers.secagg import maskfile
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import server as server_lib

_BITS, _LENGTH = 24, 40
_POLICY = policy_lib.Policy(min_parties=3)


def _write_cert(path: str, cert) -> None:
  with open(path, 'wb') as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))


class _Cluster:
  """A CA, a pod's directory and certificate, and three more parties."""

  def __init__(self, test):
    self.root = tempfile.mkdtemp()
    self.ca = certs.make_ca()
    self.ca_path = os.path.join(self.root, 'ca.crt')
    _write_cert(self.ca_path, self.ca.cert)
    self.data_dir = os.path.join(self.root, 'pod')
    os.makedirs(self.data_dir)
    self.key_path = os.path.join(self.data_dir, secagg_pod.IDENTITY_FILE)
    self.cert_path = os.path.join(self.root, 'edge-0.crt')
    roster = keys.CertificateRoster(self.ca.cert)
    self.others = {}
    for name in ('edge-1', 'edge-2', 'edge-3'):
      identity = keys.generate_identity()
      issued = certs.issue_node_cert(self.ca, name, role='edge-pod',
                                     secagg_identity=identity)
      self.others[name] = party_lib.Party(
          name, identity, roster, _POLICY,
          certificate=keys.certificate_der(issued.cert))
    self.roster = roster

  def certify_pod(self, identity=None):
    """Issues edge-0's TLS certificate, binding `identity` (or its own)."""
    identity = identity or keys.load_or_create_identity(self.key_path)
    issued = certs.issue_node_cert(self.ca, 'edge-0', role='edge-pod',
                                   secagg_identity=identity)
    _write_cert(self.cert_path, issued.cert)

  def pod(self):
    return secagg_pod.PodParty(
        'edge-0', self.data_dir, _POLICY,
        ca_files=secagg_pod.CaFiles(self.cert_path, self.ca_path))


class PodPartyTest(absltest.TestCase):

  def test_identity_is_made_once_private_and_kept(self):
    cluster = _Cluster(self)
    keys.load_or_create_identity(cluster.key_path)
    cluster.certify_pod()
    first = cluster.pod().public_identity()
    mode = stat.S_IMODE(os.stat(cluster.key_path).st_mode)
    self.assertEqual(mode, 0o600)
    self.assertEqual(cluster.pod().public_identity(), first)  # A restart.

  def test_a_certificate_that_binds_no_or_another_identity_disables_secagg(
      self):
    cluster = _Cluster(self)
    keys.load_or_create_identity(cluster.key_path)
    plain = certs.issue_node_cert(cluster.ca, 'edge-0', role='edge-pod')
    _write_cert(cluster.cert_path, plain.cert)
    pod = cluster.pod()
    described = pod.describe()
    self.assertFalse(described['ready'])
    self.assertIn('does not certify', described['problem'])
    status, body = pod.round({'stage': 'advertise', 'run': '0' * 32,
                              'round': 1, 'attempt': 1})
    self.assertEqual(status, 409)
    self.assertIn('SecAgg is disabled on edge-0', body['error'])
    # Another key in the certificate: the same.
    cluster.certify_pod(keys.generate_identity())
    self.assertFalse(cluster.pod().describe()['ready'])
    # The right one: ready (picked up by the running pod, too).
    cluster.certify_pod()
    self.assertTrue(pod.describe()['ready'], pod.describe())
    self.assertEqual(pod.describe()['policy'],
                     secagg_pod.policy_to_json(_POLICY))

  def test_a_round_through_the_pod_writes_its_mask_and_the_sum_is_exact(self):
    cluster = _Cluster(self)
    keys.load_or_create_identity(cluster.key_path)
    cluster.certify_pod()
    pod = cluster.pod()
    rid = messages.RoundId(messages.new_run_nonce(), 1, 1)
    srv = server_lib.RoundServer(rid, _BITS, _LENGTH, _POLICY, cluster.roster)

    def everyone(request, handle_pod, handle_other):
      replies = [handle_pod(request)]
      replies += [handle_other(p, request) for p in cluster.others.values()]
      return replies

    def pod_round(request):
      status, body = pod.round(request)
      self.assertEqual(status, 200, body)
      return body

    # A mask directory of an older round: gone once a new one starts.
    stale = maskfile.write(cluster.data_dir, messages.RoundId(
        rid.run, 0, 1).tag, np.zeros(4, np.uint64))
    for reply in everyone(srv.advertise_request(), pod_round,
                          lambda p, r: p.advertise(r)):
      srv.add_advert(reply)
    self.assertFalse(os.path.exists(stale))
    for reply in everyone(srv.participants_request(), pod_round,
                          lambda p, r: p.reveal(r)):
      srv.add_reveal(reply)
    for reply in everyone(srv.reveals_request(), pod_round,
                          lambda p, r: p.share_keys(r)):
      srv.add_shares(reply)
    forwarded = srv.forwarded_shares_requests()
    # The pod's mask goes to its disk; its round computation adds it.
    status, header = pod.mask(forwarded['edge-0'])
    self.assertEqual(status, 200, header)
    mask = maskfile.read(cluster.data_dir, rid.tag)
    path = maskfile.path(cluster.data_dir, rid.tag)
    self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
    inputs = {p: np.random.default_rng(i).integers(0, 2**20, _LENGTH,
                                                   dtype=np.uint64)
              for i, p in enumerate(['edge-0', *cluster.others])}
    pod_masked = (inputs['edge-0'] + mask) & np.uint64(2**_BITS - 1)
    srv.add_masked_input(header, prg.pack(pod_masked, _BITS))
    for name, party in cluster.others.items():
      srv.add_masked_input(*party.masked_input(forwarded[name], inputs[name]))
    # A second mask for the same round: refused, and no file rewritten.
    status, body = pod.mask(forwarded['edge-0'])
    self.assertEqual(status, 409)
    for reply in everyone(srv.survivors_request(), pod_round,
                          lambda p, r: p.consistency(r)):
      srv.add_consistency(reply)
    self.assertFalse(os.path.exists(path))  # Its input has left.
    for reply in everyone(srv.signatures_request(), pod_round,
                          lambda p, r: p.unmask(r)):
      srv.add_unmask(reply)
    np.testing.assert_array_equal(
        srv.result(), sum(inputs.values()) & np.uint64(2**_BITS - 1))

  def test_the_served_rounds_survive_a_restart(self):
    cluster = _Cluster(self)
    keys.load_or_create_identity(cluster.key_path)
    cluster.certify_pod()
    request = {'stage': 'advertise', 'run': '1' * 32, 'round': 4,
               'attempt': 2}
    self.assertEqual(cluster.pod().round(request)[0], 200)
    status, body = cluster.pod().round(request)  # A new process, same disk.
    self.assertEqual(status, 409)
    self.assertIn('not after attempt 2', body['error'])

  def test_without_a_ca_the_pod_vouches_for_itself(self):
    root = tempfile.mkdtemp()
    pod = secagg_pod.PodParty('edge-0', root, _POLICY)
    self.assertTrue(pod.describe()['ready'])
    status, advert = pod.round({'stage': 'advertise', 'run': '2' * 32,
                                'round': 1, 'attempt': 1})
    self.assertEqual(status, 200, advert)
    certificate = messages.b64decode(advert['certificate'], 'certificate')
    identity = keys.SelfSignedRoster().identity('edge-0', certificate)
    self.assertEqual(keys.public_bytes(identity), pod.public_identity())

  def test_policy_round_trips_and_bad_ones_are_refused(self):
    policy = secagg_pod.policy_from_flags(5, neighbors=6, quorum=0.75)
    self.assertEqual(secagg_pod.policy_from_json(
        secagg_pod.policy_to_json(policy)), policy)
    for raw in ('x', {'min_parties': 1}, {'bogus': 1}):
      with self.subTest(raw=raw):
        with self.assertRaisesRegex(ValueError, 'SecAgg policy'):
          secagg_pod.policy_from_json(raw)


if __name__ == '__main__':
  absltest.main()
