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
SIGTERM stops the executor and exits 0. The executor dies with this process
(PR_SET_PDEATHSIG), so a killed pod leaves no orphan; if the executor alone
dies, it is restarted on the same port.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging

from data_prep import manifest as manifest_lib
from data_prep.errors import DataPrepError
from workers import health
from workers import secagg_masks
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
_VERIFY = flags.DEFINE_bool('verify_shards', True,
                            'Check every shard sha256 at start.')
_SECAGG_KEY_FILE = flags.DEFINE_string(
    'secagg_key_file', '', "This pod's 32-byte SecAgg secret (e.g. a mounted "
    'K8s Secret). Empty: <data_dir>/secagg.key, created on first start.')


class EdgePod:
  """The executor service of one pod, kept alive, plus its health endpoint."""

  def __init__(self, name: str, data_dir: str, port: int, health_port: int,
               threads: int = 1, max_calls: int = -1, verify: bool = True,
               secagg_key_file: str = ''):
    self.name = name
    self.manifest = manifest_lib.load_manifest(data_dir)
    if verify:
      manifest_lib.verify_shards(self.manifest)
    self._keys = secagg_masks.PodKeys(
        secagg_masks.load_or_create_secret(
            secagg_key_file or os.path.join(self.manifest.shard_dir,
                                            'secagg.key')),
        self.manifest.client_ids())
    with open(os.path.join(self.manifest.shard_dir, manifest_lib.MANIFEST_FILE),
              encoding='utf-8') as f:
      self._manifest_raw = json.load(f)
    self._worker = worker_process.WorkerProcess(
        port=port, host='127.0.0.1', cwd=self.manifest.shard_dir,
        max_concurrent_computation_calls=max_calls, intra_op_threads=threads,
        inter_op_threads=threads, log_path=worker_process.INHERIT_OUTPUT)
    self._health = health.HealthServer(health_port, {
        '/healthz': self._healthz,
        '/readyz': self._readyz,
        '/manifest': lambda: (200, {'pod': self.name,
                                    'manifest': self._manifest_raw,
                                    'public_keys': self._keys.public_keys}),
    }, post_routes={'/control/secagg/masks': self._secagg_masks})
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
    self._health.start()
    logging.info('%s: serving %d clients from %s; executor on :%d, health on '
                 ':%d', self.name, len(self.manifest.clients),
                 self.manifest.shard_dir, self._worker.port, self._health.port)
    return self

  def supervise(self, poll: float = 0.5) -> None:
    """Restarts the executor if it dies, until stop()."""
    while not self._stopping.wait(poll):
      if not self._worker.alive():
        self.restarts += 1
        logging.warning('%s: executor exited; restarting (restart %d)',
                        self.name, self.restarts)
        try:
          self._worker.start()
        except worker_process.WorkerStartError as e:
          logging.error('%s: %s', self.name, e)
          time.sleep(2)

  def stop(self) -> None:
    self._stopping.set()
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
                  _VERIFY.value, _SECAGG_KEY_FILE.value)
    pod.start()
  except (DataPrepError, worker_process.WorkerStartError, OSError,
          secagg_masks.SecAggError) as e:
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
