"""The federation's state: each node of the topology, asked how it is.

For every edge server and pod of the topology file (workers/topology.py):
  * its plain health port: /healthz (is the process up; a pod: is its
    executor alive, how often it restarted) and /readyz (a pod: how many
    clients it holds);
  * with `tls_dir` (mutual TLS): a TLS handshake on the node's TLS port
    (a pod's nginx terminator, an edge server's gRPC port), with a client
    certificate of the cluster CA. The certificate the node presents
    (verified against the CA and the node's name) is its TLS identity:
    subject, issuer, expiry, SHA-256 fingerprint. Nothing beyond the
    handshake is asked: pods serve their control routes only to edge
    servers (workers.tls.CALLERS).
With TLS the health ports listen on the node's loopback (docs/zero-trust.md),
so from another host only the handshake answers. A node is `up` when what
can be reached works, `degraded` when the process answers but something
else does not (executor restarting, not ready, TLS refused), and `down`
when nothing answers at all. Problems are reported per node,
in place; nothing here raises for a node or a missing topology.

`annotate` adds what the training run says about each node (the run's
metrics.jsonl): its last round's seconds, its failures, the clients sampled.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import os
import socket
import ssl
import threading
import time
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tff_pipeline.dashboard import runs as runs_lib
from data_prep.errors import UserError
from workers import health
from workers import tls as tls_lib
from workers import topology as topology_lib

_MAX_CHECKS = 16  # Nodes asked at once.


def identity_of(der: bytes) -> dict[str, Any]:
  """What the dashboard shows of a certificate (no key material)."""
  cert = x509.load_der_x509_certificate(der)

  def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()

  try:
    sans = [str(v.value) for v in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value]
  except x509.ExtensionNotFound:
    sans = []
  return {'subject': common_name(cert.subject),
          'issuer': common_name(cert.issuer),
          'not_after': cert.not_valid_after_utc.strftime('%Y-%m-%d %H:%M UTC'),
          'expired': cert.not_valid_after_utc < datetime.datetime.now(
              datetime.timezone.utc),
          'sha256': hashlib.sha256(der).hexdigest(),
          'sans': sans}


def _reason(error: BaseException) -> str:
  """A short description of a connection failure."""
  if isinstance(error, ssl.SSLCertVerificationError):
    return f'certificate not accepted: {error.verify_message}'
  if isinstance(error, ssl.SSLError):
    return f'TLS failed: {error.reason or error}'
  reason = getattr(error, 'reason', None)  # urllib.error.URLError
  if isinstance(reason, BaseException):
    error = reason
  if isinstance(error, (socket.timeout, TimeoutError)):
    return 'no answer (timed out)'
  if isinstance(error, ConnectionRefusedError):
    return 'connection refused'
  return getattr(error, 'strerror', None) or str(error) or type(error).__name__


def _tls_socket(address: str, context: ssl.SSLContext, server_name: str,
                timeout: float) -> ssl.SSLSocket:
  host, port = address.rsplit(':', 1)
  sock = socket.create_connection((host, int(port)), timeout=timeout)
  try:
    return context.wrap_socket(sock, server_hostname=server_name)
  except BaseException:
    sock.close()
    raise


def tls_handshake(address: str, context: ssl.SSLContext, server_name: str,
                  timeout: float) -> bytes:
  """Completes a mutual-TLS handshake; returns the server's cert (DER)."""
  with _tls_socket(address, context, server_name, timeout) as sock:
    return sock.getpeercert(binary_form=True)


def _node(name: str, role: str, address: str, health_address: str
          ) -> dict[str, Any]:
  return {'name': name, 'role': role, 'address': address,
          'health': health_address, 'state': 'down', 'problems': [],
          'clients': None, 'identity': None}


class Federation:
  """Checks the nodes of a topology file; results are reused for `ttl` s."""

  def __init__(self, topology_path: Optional[str], tls_dir: str = '',
               tls_name: str = 'coordinator', timeout: float = 2.0,
               ttl: float = 2.0):
    self.topology_path = topology_path
    self._tls_dir = tls_dir
    self.tls_name = tls_name
    self._timeout = timeout
    self._ttl = ttl
    self._lock = threading.Lock()
    self._last: Optional[tuple[float, dict[str, Any]]] = None
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=_MAX_CHECKS, thread_name_prefix='check')

  def snapshot(self) -> dict[str, Any]:
    """Every node's state (at most `ttl` seconds old)."""
    with self._lock:  # One check at a time; concurrent callers share it.
      if self._last is not None and time.monotonic() - self._last[0] < self._ttl:
        return self._last[1]
      result = self._check()
      self._last = (time.monotonic(), result)
      return result

  def _check(self) -> dict[str, Any]:
    out: dict[str, Any] = {'topology': self.topology_path, 'problem': None,
                           'tls': False, 'tls_problem': None,
                           'tls_name': self.tls_name, 'edge_servers': [],
                           'coordinator_identity': None,
                           'checked_at': time.time()}
    if not self.topology_path:
      out['problem'] = ('no --topology given: start the dashboard with '
                        '--topology=<file> to see the edge servers and pods')
      return out
    try:
      topology = topology_lib.load(self.topology_path)
    except UserError as e:
      out['problem'] = str(e)
      return out
    tls_dir = self._tls_dir or topology.tls_dir or ''
    out['tls'] = bool(tls_dir)
    context = grpc_context = None
    if tls_dir:
      try:
        files = tls_lib.TlsFiles.from_dir(tls_dir, self.tls_name)
        context = tls_lib.client_ssl_context(files)
        grpc_context = tls_lib.client_ssl_context(files)
        grpc_context.set_alpn_protocols(['h2'])  # gRPC speaks HTTP/2 only.
      except UserError as e:
        out['tls_problem'] = (f'cannot check the nodes over mutual TLS as '
                              f'{self.tls_name!r}: {e}')
      coordinator_cert = os.path.join(tls_dir, 'coordinator.crt')
      try:
        with open(coordinator_cert, 'rb') as f:
          out['coordinator_identity'] = identity_of(
              x509.load_pem_x509_certificate(f.read()).public_bytes(
                  serialization.Encoding.DER))
      except (OSError, ValueError):
        pass
    futures = {}
    for server in topology.edge_servers:
      futures[server.name] = self._pool.submit(self._check_server, server,
                                               grpc_context, bool(tls_dir))
      for pod in server.pods:
        futures[pod.name] = self._pool.submit(self._check_pod, pod, context,
                                              bool(tls_dir))
    for server in topology.edge_servers:
      node = futures[server.name].result()
      node['pods'] = [futures[p.name].result() for p in server.pods]
      known = [p['clients'] for p in node['pods'] if p['clients'] is not None]
      node['clients'] = sum(known) if known else None
      out['edge_servers'].append(node)
    return out

  def _health(self, node: dict[str, Any], path: str, quiet: bool = False
              ) -> Optional[tuple[int, Any]]:
    """The health route's answer; None if unreachable (a problem unless
    `quiet`: with TLS the port is on the node's loopback)."""
    try:
      return health.get_json(node['health'], path, self._timeout)
    except (OSError, ValueError) as e:
      if not quiet:
        node['problems'].append(f'{path} on {node["health"]}: {_reason(e)}')
      else:
        node['notes'] = [f'{path} on {node["health"]} not reachable from '
                         'here (loopback-only with TLS)']
      return None

  def _check_pod(self, pod: topology_lib.Pod,
                 context: Optional[ssl.SSLContext], tls: bool
                 ) -> dict[str, Any]:
    node = _node(pod.name, 'pod', pod.address, pod.health)
    answer = self._health(node, '/healthz', quiet=tls)
    if answer is not None:
      status, body = answer
      body = body if isinstance(body, dict) else {}
      node['restarts'] = body.get('restarts')
      if status != 200:
        node['problems'].append(f'/healthz answered HTTP {status}')
      elif body.get('executor_alive') is False:
        node['problems'].append('its executor is not running (restarting)')
      ready = self._health(node, '/readyz')
      if ready is not None:
        status, body = ready
        if isinstance(body, dict) and isinstance(body.get('clients'), int):
          node['clients'] = body['clients']
        if status != 200:
          node['problems'].append('not ready (its executor does not answer)')
    return self._finish(node, answer is not None, pod.address, pod.name,
                        context if tls else None)

  def _finish(self, node: dict[str, Any], health_answered: bool,
              address: str, name: str, context: Optional[ssl.SSLContext]
              ) -> dict[str, Any]:
    """Adds the TLS identity and the state."""
    handshake = False
    if context is not None:
      try:
        node['identity'] = identity_of(tls_handshake(
            address, context, name, self._timeout))
        handshake = True
      except (OSError, ValueError) as e:
        node['problems'].append(f'mutual TLS to {address}: {_reason(e)}')
    if not health_answered and not handshake:
      return node  # down
    node['state'] = 'degraded' if node['problems'] else 'up'
    return node

  def _check_server(self, server: topology_lib.EdgeServer,
                    context: Optional[ssl.SSLContext], tls: bool
                    ) -> dict[str, Any]:
    node = _node(server.name, 'edge_server', server.address, server.health)
    answer = self._health(node, '/healthz', quiet=tls)
    if answer is not None and answer[0] != 200:
      node['problems'].append(f'/healthz answered HTTP {answer[0]}')
    return self._finish(node, answer is not None, server.address,
                        server.name, context if tls else None)


def annotate(snapshot: dict[str, Any], run: Optional[runs_lib.Run]
             ) -> dict[str, Any]:
  """The snapshot plus the coordinator and what `run` says of each node.

  Per pod: `last_seconds` (its part of the last round it ran, from
  `pod_seconds`), `failures` (rounds it was left out of) and
  `last_failure`; per edge server the same for failures of the server
  itself, and `last_seconds` as its slowest pod's in the last round.
  """
  out = dict(snapshot)
  rows = run.rows if run is not None else []
  failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}
  for row in rows:
    for failure in row.get('failures') or ():
      who = failure.get('pod') or failure.get('edge_server')
      failures.setdefault(who, []).append((row['round'], failure))
  last_seconds: dict[str, tuple[int, float]] = {}
  for row in rows:
    for pod, seconds in (row.get('pod_seconds') or {}).items():
      last_seconds[pod] = (row['round'], seconds)
  last_round = rows[-1]['round'] if rows else None

  def add_run_facts(node: dict[str, Any]) -> None:
    mine = failures.get(node['name'], [])
    node['failures'] = len(mine)
    node['failures_last_round'] = sum(1 for r, _ in mine if r == last_round)
    if mine:
      round_num, failure = mine[-1]
      node['last_failure'] = {'round': round_num,
                              'kind': failure.get('kind'),
                              'error': str(failure.get('error', ''))[:200]}

  servers = []
  for server in snapshot.get('edge_servers', []):
    server = dict(server)
    add_run_facts(server)
    pods = []
    for pod in server.get('pods', []):
      pod = dict(pod)
      add_run_facts(pod)
      if pod['name'] in last_seconds:
        pod['last_seconds_round'], pod['last_seconds'] = last_seconds[pod['name']]
      pods.append(pod)
    server['pods'] = pods
    in_last = [p['last_seconds'] for p in pods if last_round is not None
               and p.get('last_seconds_round') == last_round]
    if in_last:
      server['last_seconds'] = max(in_last)
    servers.append(server)
  out['edge_servers'] = servers
  coordinator = {'name': 'coordinator', 'role': 'coordinator',
                 'identity': snapshot.get('coordinator_identity'),
                 'problems': [], 'run': None, 'state': 'idle'}
  if run is not None:
    coordinator['run'] = run.name
    coordinator['run_state'] = run.state
    coordinator['state'] = {'live': 'up', 'finished': 'idle',
                            'stopped': 'down'}[run.state]
    if run.state == 'stopped':
      coordinator['problems'].append(
          f'run {run.name} stopped before finishing (no summary.json, no '
          'write for a while): the coordinator died or was stopped')
    if rows:
      last = rows[-1]
      coordinator['round'] = last['round']
      coordinator['last_seconds'] = last.get('round_seconds')
      clients = last.get('clients')
      coordinator['sampled'] = (len(clients) if isinstance(clients, list)
                                else None)
    coordinator['rounds'] = (run.config or {}).get('rounds')
    coordinator['failures'] = sum(len(r.get('failures') or ()) for r in rows)
  known = [s['clients'] for s in servers if s.get('clients') is not None]
  coordinator['clients'] = sum(known) if known else None
  out['coordinator'] = coordinator
  return out


def pick_run(folder: runs_lib.RunsFolder, topology_path: Optional[str],
             name: Optional[str] = None) -> Optional[runs_lib.Run]:
  """The run to show on the federation page.

  `name` if given; else the newest remote run trained on this topology
  file; else the newest remote run.
  """
  if name:
    return folder.read(name)
  remote = [r for r in folder.all()
            if (r.config or {}).get('executor') == 'remote']
  if topology_path:
    wanted = os.path.realpath(topology_path)
    same = [r for r in remote
            if os.path.realpath((r.config or {}).get('topology') or '') == wanted]
    if same:
      return same[0]
  return remote[0] if remote else None
