import os
import stat
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

from tests import testutil
from workers import certs
from workers import identity
from workers import tls
from workers.secagg import keys as secagg_keys


class IdentityTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ca_dir = self.create_tempdir().full_path
    certs.write_bundle(self.ca_dir, ['coordinator'])
    self.ca = certs.load_ca(self.ca_dir)
    self.node_dir = os.path.join(self.create_tempdir().full_path, 'identity')

  def _start(self, name='edge-0', wait=60.0):
    return subprocess.Popen(
        [sys.executable, '-m', 'workers.identity', f'--dir={self.node_dir}',
         f'--name={name}', '--role=edge-pod',
         f'--ca={os.path.join(self.ca_dir, "ca.crt")}',
         f'--wait_seconds={wait}'], cwd=testutil.REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=testutil.REPO_ROOT),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def _csr_from(self, process) -> bytes:
    lines = []
    for line in process.stdout:
      lines.append(line)
      if line.startswith('-----END CERTIFICATE REQUEST'):
        break
    text = ''.join(lines)
    return text[text.index('-----BEGIN'):].encode()

  def test_key_stays_on_the_node_and_the_signed_certificate_completes_it(self):
    process = self._start()
    self.addCleanup(lambda: process.poll() is None and process.kill())
    csr = self._csr_from(process)  # What the operator reads (kubectl logs).
    key_path = os.path.join(self.node_dir, 'edge-0.key')
    self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
    self.assertNotIn(b'PRIVATE KEY', csr)
    time.sleep(1)
    self.assertIsNone(process.poll())  # Waits for its certificate.
    cert = certs.sign_csr(self.ca, csr, 'edge-0', 'edge-pod')
    path = os.path.join(self.node_dir, 'edge-0.crt')
    with open(path + '.tmp', 'wb') as f:
      f.write(cert.public_bytes(certs.serialization.Encoding.PEM))
    os.replace(path + '.tmp', path)
    out, err = process.communicate(timeout=30)
    self.assertEqual(process.returncode, 0, err)
    self.assertIn('is ready', out)
    files = tls.TlsFiles(os.path.join(self.ca_dir, 'ca.crt'), path, key_path)
    self.assertEqual(files.validate().identity(), ('edge-pod', 'edge-0'))
    # A restart keeps the key and is ready at once.
    with open(key_path, 'rb') as f:
      key = f.read()
    again = self._start(wait=0)
    out, _ = again.communicate(timeout=60)
    self.assertEqual(again.returncode, 0)
    with open(key_path, 'rb') as f:
      self.assertEqual(f.read(), key)

  def test_a_certificate_for_another_name_or_role_does_not_complete_it(self):
    key_dir = self.node_dir
    certs.make_node_csr(key_dir, 'edge-0', 'edge-pod')
    other = certs.issue_node_cert(self.ca, 'edge-1')
    with open(os.path.join(key_dir, 'edge-0.crt'), 'wb') as f:
      f.write(other.cert_pem())
    why = identity.problem(key_dir, 'edge-0', 'edge-pod',
                           os.path.join(self.ca_dir, 'ca.crt'))
    self.assertIn('not the key of', why)
    process = self._start(wait=3)
    _, err = process.communicate(timeout=60)
    self.assertEqual(process.returncode, 1)
    self.assertIn('k8s/sign_csrs.sh', err)

  def test_signer_refuses_a_csr_asking_for_another_name_or_role(self):
    _, csr_path = certs.make_node_csr(self.node_dir, 'edge-0', 'edge-pod')
    with open(csr_path, 'rb') as f:
      csr = f.read()
    with self.assertRaisesRegex(certs.CertError, "is for 'edge-0', not"):
      certs.sign_csr(self.ca, csr, 'edge-server-0', 'edge-server')
    with self.assertRaisesRegex(certs.CertError, 'asks for role'):
      certs.sign_csr(self.ca, csr, 'edge-0', 'coordinator')
    _, csr_path = certs.make_node_csr(self.node_dir, 'edge-2', 'coordinator')
    with open(csr_path, 'rb') as f:
      with self.assertRaisesRegex(certs.CertError, 'asks for role'):
        certs.sign_csr(self.ca, f.read(), 'edge-2', 'edge-pod')


  def test_a_secagg_identity_rides_on_the_same_csr(self):
    secagg_key = os.path.join(self.node_dir, 'secagg-identity.key')
    _, csr_path = certs.make_node_csr(self.node_dir, 'edge-0', 'edge-pod',
                                      secagg_key)
    self.assertEqual(stat.S_IMODE(os.stat(secagg_key).st_mode), 0o600)
    ca = os.path.join(self.ca_dir, 'ca.crt')
    cert_path = os.path.join(self.node_dir, 'edge-0.crt')
    # A certificate for the node's key without it does not complete it.
    with open(os.path.join(self.node_dir, 'edge-0.key'), 'rb') as f:
      node_key = certs.serialization.load_pem_private_key(f.read(), None)
    plain = certs.issue_node_cert(self.ca, 'edge-0', role='edge-pod',
                                  public_key=node_key.public_key())
    with open(cert_path, 'wb') as f:
      f.write(plain.cert_pem())
    why = identity.problem(self.node_dir, 'edge-0', 'edge-pod', ca,
                           secagg_key=secagg_key)
    self.assertIn('certifies no SecAgg identity', why)
    # Signed from its CSR: complete, and the SecAgg roster takes it.
    with open(csr_path, 'rb') as f:
      cert = certs.sign_csr(self.ca, f.read(), 'edge-0', 'edge-pod')
    with open(cert_path, 'wb') as f:
      f.write(cert.public_bytes(certs.serialization.Encoding.PEM))
    self.assertIsNone(identity.problem(self.node_dir, 'edge-0', 'edge-pod',
                                       ca, secagg_key=secagg_key))
    roster = secagg_keys.CertificateRoster(self.ca.cert)
    certified = roster.identity('edge-0', secagg_keys.certificate_der(cert))
    own = secagg_keys.load_or_create_identity(secagg_key)
    self.assertEqual(secagg_keys.public_bytes(certified),
                     secagg_keys.public_bytes(own))
    # The program waits for exactly that, and then is ready.
    process = subprocess.run(
        [sys.executable, '-m', 'workers.identity', f'--dir={self.node_dir}',
         '--name=edge-0', '--role=edge-pod', f'--ca={ca}',
         f'--secagg_key={secagg_key}', '--wait_seconds=0'],
        cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=testutil.REPO_ROOT), check=False)
    self.assertEqual(process.returncode, 0, process.stderr)
    self.assertIn('is ready', process.stdout)


if __name__ == '__main__':
  absltest.main()
