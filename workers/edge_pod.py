"""An edge pod: TFF's gRPC executor service over this pod's client shards.

    python -m workers.edge_pod --port=8000 --health_port=8001 \
        --data_dir=/data/shards --name=edge-0

The shards in --data_dir (a data_prep shard directory holding only this
pod's clients) are verified at start and never leave the pod: the executor
runs with --data_dir as its working directory, and training computations
read `clients/<id>.tfrecord` relative to it. Only client keys, model weights
and partial aggregates cross the network.

HTTP on --health_port: /healthz (the executor process is up), /readyz (it
answers gRPC), /manifest (this pod's manifest.json and its SecAgg party:
name, policy, readiness), and the SecAgg+ party of the pod
(workers.secagg_pod; docs/secagg.md): POST /control/secagg/round (stages
advertise, participants, reveals, survivors, signatures; a refusal is HTTP
409) and POST /control/secagg/mask (the forwarded shares; writes the pod's
mask under `<data_dir>/secagg/<tag>/`, where the round computation adds it
to the pod's sum). Its identity key (--secagg_identity_key, certified by the
pod's TLS certificate) and served-rounds record (--secagg_state) never
leave the pod; --secagg_threshold is the fewest pods it lets a sum cover.
Prometheus /metrics on --metrics_port (workers.metrics: up, clients,
executor restarts, control calls).
SIGTERM stops the executor and exits 0. The executor dies with this process
(PR_SET_PDEATHSIG), so a killed pod leaves no orphan; if the executor alone
dies, it is restarted on the same port.

With --tls_dir (mutual TLS): --port is an nginx TLS terminator that requires
a client certificate from the cluster CA with the edge-server role
(workers.certs) and forwards gRPC to the executor and /control/ (manifest,
SecAgg masks) to a loopback-only HTTP server; the plain --health_port then
serves only /healthz and /readyz, on loopback (probes run inside the pod:
`python -m workers.health_probe --probe=127.0.0.1:8001/readyz`). The executor
listens on loopback only (workers.worker_process: bind shim plus a check of
its sockets), so only this pod reaches it. Without --tls_dir the pod refuses
to start unless --insecure is given: then the manifest and control calls
are plaintext HTTP on --health_port and the executor takes --port on
loopback (callers on this host only: local_cluster --tls=false).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging

from data_prep import entry_point
from data_prep import manifest as manifest_lib
from data_prep.errors import DataPrepError
from data_prep.errors import UserError
from workers import health
from workers import metrics as metrics_lib
from workers import secagg_pod
from workers.secagg import messages as secagg_messages
from workers.secagg import policy as secagg_policy_lib
from workers import tls as tls_lib
from workers import tls_terminator
from workers import worker_process

_PORT = flags.DEFINE_integer('port', 8000, 'Port of the TFF executor service.')
_HEALTH_PORT = flags.DEFINE_integer(
    'health_port', 8001, 'Port of the HTTP /healthz, /readyz and /manifest.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, "This pod's shard directory (manifest.json + clients/).")
_NAME = flags.DEFINE_string('name', os.environ.get('HOSTNAME', 'edge'),
                            'Pod name, for logs and /manifest.')
_THREADS = flags.DEFINE_integer(
    'threads', 1, 'TF intra-op threads of the executor: one per pod keeps '
    'many pods on few cores from oversubscribing them.')
_MAX_CALLS = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Cap on concurrent computations in the executor (-1: no cap).')
_VERIFY = flags.DEFINE_bool(
    'verify_shards', True,
    'Check shards (size and sha256): all at start if the pod holds at most '
    f'{manifest_lib.VERIFY_AT_START_MAX} clients, else each when first '
    'sampled (POST /control/verify from the edge server).')
_VERIFY_AT_START_MAX = flags.DEFINE_integer(
    'verify_at_start_max', manifest_lib.VERIFY_AT_START_MAX,
    'With --verify_shards: check every shard at start if the pod holds at '
    'most this many clients; else each when first sampled.')
_TLS_DIR = flags.DEFINE_string(
    'tls_dir', '', 'Folder with ca.crt and <name>.crt/.key: serve only '
    'mutual TLS on --port (nginx in front of the executor).')
_CA_DIR = flags.DEFINE_string(
    'ca_dir', '', 'With --tls_dir: where ca.crt (and ca.crl) are, if not in '
    '--tls_dir (e.g. a ConfigMap; changes are picked up).')
_EXECUTOR_PORT = flags.DEFINE_integer(
    'executor_port', 0, 'With --tls_dir: the plaintext executor port behind '
    'the terminator, on loopback (0: any free port).')
_INSECURE = flags.DEFINE_bool(
    'insecure', False, 'Serve without TLS (no --tls_dir): plaintext manifest '
    'and control calls on --health_port, the executor on loopback --port. '
    'Without it a pod with no --tls_dir refuses to start.')
_HEALTH_HOST = flags.DEFINE_string(
    'health_host', None, 'Address of --health_port (default: 127.0.0.1 with '
    '--tls_dir, all interfaces with --insecure).')
_RUN_DIR = flags.DEFINE_string(
    'run_dir', '', "The terminator's config, pid and temp files (default: a "
    'new temp dir).')
_METRICS_PORT = flags.DEFINE_integer(
    'metrics_port', 0, 'Serve Prometheus /metrics on this port (0: off).')
_SECAGG_IDENTITY_KEY = flags.DEFINE_string(
    'secagg_identity_key', '', "This pod's Ed25519 SecAgg identity key, "
    'created 0600 at first start, never sent anywhere; its certificate is '
    'the pod\'s TLS certificate (workers.identity --secagg_key). Empty: '
    '<data_dir>/secagg-identity.key.')
_SECAGG_STATE = flags.DEFINE_string(
    'secagg_state', '', 'The record of the SecAgg rounds this pod served '
    '(refuses replays across restarts; keep it on the persistent volume). '
    'Empty: <data_dir>/secagg-state.json.')
_SECAGG_THRESHOLD = flags.DEFINE_integer(
    'secagg_threshold', secagg_policy_lib.DEFAULT_MIN_PARTIES,
    'SecAgg: the fewest pods whose inputs a released sum may cover; this pod '
    'refuses smaller participant and survivor lists. At least 2.')
_SECAGG_NEIGHBORS = flags.DEFINE_integer(
    'secagg_neighbors', 0, 'SecAgg+: neighbours per pod (0: '
    'min(n - 1, 2 ceil(log2 n)) for n pods).')
_SECAGG_QUORUM = flags.DEFINE_float(
    'secagg_quorum', 0.0, 'SecAgg+: fraction of the pods whose signatures on '
    'one survivor list this pod needs before it reveals shares (0: 2/3; at '
    'least 0.5).')


class EdgePod:
  """The executor service of one pod, kept alive, plus its health endpoint."""

  def __init__(self, name: str, data_dir: str, port: int, health_port: int,
               threads: int = 1, max_calls: int = -1, verify: bool = True,
               secagg_identity_key: str = '',
               tls: Optional[tls_lib.TlsFiles] = None,
               executor_port: int = 0, run_dir: str = '',
               insecure: bool = False, health_host: Optional[str] = None,
               secagg_policy=None, secagg_state: str = '',
               verify_at_start_max: int = manifest_lib.VERIFY_AT_START_MAX):
    if tls is None and not insecure:
      raise UserError(f'edge pod {name}: no TLS files; give --tls_dir, or '
                      '--insecure to serve plaintext on a trusted network')
    if tls is not None and insecure:
      raise UserError(f'edge pod {name}: --insecure and --tls_dir contradict '
                      'each other; drop one')
    self.name = name
    self.manifest = manifest_lib.load_manifest(data_dir)
    held_out = manifest_lib.load_held_out(self.manifest)
    self.held_out_clients = self._held_out_clients(held_out)
    # Start-up does no per-client work beyond reading the manifest unless
    # the pod holds few clients (then a bad shard stops it at once).
    self._verifier = (manifest_lib.ShardVerifier(self.manifest, held_out)
                      if verify else None)
    if self._verifier is not None:
      self._verifier.verify_if_few(verify_at_start_max)
    try:
      self.secagg = secagg_pod.PodParty(
          name, self.manifest.shard_dir,
          secagg_policy or secagg_policy_lib.Policy(),
          secagg_identity_key, secagg_state,
          secagg_pod.CaFiles(tls.cert, tls.ca, tls.crl) if tls else None)
    except (ValueError, secagg_messages.ProtocolError) as e:
      raise UserError(f'edge pod {name}: SecAgg: {e}') from None
    with open(os.path.join(self.manifest.shard_dir, manifest_lib.MANIFEST_FILE),
              encoding='utf-8') as f:
      self._manifest_raw = json.load(f)
    # Never beyond loopback: without TLS (--insecure) it takes --port, for
    # callers on this host only (e.g. local_cluster --tls=false).
    self._worker = worker_process.WorkerProcess(
        port=(executor_port or None) if tls else port,
        cwd=self.manifest.shard_dir,
        max_concurrent_computation_calls=max_calls, intra_op_threads=threads,
        inter_op_threads=threads, log_path=worker_process.INHERIT_OUTPUT)
    self.metrics = metrics_lib.PodMetrics(name, self._worker.alive,
                                          len(self.manifest.clients))
    probes = {'/healthz': self._healthz, '/readyz': self._readyz}
    control_get = {'/control/manifest': self.metrics.wrap_route(
        'manifest', self._manifest)}
    control_post = {
        '/control/secagg/round': self.metrics.wrap_route(
            'secagg_round', self.secagg.round),
        '/control/secagg/mask': self.metrics.wrap_route(
            'secagg_mask', self.secagg.mask),
        '/control/verify': self.metrics.wrap_route('verify', self._verify)}
    self._terminator = None
    self._control = None
    if tls is None:
      self._health = health.HealthServer(
          health_port, {**probes, **control_get,
                        '/manifest': control_get['/control/manifest']},
          host='' if health_host is None else health_host,
          post_routes=control_post)
    else:
      # Control calls only through the terminator (client cert and role
      # checked); probes on loopback (run inside the pod).
      self._control = health.HealthServer(0, control_get, host='127.0.0.1',
                                          post_routes=control_post)
      self._health = health.HealthServer(
          health_port, probes,
          host='127.0.0.1' if health_host is None else health_host)
      self._terminator = tls_terminator.NginxTerminator(
          port, tls, grpc_upstream=self._worker.target,
          http_upstream=f'127.0.0.1:{self._control.port}',
          run_dir=run_dir or tempfile.mkdtemp(prefix=f'{name}-tls-'))
    self._stopping = threading.Event()
    self.restarts = 0
    self.tls = tls
    self._tls_stamp = tls.fingerprint() if tls else None
    self._tls_failed_stamp = None

  def _healthz(self):
    # Live while this loop runs; a dead executor is restarted, not fatal.
    return 200, {'pod': self.name, 'executor_alive': self._worker.alive(),
                 'restarts': self.restarts}

  def _readyz(self):
    ready = self._worker.ready()
    return (200 if ready else 503), {'pod': self.name, 'ready': ready,
                                     'clients': len(self.manifest.clients)}

  def _held_out_clients(self, held_out: Optional[manifest_lib.Manifest]
                        ) -> list[str]:
    """Clients with held-out shards in held_out/ (evaluated on this pod)."""
    if held_out is None:
      return []
    strangers = sorted(set(held_out.client_ids()) - set(self.manifest.client_ids()))
    if strangers:
      raise DataPrepError(
          f'{held_out.shard_dir} holds held-out data of clients this pod does not '
          f'hold ({", ".join(strangers[:5])}); place the pod\'s data again '
          '(workers.pod_data)')
    return held_out.client_ids()

  def _manifest(self):
    return 200, {'pod': self.name, 'manifest': self._manifest_raw,
                 'secagg': self.secagg.describe(),
                 'held_out_clients': self.held_out_clients}

  def _verify(self, request):
    """Verifies the shards of request['clients'] not verified yet."""
    clients = [str(c) for c in (request or {}).get('clients') or []]
    foreign = sorted(set(clients) - set(self.manifest.client_ids()))
    if foreign:
      return 409, {'error': f'clients {foreign[:5]} '
                            f'{manifest_lib.NOT_HELD_MARKER}'}
    if self._verifier is None:
      return 200, {'verified': 0}
    try:
      return 200, {'verified': self._verifier.verify(clients)}
    except DataPrepError as e:
      logging.error('%s: %s', self.name, e)
      return 409, {'error': str(e)}

  def start(self) -> 'EdgePod':
    self._worker.start()
    if self._terminator is not None:
      self._control.start()
      self._terminator.start()
    self._health.start()
    logging.info('%s: serving %d clients from %s; executor on %s%s, health '
                 'on :%d', self.name, len(self.manifest.clients),
                 self.manifest.shard_dir, self._worker.target,
                 f' behind mutual TLS on :{self._terminator.port}'
                 if self._terminator else '', self._health.port)
    return self

  def supervise(self, poll: float = 0.5) -> None:
    """Restarts the executor if it dies, until stop()."""
    while not self._stopping.wait(poll):
      if not self._worker.alive():
        self.restarts += 1
        self.metrics.executor_restarts.inc()
        logging.warning('%s: executor exited; restarting (restart %d)',
                        self.name, self.restarts)
        try:
          self._worker.start()
        except worker_process.WorkerStartError as e:
          logging.error('%s: %s', self.name, e)
          time.sleep(2)
      if self._terminator is not None and not self._terminator.alive():
        logging.warning('%s: TLS terminator exited; restarting', self.name)
        try:
          self._terminator.start()
        except tls_terminator.TerminatorError as e:
          logging.error('%s: %s', self.name, e)
          time.sleep(2)
      if self._terminator is not None:
        self._follow_rotation()

  def _follow_rotation(self) -> None:
    """Reloads the terminator when certificate, key, CA or CRL change."""
    stamp = self.tls.fingerprint()
    if stamp == self._tls_stamp:
      return
    try:
      self._terminator.reload()
    except (tls_lib.TlsError, tls_terminator.TerminatorError) as e:
      # E.g. the key is written and the certificate not yet: next poll.
      if stamp != self._tls_failed_stamp:
        logging.warning('%s: TLS files changed but not reloaded: %s',
                        self.name, e)
        self._tls_failed_stamp = stamp
      return
    self._tls_stamp = stamp
    logging.info('%s: TLS files changed; terminator reloaded', self.name)

  def stop(self) -> None:
    self._stopping.set()
    if self._terminator is not None:
      self._terminator.stop()
      self._control.stop()
    self._worker.stop()
    self._health.stop()
    logging.info('%s: stopped', self.name)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _DATA_DIR.value:
    print('error: --data_dir is required: the shard directory holding this '
          "pod's clients", file=sys.stderr)
    return 2
  try:
    try:
      policy = secagg_pod.policy_from_flags(
          _SECAGG_THRESHOLD.value, _SECAGG_NEIGHBORS.value,
          _SECAGG_QUORUM.value)
    except ValueError as e:
      raise UserError(f'--secagg_*: {e}') from None
    pod = EdgePod(_NAME.value, _DATA_DIR.value, _PORT.value,
                  _HEALTH_PORT.value, _THREADS.value, _MAX_CALLS.value,
                  _VERIFY.value, _SECAGG_IDENTITY_KEY.value,
                  tls_lib.TlsFiles.from_dir(_TLS_DIR.value, _NAME.value,
                                            ca_dir=_CA_DIR.value or None)
                  if _TLS_DIR.value else None,
                  _EXECUTOR_PORT.value, _RUN_DIR.value, _INSECURE.value,
                  _HEALTH_HOST.value, policy, _SECAGG_STATE.value,
                  _VERIFY_AT_START_MAX.value)
    pod.start()
    if _METRICS_PORT.value:
      metrics_lib.serve(_METRICS_PORT.value, pod.metrics.registry,
                        tls=pod.tls)
  except (DataPrepError, worker_process.WorkerStartError, OSError,
          UserError) as e:
    print(f'error: edge pod {_NAME.value}: {e}', file=sys.stderr)
    return 2

  def on_signal(signum, frame):
    del frame
    logging.info('%s: signal %d, shutting down', pod.name, signum)
    pod._stopping.set()  # pylint: disable=protected-access

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  pod.supervise()
  pod.stop()
  return 0


if __name__ == '__main__':
  logging.set_stderrthreshold('info')
  entry_point.run(main)
