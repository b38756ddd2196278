"""An edge server: runs a round's first half on its pods, merges, replies.

    python -m workers.edge_server --topology=topology.yaml --name=es-0

The coordinator sends, per round, the round's `up_to_merge` computation (once;
cached by key), the shared arguments (model weights) once, and the client
list of each of this server's pods that has sampled clients. The edge server
runs `up_to_merge` on those pods in parallel, folds TFF's `merge` over their
partial aggregates in pod order, and returns ONE partial: the coordinator
never sees a single pod's update. A pod that fails or passes the deadline is
left out of the merge and reported in the reply.

gRPC service `tff_edge.EdgeServer` (messages: workers.wire):
  Describe  -> each pod's manifest (which clients it holds)
  Prepare   -> caches computations by key
  Run       -> one merged partial plus failures and byte counts; for a
               secure round (header `secagg`), each pod first writes its
               clients' masks (POST /control/secagg/masks on the pod)
HTTP on --health_port: /healthz, /readyz. Prometheus /metrics on
--metrics_port (workers.metrics: calls, seconds and errors per kind).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging
import grpc
from tensorflow_federated.proto.v0 import executor_pb2

from data_prep.errors import UserError
from workers import cpu_slots
from workers import executor_client
from workers import health
from workers import metrics as metrics_lib
from workers import tls as tls_lib
from workers import topology as topology_lib
from workers import wire
from workers import worker_process

SERVICE = 'tff_edge.EdgeServer'
_MAX_CACHED_FUNCTIONS = 16

_TOPOLOGY = flags.DEFINE_string('topology', None, 'Topology YAML file.')
_NAME = flags.DEFINE_string('name', None, 'This edge server in the topology.')
_PORT = flags.DEFINE_integer('port', None,
                             'gRPC port (default: from the topology address).')
_HEALTH_PORT = flags.DEFINE_integer(
    'health_port', None, 'HTTP port (default: from the topology).')
_TLS_DIR = flags.DEFINE_string(
    'tls_dir', None, 'Folder with ca.crt and <name>.crt/.key: serve and call '
    "pods over mutual TLS (default: the topology's tls_dir, if any).")
_CPU_SLOTS = flags.DEFINE_integer(
    'cpu_slots', 0,
    'Only when pods share this machine\'s cores (workers.local_cluster): at '
    'most this many pods of all edge servers compute at once (0: no limit).')
_CPU_SLOTS_DIR = flags.DEFINE_string(
    'cpu_slots_dir', None, 'Lock-file directory shared by the edge servers '
    'of one machine, for --cpu_slots.')
_METRICS_PORT = flags.DEFINE_integer(
    'metrics_port', 0, 'Serve Prometheus /metrics on this port (0: off).')


class _Abort(Exception):

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code


def _bad_request(message: str) -> _Abort:
  return _Abort(grpc.StatusCode.INVALID_ARGUMENT, message)


class EdgeServer:
  """Serves one edge server of the topology."""

  def __init__(self, spec: topology_lib.EdgeServer,
               slots: Optional[cpu_slots.CpuSlots] = None,
               tls: Optional[tls_lib.TlsFiles] = None):
    self.spec = spec
    self._slots = slots
    self._tls = tls
    self._pods = {pod.name: pod for pod in spec.pods}
    self._clients = {
        pod.name: executor_client.ExecutorClient(
            pod.address, tls_lib.grpc_channel(pod.address, tls,
                                              server_name=pod.name))
        for pod in spec.pods}
    self._functions: dict[str, executor_pb2.Value] = {}
    self._functions_lock = threading.Lock()
    # Merges run on our own executor: partials never go back to a pod.
    self._merger = worker_process.WorkerProcess(intra_op_threads=1,
                                                inter_op_threads=1)
    self._merge_client: Optional[executor_client.ExecutorClient] = None
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(spec.pods), thread_name_prefix='pod')
    self.metrics = metrics_lib.NodeMetrics('edge_server', spec.name,
                                           up=self._merger.alive)

  def start(self) -> 'EdgeServer':
    self._merger.start()
    self._merge_client = executor_client.ExecutorClient(self._merger.target)
    return self

  def stop(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._merger.stop()

  # RPCs.

  def describe(self, header: dict[str, Any], blobs: dict[str, bytes]):
    del header, blobs
    pods = []
    for pod in self.spec.pods:
      entry: dict[str, Any] = {'name': pod.name, 'address': pod.address}
      try:
        status, body = tls_lib.http_get_json(
            self._control_address(pod), '/control/manifest', self._tls,
            server_name=pod.name)
        if status != 200:
          raise OSError(f'HTTP {status}: {body}')
        entry['manifest'] = body['manifest']
        entry['public_keys'] = body.get('public_keys') or {}
        entry['held_out_clients'] = body.get('held_out_clients') or []
      except (OSError, ValueError, KeyError, TypeError) as e:
        entry['error'] = f'{pod.name} at {pod.health}: {e}'
      pods.append(entry)
    return {'name': self.spec.name, 'pods': pods}, {}

  def prepare(self, header: dict[str, Any], blobs: dict[str, bytes]):
    del header
    with self._functions_lock:
      for key, data in blobs.items():
        value = executor_pb2.Value.FromString(data)
        if value.WhichOneof('value') != 'computation':
          raise _bad_request(f'Prepare: {key} is not a computation')
        self._functions[key] = value
      while len(self._functions) > _MAX_CACHED_FUNCTIONS:
        self._functions.pop(next(iter(self._functions)))
    return {'cached': sorted(self._functions)}, {}

  def _function(self, key: str) -> executor_pb2.Value:
    with self._functions_lock:
      value = self._functions.get(key)
    if value is None:
      raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                   f'unknown computation {key}; send Prepare first')
    return value

  def _control_address(self, pod: topology_lib.Pod) -> str:
    # With TLS a pod's control calls go through its terminator, like gRPC;
    # without, its plain HTTP port serves them.
    return pod.address if self._tls else pod.health

  def _prepare_masks(self, pod: str, secagg: dict[str, Any],
                     timeout: Optional[float]) -> None:
    """Has `pod` write its clients' masks for the round; raises on failure."""
    try:
      request = {'tag': secagg['tag'], 'layout': secagg['layout'],
                 'public_keys': secagg['public_keys'],
                 'clients': secagg['pod_clients'][pod]}
    except KeyError as e:
      raise _bad_request(f'Run: secagg header lacks {e}') from None
    address = self._control_address(self._pods[pod])
    try:
      status, body = tls_lib.http_post_json(
          address, '/control/secagg/masks', request, self._tls,
          timeout=timeout or 600.0, server_name=pod)
    except OSError as e:
      raise executor_client.ExecutorError(
          address, 'unavailable', f'SecAgg masks: {e}') from None
    if status != 200:
      raise executor_client.ExecutorError(
          address, 'error', f'SecAgg masks: HTTP {status}: '
          f'{(body or {}).get("error", body)}')

  def _verify_clients(self, pod: str, clients: list[str],
                      timeout: Optional[float]) -> None:
    """Has `pod` check its sampled clients' shards; raises on failure."""
    address = self._control_address(self._pods[pod])
    try:
      status, body = tls_lib.http_post_json(
          address, '/control/verify', {'clients': clients}, self._tls,
          timeout=timeout or 600.0, server_name=pod)
    except OSError as e:
      raise executor_client.ExecutorError(
          address, 'unavailable', f'shard check: {e}') from None
    if status == 404:
      return  # A pod from before /control/verify: it verified at start.
    if status != 200:
      error = str((body or {}).get('error', body))
      kind = ('not_held' if executor_client.NOT_HELD_MARKER in error
              else 'error')
      raise executor_client.ExecutorError(
          address, kind, f'shard check: HTTP {status}: {error}')

  def run(self, header: dict[str, Any], blobs: dict[str, bytes]):
    """Runs up_to_merge on the named pods and merges their partials."""
    try:
      up_key, merge_key = header['up_to_merge'], header['merge']
      elements = header['elements']  # [[name, shared], ...]
      pod_clients: dict[str, int] = header['pods']  # pod -> client count
      timeout = header.get('timeout')
    except KeyError as e:
      raise _bad_request(f'Run: header lacks {e}') from None
    up_to_merge, merge = self._function(up_key), self._function(merge_key)
    unknown = sorted(set(pod_clients) - set(self._pods))
    if unknown:
      raise _bad_request(f'Run: pods {unknown} are not under edge server '
                         f'{self.spec.name} (it has {sorted(self._pods)})')
    shared = {i: executor_pb2.Value.FromString(blobs[f'shared/{i}'])
              for i, (_, is_shared) in enumerate(elements) if is_shared}

    def argument(pod: str) -> executor_pb2.Value:
      parts = []
      for i, (name, is_shared) in enumerate(elements):
        value = shared[i] if is_shared else executor_pb2.Value.FromString(
            blobs[f'{pod}/{i}'])
        parts.append((name, value))
      return executor_client.struct_value(parts)

    secagg = header.get('secagg')
    # Client ids per pod (coordinators before this field send none).
    clients_of = header.get('pod_clients') or {}

    def run_pod(pod: str):
      with (self._slots.hold() if self._slots else contextlib.nullcontext()):
        start = time.monotonic()
        if pod in clients_of:
          self._verify_clients(pod, clients_of[pod], timeout)
        if secagg is not None:
          self._prepare_masks(pod, secagg, timeout)
        arg = argument(pod)
        result = self._clients[pod].run(up_key, up_to_merge, arg,
                                        pod_clients[pod], timeout)
      return (executor_client.unplaced(result), arg.ByteSize(),
              time.monotonic() - start)

    futures = {pod: self._pool.submit(run_pod, pod) for pod in pod_clients}
    partials, failures, seconds = [], [], {}
    sent = received = 0
    for pod in sorted(futures):  # Merge order fixed: reproducible sums.
      try:
        result, arg_bytes, seconds[pod] = futures[pod].result()
        self.metrics.record('pod_run', seconds[pod], peer=pod)
      except executor_client.ExecutorError as e:
        self.metrics.record('pod_run', None, peer=pod, error=e.kind)
        logging.warning('%s: pod %s failed (%s): %s', self.spec.name, pod,
                        e.kind, e.detail)
        failures.append({'pod': pod, 'edge_server': self.spec.name,
                         'kind': e.kind, 'error': e.detail})
        continue
      partials.append(result)
      sent += arg_bytes
      received += result.ByteSize()
    reply: dict[str, Any] = {'failures': failures, 'pod_seconds': seconds,
                             'merged_pods': len(partials),
                             'pod_bytes_sent': sent,
                             'pod_bytes_received': received}
    if not partials:
      return reply, {}
    start = time.monotonic()
    merged = executor_client.merge_all(self._merge_client, merge_key, merge,
                                       partials, timeout)
    reply['merge_seconds'] = time.monotonic() - start
    self.metrics.record('merge', reply['merge_seconds'])
    return reply, {'partial': merged.SerializeToString()}


def _handler(method):

  def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
      header, blobs = wire.unpack(request)
      reply, reply_blobs = method(header, blobs)
      return wire.pack(reply, reply_blobs)
    except wire.WireError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except _Abort as e:
      context.abort(e.code, str(e))
    except executor_client.ExecutorError as e:
      context.abort(grpc.StatusCode.INTERNAL, f'merge failed: {e}')

  return grpc.unary_unary_rpc_method_handler(handle)


def serve(server: EdgeServer, port: int,
          tls: Optional[tls_lib.TlsFiles] = None) -> grpc.Server:
  """Starts the gRPC service of `server` on `port` (mutual TLS with `tls`)."""
  grpc_server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=8),
      options=worker_process.GRPC_CHANNEL_OPTIONS)
  grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
      SERVICE, {'Describe': _handler(server.metrics.wrap('describe',
                                                         server.describe)),
                'Prepare': _handler(server.metrics.wrap('prepare',
                                                        server.prepare)),
                'Run': _handler(server.metrics.wrap('run', server.run))})])
  if tls is not None:
    grpc_server.add_secure_port(f'[::]:{port}',
                                tls_lib.grpc_server_credentials(tls))
  else:
    grpc_server.add_insecure_port(f'[::]:{port}')
  grpc_server.start()
  return grpc_server


def _port_of(address: str) -> int:
  return int(address.rsplit(':', 1)[1])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    if not _TOPOLOGY.value or not _NAME.value:
      raise UserError('--topology and --name are required')
    topology = topology_lib.load(_TOPOLOGY.value)
    spec = topology.edge_server(_NAME.value)
    tls_dir = _TLS_DIR.value or topology.tls_dir
    tls = tls_lib.TlsFiles.from_dir(tls_dir, spec.name) if tls_dir else None
    slots = None
    if _CPU_SLOTS.value:
      if not _CPU_SLOTS_DIR.value:
        raise UserError('--cpu_slots needs --cpu_slots_dir')
      slots = cpu_slots.CpuSlots(_CPU_SLOTS_DIR.value, _CPU_SLOTS.value)
    server = EdgeServer(spec, slots, tls).start()
    if _METRICS_PORT.value:
      metrics_lib.serve(_METRICS_PORT.value, server.metrics.registry)
  except (UserError, worker_process.WorkerStartError, OSError) as e:
    print(f'error: edge server {_NAME.value}: {e}', file=sys.stderr)
    return 2
  port = _PORT.value or _port_of(spec.address)
  grpc_server = serve(server, port, tls)
  health_server = health.HealthServer(
      _HEALTH_PORT.value or _port_of(spec.health),
      {'/healthz': lambda: (200, {'edge_server': spec.name}),
       '/readyz': lambda: (200, {'edge_server': spec.name,
                                 'pods': [p.name for p in spec.pods]})}).start()
  logging.info('%s: serving on :%d for pods %s', spec.name, port,
               ', '.join(p.name for p in spec.pods))
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())
  while not stop.wait(0.5):  # Timed: an untimed wait can miss the signal.
    pass
  logging.info('%s: shutting down', spec.name)
  grpc_server.stop(grace=2).wait()
  health_server.stop()
  server.stop()
  return 0


if __name__ == '__main__':
  logging.set_stderrthreshold('info')
  app.run(main)
