#!/usr/bin/env python3
"""Kubernetes CertificateSigningRequest objects for the edge pods' own CSRs.

    python3 k8s/csr_object.py request --csr=edge-0.csr --node=edge-0 \
        [--role=edge-pod] [--days=365]        > csr.json  (kubectl create -f)
    kubectl get csr NAME -o json | \
        python3 k8s/csr_object.py status --cert=edge-0.crt  (kubectl replace
        --raw /apis/certificates.k8s.io/v1/certificatesigningrequests/NAME/status -f -)

The object carries the pod's CSR (public key, name, role: nothing secret)
under the signer name tff-edge.io/node, which no built-in controller signs:
an operator approves it (`kubectl certificate approve`), and k8s/sign_csrs.sh
signs approved ones with the offline CA and writes the certificate into the
object's status, as a signer does (see k8s/README.md, "Secrets").
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys

SIGNER = 'tff-edge.io/node'
_NODE = re.compile(r'[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?')


def request_object(csr_pem: bytes, node: str, role: str,
                   days: int) -> dict:
  """The CertificateSigningRequest for `node`'s CSR."""
  if not _NODE.fullmatch(node):
    raise ValueError(f'node name {node!r} is not a DNS label')
  if b'-----BEGIN CERTIFICATE REQUEST-----' not in csr_pem:
    raise ValueError('not a PEM certificate signing request')
  digest = hashlib.sha256(csr_pem).hexdigest()[:10]
  return {
      'apiVersion': 'certificates.k8s.io/v1',
      'kind': 'CertificateSigningRequest',
      'metadata': {
          # One object per CSR: a renewed key gets a new one.
          'name': f'tff-edge-{node}-{digest}',
          'labels': {'app.kubernetes.io/name': 'tff-edge',
                     'tff-edge.io/node': node, 'tff-edge.io/role': role},
      },
      'spec': {
          'request': base64.b64encode(csr_pem).decode(),
          'signerName': SIGNER,
          'expirationSeconds': days * 86400,
          'usages': ['digital signature', 'server auth', 'client auth'],
      },
  }


def with_certificate(obj: dict, cert_pem: bytes) -> dict:
  """`obj` (as read from the API) with status.certificate set."""
  if obj.get('kind') != 'CertificateSigningRequest':
    raise ValueError('not a CertificateSigningRequest object')
  approved = any(c.get('type') == 'Approved' and c.get('status') == 'True'
                 for c in (obj.get('status') or {}).get('conditions', []))
  if not approved:
    raise ValueError(f'{obj["metadata"]["name"]} is not approved; '
                     f'kubectl certificate approve {obj["metadata"]["name"]}')
  obj = dict(obj)
  obj['status'] = dict(obj.get('status') or {},
                       certificate=base64.b64encode(cert_pem).decode())
  return obj


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  request = sub.add_parser('request')
  request.add_argument('--csr', required=True)
  request.add_argument('--node', required=True)
  request.add_argument('--role', default='edge-pod')
  request.add_argument('--days', type=int, default=365)
  status = sub.add_parser('status')
  status.add_argument('--cert', required=True)
  args = parser.parse_args(argv[1:])
  try:
    if args.command == 'request':
      with open(args.csr, 'rb') as f:
        out = request_object(f.read(), args.node, args.role, args.days)
    else:
      with open(args.cert, 'rb') as f:
        out = with_certificate(json.load(sys.stdin), f.read())
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  json.dump(out, sys.stdout, indent=2)
  print()
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
