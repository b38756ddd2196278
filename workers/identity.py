"""A node's identity, born on the node: its key, its CSR, then its certificate.

    python -m workers.identity --dir=/data/identity --name=edge-0 \
        --role=edge-pod --ca=/ca/ca.crt --wait_seconds=86400 \
        [--secagg_key=/data/identity/secagg-identity.key]

On first start this makes <dir>/<name>.key (EC P-256, 0600; it never leaves
the node) and <dir>/<name>.csr (with --secagg_key, an edge pod's SecAgg
identity key too, Ed25519, 0600, certified by the same CSR; see
workers.certs), and prints the CSR (so that the operator can
read it with `kubectl logs` or `kubectl exec ... cat`). It then waits until
<dir>/<name>.crt appears (put there by whoever holds the CA: k8s/sign_csrs.sh
after a Kubernetes CertificateSigningRequest is approved, or by hand with
`python -m workers.certs sign`) and exits 0 once that certificate fits: the
key's, signed by --ca, valid now, with this name and role. On a restart with
a good certificate it exits 0 at once (and prints a fresh CSR for renewal
when fewer than --renew_days remain).

Exit status: 0 ready, 1 no fitting certificate in time, 2 bad arguments.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Optional

from absl import app
from absl import flags
from cryptography import x509

from data_prep import entry_point
from workers import certs
from workers import tls
from workers.secagg import keys as secagg_keys
from workers.secagg import messages as secagg_messages

FLAGS = flags.FLAGS


def define_flags() -> None:
  """--dir, --name, --role, --secagg_key (workers.certs'), --ca,
  --wait_seconds, --renew_days; only when run as a program."""
  certs.define_command_flags()
  flags.DEFINE_string('ca', None, 'The cluster CA certificate (public).')
  flags.DEFINE_float('wait_seconds', 0.0,
                     'How long to wait for the certificate.')
  flags.DEFINE_integer(
      'renew_days', 30, 'Print a CSR for renewal when the certificate has '
      'fewer days left than this.')


_POLL_SECONDS = 2.0


def problem(directory: str, name: str, role: str, ca: str,
            now: Optional[datetime.datetime] = None,
            secagg_key: Optional[str] = None) -> Optional[str]:
  """Why <directory>/<name>.crt is not yet this node's certificate (or None).

  With `secagg_key`, the certificate must also certify that SecAgg identity.
  """
  files = tls.TlsFiles(ca=ca, cert=os.path.join(directory, f'{name}.crt'),
                       key=os.path.join(directory, f'{name}.key'))
  if not os.path.exists(files.cert):
    return f'no certificate yet at {files.cert}'
  try:
    files.validate(now)
    got = files.identity()
  except tls.TlsError as e:
    return str(e)
  if got != (role, name):
    return f'{files.cert} is for {got[0]} {got[1]}, not {role} {name}'
  if secagg_key:
    return secagg_problem(files.cert, name, secagg_key)
  return None


def secagg_problem(cert_path: str, name: str, secagg_key: str
                   ) -> Optional[str]:
  """Why the certificate does not certify the SecAgg key (or None)."""
  with open(cert_path, 'rb') as f:
    cert = x509.load_pem_x509_certificate(f.read())
  try:
    certified = secagg_keys.parse_identity_extension(
        cert.extensions, name, cert.public_key())
  except secagg_messages.Refused as e:
    return f'{cert_path}: {e}'
  if certified is None:
    return f'{cert_path} certifies no SecAgg identity (signed from an older CSR)'
  own = secagg_keys.load_or_create_identity(secagg_key)
  if secagg_keys.public_bytes(certified) != secagg_keys.public_bytes(own):
    return f'{cert_path} certifies another SecAgg identity than {secagg_key}'
  return None


def days_left(directory: str, name: str) -> float:
  with open(os.path.join(directory, f'{name}.crt'), 'rb') as f:
    cert = x509.load_pem_x509_certificate(f.read())
  left = cert.not_valid_after_utc - datetime.datetime.now(
      datetime.timezone.utc)
  return left.total_seconds() / 86400


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    for flag in ('dir', 'name', 'role', 'ca'):
      if not FLAGS[flag].value:
        raise certs.CertError(f'--{flag} is required')
    directory, name, role = FLAGS.dir, FLAGS.name, FLAGS.role
    secagg_key = FLAGS.secagg_key
    _, csr_path = certs.make_node_csr(directory, name, role, secagg_key)
  except (certs.CertError, OSError) as e:
    print(f'error: identity: {e}', file=sys.stderr)
    return 2
  why = problem(directory, name, role, FLAGS.ca, secagg_key=secagg_key)
  if why is None:
    if days_left(directory, name) < FLAGS.renew_days:
      print(f'identity: {name}: certificate expires in '
            f'{days_left(directory, name):.0f} days; CSR for renewal '
            f'({csr_path}):', flush=True)
      with open(csr_path, encoding='ascii') as f:
        print(f.read(), end='', flush=True)
    print(f'identity: {name} ({role}) is ready', flush=True)
    return 0
  with open(csr_path, encoding='ascii') as f:
    print(f'identity: {name} ({role}) waits for its certificate: {why}. '
          f'Its CSR ({csr_path}); sign it with k8s/sign_csrs.sh or '
          '`python -m workers.certs sign`:', flush=True)
    print(f.read(), end='', flush=True)
  deadline = time.monotonic() + FLAGS.wait_seconds
  last = why
  while time.monotonic() < deadline:
    time.sleep(_POLL_SECONDS)
    why = problem(directory, name, role, FLAGS.ca, secagg_key=secagg_key)
    if why is None:
      print(f'identity: {name} ({role}) is ready', flush=True)
      return 0
    if why != last:
      print(f'identity: {name}: {why}', file=sys.stderr, flush=True)
      last = why
  print(f'error: identity: {name}: {why}; run k8s/sign_csrs.sh (or '
        '`python -m workers.certs sign`) and put the certificate at '
        f'{os.path.join(directory, name + ".crt")}', file=sys.stderr)
  return 1


if __name__ == '__main__':
  define_flags()
  entry_point.run(main)
