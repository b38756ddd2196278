"""An edge pod: TFF's gRPC executor service over this pod's client shards.

    python -m workers.edge_pod --port=8000 --health_port=8001 \
        --data_dir=/data/shards --name=edge-0

The shards in --data_dir (a data_prep shard directory holding only this
pod's clients) are verified at start and never leave the pod: the executor
runs with --data_dir as its working directory, and training computations
read `clients/<id>.tfrecord` relative to it. Only client keys, model weights
and partial aggregates cross the network.

HTTP on --health_port: /healthz (the executor process is up), /readyz (it
answers gRPC), /manifest (this pod's manifest.json and its clients' SecAgg
public keys, for the edge server), and POST /control/secagg/masks (writes
this round's SecAgg masks of the named clients under
`<data_dir>/secagg/<tag>/`, where the round computation reads them). The
SecAgg secret (--secagg_key_file) never leaves the pod.
Prometheus /metrics on --metrics_port (workers.metrics: up, clients,
executor restarts, control calls).
SIGTERM stops the executor and exits 0. The executor dies with this process
(PR_SET_PDEATHSIG), so a killed pod leaves no orphan; if the executor alone
dies, it is restarted on the same port.

With --tls_dir (mutual TLS): --port is an nginx TLS terminator that requires
a client certificate from the cluster CA and forwards gRPC to the executor
and /control/ (manifest, SecAgg masks) to a loopback-only HTTP server; the
plain --health_port then serves only /healthz and /readyz (kubelet probes).
The executor's plaintext port must not be reachable from outside: with
--executor_netns it runs in a network namespace that only this pod can
route to (workers.local_cluster); on Kubernetes the pod's NetworkPolicy
admits only the TLS port.
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

from data_prep import manifest as manifest_lib
from data_prep.errors import DataPrepError
from data_prep.errors import UserError
from workers import health
from workers import metrics as metrics_lib
from workers import secagg_masks
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
_EXECUTOR_PORT = flags.DEFINE_integer(
    'executor_port', 0, 'With --tls_dir: the plaintext executor port behind '
    'the terminator (0: any free port).')
_EXECUTOR_NETNS = flags.DEFINE_string(
    'executor_netns', '', 'With --tls_dir: run the executor in this network '
    'namespace (reachable only from this pod at --executor_host).')
_EXECUTOR_HOST = flags.DEFINE_string(
    'executor_host', '127.0.0.1', 'Where the terminator reaches the executor.')
_RUN_DIR = flags.DEFINE_string(
    'run_dir', '', "The terminator's config, pid and temp files (default: a "
    'new temp dir).')
_METRICS_PORT = flags.DEFINE_integer(
    'metrics_port', 0, 'Serve Prometheus /metrics on this port (0: off).')
_SECAGG_KEY_FILE = flags.DEFINE_string(
    'secagg_key_file', '', "This pod's 32-byte SecAgg secret (e.g. a mounted "
    'K8s Secret). Empty: <data_dir>/secagg.key, created on first start.')


class EdgePod:
  """The executor service of one pod, kept alive, plus its health endpoint."""

  def __init__(self, name: str, data_dir: str, port: int, health_port: int,
               threads: int = 1, max_calls: int = -1, verify: bool = True,
               secagg_key_file: str = '',
               tls: Optional[tls_lib.TlsFiles] = None,
               executor_port: int = 0, executor_netns: str = '',
               executor_host: str = '127.0.0.1', run_dir: str = '',
               verify_at_start_max: int = manifest_lib.VERIFY_AT_START_MAX):
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
    self._keys = secagg_masks.PodKeys(
        secagg_masks.load_or_create_secret(
            secagg_key_file or os.path.join(self.manifest.shard_dir,
                                            'secagg.key')),
        self.manifest.client_ids())
    with open(os.path.join(self.manifest.shard_dir, manifest_lib.MANIFEST_FILE),
              encoding='utf-8') as f:
      self._manifest_raw = json.load(f)
    self._worker = worker_process.WorkerProcess(
        port=(executor_port or None) if tls else port,
        host=executor_host if tls else '127.0.0.1',
        cwd=self.manifest.shard_dir,
        max_concurrent_computation_calls=max_calls, intra_op_threads=threads,
        inter_op_threads=threads, log_path=worker_process.INHERIT_OUTPUT,
        netns=executor_netns or None)
    self.metrics = metrics_lib.PodMetrics(name, self._worker.alive,
                                          len(self.manifest.clients))
    probes = {'/healthz': self._healthz, '/readyz': self._readyz}
    control_get = {'/control/manifest': self.metrics.wrap_route(
        'manifest', self._manifest)}
    control_post = {'/control/secagg/masks': self.metrics.wrap_route(
        'secagg_masks', self._secagg_masks),
                    '/control/verify': self.metrics.wrap_route(
                        'verify', self._verify)}
    self._terminator = None
    self._control = None
    if tls is None:
      self._health = health.HealthServer(
          health_port, {**probes, **control_get,
                        '/manifest': control_get['/control/manifest']},
          post_routes=control_post)
    else:
      # Control calls only through the terminator (client cert checked).
      self._control = health.HealthServer(0, control_get, host='127.0.0.1',
                                          post_routes=control_post)
      self._health = health.HealthServer(health_port, probes)
      self._terminator = tls_terminator.NginxTerminator(
          port, tls, grpc_upstream=self._worker.target,
          http_upstream=f'127.0.0.1:{self._control.port}',
          run_dir=run_dir or tempfile.mkdtemp(prefix=f'{name}-tls-'))
    self._stopping = threading.Event()
    self.restarts = 0

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
                 'public_keys': self._keys.public_keys,
                 'held_out_clients': self.held_out_clients}

  def _verify(self, request):
    """Verifies the shards of request['clients'] not verified yet."""
    clients = [str(c) for c in (request or {}).get('clients') or []]
    foreign = sorted(set(clients) - set(self.manifest.client_ids()))
    if foreign:
      return 409, {'error': f'clients {foreign[:5]} {manifest_lib.NOT_HELD_MARKER}'}
    if self._verifier is None:
      return 200, {'verified': 0}
    try:
      return 200, {'verified': self._verifier.verify(clients)}
    except DataPrepError as e:
      logging.error('%s: %s', self.name, e)
      return 409, {'error': str(e)}

  def _secagg_masks(self, request):
    start = time.monotonic()
    try:
      reply = self._keys.prepare_round(self.manifest.shard_dir, request)
    except secagg_masks.SecAggError as e:
      logging.warning('%s: SecAgg mask request refused: %s', self.name, e)
      return 409, {'error': str(e)}
    reply['seconds'] = time.monotonic() - start
    return 200, reply

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
    pod = EdgePod(_NAME.value, _DATA_DIR.value, _PORT.value,
                  _HEALTH_PORT.value, _THREADS.value, _MAX_CALLS.value,
                  _VERIFY.value, _SECAGG_KEY_FILE.value,
                  tls_lib.TlsFiles.from_dir(_TLS_DIR.value, _NAME.value)
                  if _TLS_DIR.value else None,
                  _EXECUTOR_PORT.value, _EXECUTOR_NETNS.value,
                  _EXECUTOR_HOST.value, _RUN_DIR.value,
                  _VERIFY_AT_START_MAX.value)
    pod.start()
    if _METRICS_PORT.value:
      metrics_lib.serve(_METRICS_PORT.value, pod.metrics.registry)
  except (DataPrepError, worker_process.WorkerStartError, OSError,
          secagg_masks.SecAggError, UserError) as e:
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
  app.run(main)
