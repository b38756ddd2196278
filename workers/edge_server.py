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
  Ping      -> {} (the coordinator pings while it waits on a call)
  Describe  -> each pod's manifest (which clients it holds)
  Prepare   -> caches computations by key
  Run       -> one merged partial plus failures, byte counts and the pods
               merged; for a secure round (header `secagg`: the round tag
               and each pod's forwarded SecAgg+ shares), each pod first
               writes its mask (POST /control/secagg/mask on the pod), then
               runs the round computation, which adds it; the merge adds
               masked sums mod 2^b and never unmasks anything
  SecAgg    -> relays one SecAgg+ stage to its pods, concurrently:
               {pod: request} -> {pod: reply} plus failures (POST
               /control/secagg/round on each pod)
Prometheus /metrics on --metrics_port (workers.metrics: calls, seconds and
errors per kind).
HTTP on --health_port (loopback with TLS): /healthz (503 while the merge
executor is down: it is restarted), /readyz.

Only the coordinator may call (its certificate's role, workers.tls
PeerPolicy, and not revoked in the CA's ca.crl); other callers get
PERMISSION_DENIED. Without a TLS directory the server refuses to start
unless --insecure is given. Any failure of one pod (an error, a timeout, a
reply that makes no sense) is recorded in the reply as that pod's failure;
a failed merge is retried once on a restarted merge executor, then the call
fails with UNAVAILABLE, which the coordinator records as this edge server's
failure.
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

from data_prep import entry_point
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
# How long a merge waits for the main loop to restart a dead merge executor.
_MERGER_RESTART_SECONDS = 60.0
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
_CA_DIR = flags.DEFINE_string(
    'ca_dir', None, 'Where ca.crt (and ca.crl) are, if not in the TLS '
    'directory (e.g. a ConfigMap; changes are picked up).')
_INSECURE = flags.DEFINE_bool(
    'insecure', False, 'Serve and call pods without TLS (no --tls_dir and '
    'none in the topology). Without it the server refuses to start then.')
_HEALTH_HOST = flags.DEFINE_string(
    'health_host', None, 'Address of --health_port (default: 127.0.0.1 with '
    'TLS, all interfaces with --insecure).')
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
    self._merger_lock = threading.Lock()
    self.merger_restarts = 0
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(spec.pods), thread_name_prefix='pod')
    # SecAgg+ stages: small messages, never queued behind a pod's round.
    self._relay_pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(spec.pods), thread_name_prefix='secagg')
    self.metrics = metrics_lib.NodeMetrics('edge_server', spec.name,
                                           up=self._merger.alive)
    self.policy = (tls_lib.PeerPolicy(tls, tls_lib.CALLERS['edge-server'])
                   if tls else None)

  def start(self) -> 'EdgeServer':
    self._merger.start()
    self._merge_client = executor_client.ExecutorClient(self._merger.target)
    return self

  def stop(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._relay_pool.shutdown(wait=False, cancel_futures=True)
    self._merger.stop()

  def merger_alive(self) -> bool:
    return self._merger.alive()

  def supervise_merger(self) -> bool:
    """Restarts the merge executor if it died; False if it stays down."""
    with self._merger_lock:
      if self._merger.alive():
        return True
      self.merger_restarts += 1
      logging.warning('%s: merge executor exited (status %s); restarting '
                      '(restart %d)', self.spec.name,
                      self._merger._process.returncode if self._merger._process  # pylint: disable=protected-access
                      else None, self.merger_restarts)
      try:
        self._merger.start()
      except worker_process.WorkerStartError as e:
        logging.error('%s: %s', self.spec.name, e)
        return False
      self._merge_client = executor_client.ExecutorClient(self._merger.target)
      return True

  def healthz(self) -> tuple[int, dict[str, Any]]:
    alive = self._merger.alive()
    return (200 if alive else 503), {
        'edge_server': self.spec.name, 'merger_alive': alive,
        'merger_restarts': self.merger_restarts}

  def _merge(self, merge_key: str, merge: executor_pb2.Value,
             partials: list[executor_pb2.Value], timeout: Optional[float]):
    """merge_all on the merge executor; once more on a restarted one."""
    for attempt in (1, 2):
      try:
        return executor_client.merge_all(self._merge_client, merge_key,
                                         merge, partials, timeout)
      except executor_client.ExecutorError as e:
        if attempt == 2 or self._merger.alive():
          raise _Abort(grpc.StatusCode.UNAVAILABLE,
                       f'edge server {self.spec.name}: merge failed: {e}'
                       ) from None
        logging.warning('%s: merge executor died during a merge; merging '
                        'again once it is restarted', self.spec.name)
        # The main thread restarts it (supervise_merger): a worker started
        # from this pool thread would die with the thread.
        deadline = time.monotonic() + _MERGER_RESTART_SECONDS
        while not self._merger.alive() and time.monotonic() < deadline:
          time.sleep(0.2)
        if not self._merger.ready(timeout=5.0):
          raise _Abort(grpc.StatusCode.UNAVAILABLE,
                       f'edge server {self.spec.name}: merge executor down: '
                       f'{e}') from None

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
        if isinstance(body.get('secagg'), dict):
          entry['secagg'] = body['secagg']
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

  def _post_secagg(self, pod: str, path: str, request: Any,
                   timeout: Optional[float]) -> Any:
    """POSTs a SecAgg+ message to `pod`; its reply, or ExecutorError."""
    address = self._control_address(self._pods[pod])
    try:
      status, body = tls_lib.http_post_json(
          address, path, request, self._tls, timeout=timeout or 600.0,
          server_name=pod)
    except OSError as e:
      kind = 'timeout' if isinstance(e, TimeoutError) else 'unavailable'
      raise executor_client.ExecutorError(
          address, kind, f'SecAgg {path}: {e}') from None
    if status != 200:
      # A proxy or a broken pod may answer HTML or nothing: any body.
      detail = body.get('error', body) if isinstance(body, dict) else body
      raise executor_client.ExecutorError(
          address, 'refused' if status == 409 else 'error',
          f'SecAgg {path}: HTTP {status}: {str(detail)[:500]}')
    return body

  def secagg(self, header: dict[str, Any], blobs: dict[str, bytes]):
    """Relays one SecAgg+ stage to the named pods, concurrently.

    The edge server reads nothing of it: the messages are JSON the pods
    and the coordinator check (workers.secagg), and the shares in them are
    encrypted to their receivers.
    """
    del blobs
    requests = header.get('requests')
    if not isinstance(requests, dict):
      raise _bad_request('SecAgg: header lacks requests {pod: request}')
    unknown = sorted(set(requests) - set(self._pods))
    if unknown:
      raise _bad_request(f'SecAgg: pods {unknown[:5]} are not under edge '
                         f'server {self.spec.name}')
    timeout = header.get('timeout')
    futures = {pod: self._relay_pool.submit(
        self._post_secagg, pod, '/control/secagg/round', request, timeout)
               for pod, request in requests.items()}
    replies, failures = {}, []
    for pod in sorted(futures):
      try:
        replies[pod] = futures[pod].result()
        self.metrics.record('secagg_relay', None, peer=pod)
      except executor_client.ExecutorError as e:
        self.metrics.record('secagg_relay', None, peer=pod, error=e.kind)
        failures.append({'pod': pod, 'edge_server': self.spec.name,
                         'kind': e.kind, 'error': e.detail})
    return {'replies': replies, 'failures': failures}, {}

  def _verify_clients(self, pod: str, clients: list[str],
                      timeout: Optional[float]) -> None:
    """Has `pod` check its sampled clients' shards; raises on failure."""
    address = self._control_address(self._pods[pod])
    try:
      status, body = tls_lib.http_post_json(
          address, '/control/verify', {'clients': clients}, self._tls,
          timeout=timeout or 600.0, server_name=pod)
    except OSError as e:
      kind = 'timeout' if isinstance(e, TimeoutError) else 'unavailable'
      raise executor_client.ExecutorError(
          address, kind, f'shard check: {e}') from None
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
    if secagg is not None:
      masks = secagg.get('masks') if isinstance(secagg, dict) else None
      if not isinstance(masks, dict) or set(masks) != set(pod_clients):
        raise _bad_request('Run: secagg header needs masks {pod: forwarded '
                           'shares} for exactly the pods of the call')
    # Client ids per pod (coordinators before this field send none).
    clients_of = header.get('pod_clients') or {}
    if not isinstance(clients_of, dict) or not all(
        isinstance(ids, list) for ids in clients_of.values()):
      raise _bad_request('Run: pod_clients must be {pod: [client id, ...]}')

    def run_pod(pod: str):
      with (self._slots.hold() if self._slots else contextlib.nullcontext()):
        start = time.monotonic()
        if pod in clients_of:
          self._verify_clients(pod, clients_of[pod], timeout)
        if secagg is not None:
          # The pod writes its mask; the computation below adds it.
          self._post_secagg(pod, '/control/secagg/mask', masks[pod], timeout)
        arg = argument(pod)
        result = self._clients[pod].run(up_key, up_to_merge, arg,
                                        pod_clients[pod], timeout)
      return (executor_client.unplaced(result), arg.ByteSize(),
              time.monotonic() - start)

    futures = {pod: self._pool.submit(run_pod, pod) for pod in pod_clients}
    partials, failures, seconds, merged_pods = [], [], {}, []
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
      except _Abort:
        raise  # The coordinator's request is bad, not the pod.
      except Exception as e:  # pylint: disable=broad-except
        # Anything else one pod causes is that pod's failure, not the
        # round's (before, it surfaced as UNKNOWN and stopped the run).
        logging.exception('%s: pod %s failed unexpectedly', self.spec.name,
                          pod)
        failures.append({'pod': pod, 'edge_server': self.spec.name,
                         'kind': 'error',
                         'error': f'{type(e).__name__}: {e}'[:2000]})
        continue
      partials.append(result)
      merged_pods.append(pod)
      sent += arg_bytes
      received += result.ByteSize()
    reply: dict[str, Any] = {'failures': failures, 'pod_seconds': seconds,
                             'merged_pods': len(partials),
                             'merged': merged_pods,
                             'pod_bytes_sent': sent,
                             'pod_bytes_received': received}
    if not partials:
      return reply, {}
    start = time.monotonic()
    merged = self._merge(merge_key, merge, partials, timeout)
    reply['merge_seconds'] = time.monotonic() - start
    self.metrics.record('merge', reply['merge_seconds'])
    return reply, {'partial': merged.SerializeToString()}


def _handler(method, policy: Optional[tls_lib.PeerPolicy]):

  def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
    if policy is not None:
      try:
        policy.check_context(context)
      except PermissionError as e:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
    try:
      header, blobs = wire.unpack(request)
      reply, reply_blobs = method(header, blobs)
      return wire.pack(reply, reply_blobs)
    except wire.WireError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except _Abort as e:
      context.abort(e.code, str(e))
    except executor_client.ExecutorError as e:
      context.abort(grpc.StatusCode.UNAVAILABLE, f'merge failed: {e}')
    except Exception as e:  # pylint: disable=broad-except
      # Never UNKNOWN: the coordinator records INTERNAL as this server's
      # failure and goes on with the others.
      logging.exception('%s failed', method.__name__)
      context.abort(grpc.StatusCode.INTERNAL,
                    f'{type(e).__name__}: {e}'[:2000])

  return grpc.unary_unary_rpc_method_handler(handle)


def _pong(header: dict[str, Any], blobs: dict[str, bytes]):
  """Ping: proves to a waiting coordinator that this server still answers."""
  del header, blobs
  return {}, {}


# Concurrent calls beyond this are refused with RESOURCE_EXHAUSTED (the
# coordinator makes one Run per edge server per round). A thread for each:
# an admitted Ping never queues behind busy handlers, which would read as a
# frozen server.
_MAX_CONCURRENT_RPCS = 16


def serve(server: EdgeServer, port: int,
          tls: Optional[tls_lib.TlsFiles] = None) -> grpc.Server:
  """Starts the gRPC service of `server` on `port` (mutual TLS with `tls`)."""
  grpc_server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=_MAX_CONCURRENT_RPCS),
      options=tls_lib.SERVER_OPTIONS,
      maximum_concurrent_rpcs=_MAX_CONCURRENT_RPCS)
  grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
      SERVICE, {'Ping': _handler(_pong, server.policy),
                'Describe': _handler(server.metrics.wrap('describe',
                                                         server.describe),
                                     server.policy),
                'Prepare': _handler(server.metrics.wrap('prepare',
                                                        server.prepare),
                                    server.policy),
                'Run': _handler(server.metrics.wrap('run', server.run),
                                server.policy),
                'SecAgg': _handler(server.metrics.wrap('secagg',
                                                       server.secagg),
                                   server.policy)})])
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
    tls = tls_lib.resolve(_TLS_DIR.value or topology.tls_dir, spec.name,
                          _INSECURE.value, f'edge server {spec.name}',
                          ca_dir=_CA_DIR.value)
    slots = None
    if _CPU_SLOTS.value:
      if not _CPU_SLOTS_DIR.value:
        raise UserError('--cpu_slots needs --cpu_slots_dir')
      slots = cpu_slots.CpuSlots(_CPU_SLOTS_DIR.value, _CPU_SLOTS.value)
    server = EdgeServer(spec, slots, tls).start()
    if _METRICS_PORT.value:
      metrics_lib.serve(_METRICS_PORT.value, server.metrics.registry, tls=tls)
  except (UserError, worker_process.WorkerStartError, OSError) as e:
    print(f'error: edge server {_NAME.value}: {e}', file=sys.stderr)
    return 2
  port = _PORT.value or _port_of(spec.address)
  grpc_server = serve(server, port, tls)
  health_host = _HEALTH_HOST.value
  if health_host is None:
    health_host = '127.0.0.1' if tls else ''
  health_server = health.HealthServer(
      _HEALTH_PORT.value or _port_of(spec.health),
      {'/healthz': server.healthz,
       '/readyz': lambda: (200 if server.merger_alive() else 503, {
           'edge_server': spec.name, 'pods': [p.name for p in spec.pods]})},
      host=health_host).start()
  logging.info('%s: serving on :%d for pods %s', spec.name, port,
               ', '.join(p.name for p in spec.pods))
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())
  while not stop.wait(0.5):  # Timed: an untimed wait can miss the signal.
    server.supervise_merger()  # From the main thread: see die_with_parent.
  logging.info('%s: shutting down', spec.name)
  grpc_server.stop(grace=2).wait()
  health_server.stop()
  server.stop()
  return 0


if __name__ == '__main__':
  logging.set_stderrthreshold('info')
  entry_point.run(main)
