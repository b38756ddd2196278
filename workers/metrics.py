"""Prometheus metrics of every tier, in one place (prometheus-client).

The coordinator (`tff_pipeline.train --metrics_port=N`), every edge server
and every edge pod (`--metrics_port=N` of workers.edge_server and
workers.edge_pod) serve `/metrics` in Prometheus' text format; 0 (the
default) serves nothing. The names are a contract (Grafana's dashboard in
docs/grafana/ and docs/dashboard.md use them):

  coordinator     tff_edge_round, tff_edge_rounds_planned,
                  tff_edge_round_seconds, tff_edge_round_clients,
                  tff_edge_eval_<metric>, tff_edge_train_<metric> (metric:
                  accuracy, loss, rmse, recall_at_5), tff_edge_privacy_epsilon,
                  tff_edge_privacy_target_epsilon,
                  tff_edge_failures_total{kind}, tff_edge_bytes_total{tier,
                  direction}, tff_edge_pod_seconds{pod}, tff_edge_run_info
  edge servers,   tff_edge_up{role,node}, tff_edge_calls_total{kind,peer},
  edge pods       tff_edge_call_seconds{kind,peer} (a histogram),
                  tff_edge_call_errors_total{kind,peer,error}
  edge pods only  tff_edge_clients, tff_edge_executor_restarts_total

Call kinds: an edge server counts the RPCs it serves (describe, prepare,
run; peer="") and the calls it makes (pod_run per pod, peer=<pod>; merge).
A pod's executor is TFF's C++ service, which this Python process never sees:
a pod counts its control calls (manifest, secagg_round, secagg_mask); the
executor work is timed by its edge server as pod_run. An edge server also
counts the SecAgg+ stages it relays (secagg; secagg_relay per pod).

Each component has its own CollectorRegistry (no process-wide state), so
several can live in one process (tests) and each /metrics shows one node.
No TensorFlow here: the edge pod's Python stays free of it.
"""

from __future__ import annotations

import contextlib
import socketserver
import ssl
import threading
import time
from wsgiref import simple_server
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Optional

from absl import logging
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from workers import tls as tls_lib

# A client that has not finished its TLS handshake and request by then is cut.
_TLS_SOCKET_SECONDS = 10.0

# The tasks' metric names in metrics.jsonl `train` and `eval` rows.
TASK_METRICS = ('accuracy', 'loss', 'rmse', 'recall_at_5')
# RoundReport failure kinds (workers/limits.py failure_of, edge servers).
FAILURE_KINDS = ('unavailable', 'timeout', 'unresponsive', 'refused',
                 'too_large', 'bad_reply', 'error')
# metrics.jsonl `network` keys: <tier>_bytes_<direction>. The coordinator
# tier is coordinator <-> edge servers, the edge_server tier edge servers <->
# pods; `sent` is away from the coordinator.
TIERS = ('coordinator', 'edge_server')
DIRECTIONS = ('sent', 'received')
# From a 10 ms control call to a pod's 10-minute round.
CALL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0)


def error_label(error: BaseException) -> str:
  """A short, bounded label for a failed call (no free text)."""
  kind = getattr(error, 'kind', None)  # executor_client.ExecutorError
  if isinstance(kind, str):
    return kind
  code = getattr(error, 'code', None)  # gRPC status of an abort
  name = getattr(code, 'name', None)
  if isinstance(name, str):
    return name.lower()
  return type(error).__name__


class CoordinatorMetrics:
  """A training run's progress, updated from each metrics.jsonl row."""

  def __init__(self, registry: Optional[CollectorRegistry] = None):
    self.registry = registry or CollectorRegistry()
    r = self.registry
    self.round = Gauge('tff_edge_round', 'Last finished round.', registry=r)
    self.rounds_planned = Gauge('tff_edge_rounds_planned',
                                'Rounds the run was asked for (--rounds).',
                                registry=r)
    self.round_seconds = Gauge(
        'tff_edge_round_seconds',
        'Seconds of the last round (training, without evaluation).',
        registry=r)
    self.round_clients = Gauge('tff_edge_round_clients',
                               'Clients sampled in the last round.',
                               registry=r)
    self.eval = {m: Gauge(f'tff_edge_eval_{m}',
                          f'Held-out {m} at the last evaluation.', registry=r)
                 for m in TASK_METRICS}
    self.train = {m: Gauge(f'tff_edge_train_{m}',
                           f"Clients' training {m} in the last round.",
                           registry=r)
                  for m in TASK_METRICS}
    self.epsilon = Gauge('tff_edge_privacy_epsilon',
                         'Epsilon spent so far (DP aggregators).', registry=r)
    self.target_epsilon = Gauge(
        'tff_edge_privacy_target_epsilon',
        'The budget (--target_epsilon; 0: none).', registry=r)
    self.failures = Counter(
        'tff_edge_failures_total',
        'Pods or edge servers left out of a round, per kind.', ['kind'],
        registry=r)
    self.bytes = Counter(
        'tff_edge_bytes_total',
        'Bytes on the wire: tier coordinator (coordinator <-> edge servers) '
        'or edge_server (edge servers <-> pods); sent is away from the '
        'coordinator.', ['tier', 'direction'], registry=r)
    self.pod_seconds = Gauge('tff_edge_pod_seconds',
                             "Seconds of a pod's part of the last round it "
                             'ran.', ['pod'], registry=r)
    self.info = Info('tff_edge_run', 'The run: name, task, model, '
                     'aggregator, executor.', registry=r)
    # Series that exist (at 0) before anything happens.
    for kind in FAILURE_KINDS:
      self.failures.labels(kind)
    for tier in TIERS:
      for direction in DIRECTIONS:
        self.bytes.labels(tier, direction)
    self._unknown: set[tuple[str, str]] = set()

  def start_run(self, config: Mapping[str, Any]) -> None:
    """Labels the run from its config.json mapping (README contract)."""
    self.info.info({
        'run': str(config.get('output_dir', '')).rstrip('/').rsplit('/', 1)[-1],
        **{k: str(config.get(k, '')) for k in
           ('task', 'model', 'aggregator', 'executor')}})
    self.rounds_planned.set(config.get('rounds', 0))
    self.target_epsilon.set(config.get('target_epsilon', 0.0) or 0.0)

  def _set_task_metrics(self, gauges: dict[str, Gauge],
                        values: Mapping[str, Any], group: str) -> None:
    for name, value in values.items():
      if not isinstance(value, (int, float)) or name == 'num_examples':
        continue
      gauge = gauges.get(name)
      if gauge is not None:
        gauge.set(value)
      elif (group, name) not in self._unknown:
        self._unknown.add((group, name))
        logging.warning('no Prometheus gauge for %s metric %r; add it to '
                        'workers.metrics.TASK_METRICS', group, name)

  def observe_round(self, row: Mapping[str, Any]) -> None:
    """Takes one metrics.jsonl row (as training_loop's on_round gives it)."""
    self.round.set(row['round'])
    self.round_seconds.set(row.get('round_seconds', 0.0))
    # DP runs' rows carry counts, not ids.
    self.round_clients.set(row['clients_count'] if 'clients_count' in row
                           else len(row.get('clients') or ()))
    self._set_task_metrics(self.train, row.get('train') or {}, 'train')
    self._set_task_metrics(self.eval, row.get('eval') or {}, 'eval')
    epsilon = (row.get('privacy') or {}).get('epsilon')
    if isinstance(epsilon, (int, float)):
      self.epsilon.set(epsilon)
    for failure in row.get('failures') or ():
      self.failures.labels(failure.get('kind', 'error')).inc()
    network = row.get('network') or {}
    for tier in TIERS:
      for direction in DIRECTIONS:
        value = network.get(f'{tier}_bytes_{direction}')
        if value:
          self.bytes.labels(tier, direction).inc(value)
    for pod, seconds in (row.get('pod_seconds') or {}).items():
      self.pod_seconds.labels(pod).set(seconds)


class NodeMetrics:
  """An edge server's or pod's liveness and its calls, per kind."""

  def __init__(self, role: str, name: str, up: Callable[[], bool],
               registry: Optional[CollectorRegistry] = None):
    self.registry = registry or CollectorRegistry()
    r = self.registry
    self.up = Gauge('tff_edge_up', '1 while the node serves (a pod: while '
                    'its executor runs).', ['role', 'node'], registry=r)
    self.up.labels(role, name).set_function(lambda: 1.0 if up() else 0.0)
    self.calls = Counter('tff_edge_calls_total', 'Calls served or made, per '
                         'kind (peer: the pod called, else "").',
                         ['kind', 'peer'], registry=r)
    self.seconds = Histogram('tff_edge_call_seconds', 'Seconds per call.',
                             ['kind', 'peer'], buckets=CALL_BUCKETS,
                             registry=r)
    self.errors = Counter('tff_edge_call_errors_total',
                          'Calls that failed, per kind and error.',
                          ['kind', 'peer', 'error'], registry=r)

  def record(self, kind: str, seconds: Optional[float], peer: str = '',
             error: Optional[str] = None) -> None:
    """Counts one call; `seconds` None when it was not timed."""
    self.calls.labels(kind, peer).inc()
    if seconds is not None:
      self.seconds.labels(kind, peer).observe(seconds)
    if error is not None:
      self.errors.labels(kind, peer, error).inc()

  @contextlib.contextmanager
  def timed(self, kind: str, peer: str = '') -> Iterator[None]:
    """Times the block; an exception is counted as an error and re-raised."""
    start = time.monotonic()
    try:
      yield
    except BaseException as e:
      self.record(kind, time.monotonic() - start, peer, error_label(e))
      raise
    self.record(kind, time.monotonic() - start, peer)

  def wrap(self, kind: str, function: Callable[..., Any],
           peer: str = '') -> Callable[..., Any]:
    """`function`, timed as `kind` (exceptions count as errors)."""

    def timed_call(*args, **kwargs):
      with self.timed(kind, peer):
        return function(*args, **kwargs)

    return timed_call

  def wrap_route(self, kind: str, route: Callable[..., tuple[int, Any]]
                 ) -> Callable[..., tuple[int, Any]]:
    """A workers.health route, timed; an HTTP status >= 400 is an error."""

    def timed_route(*args):
      start = time.monotonic()
      try:
        status, body = route(*args)
      except BaseException as e:
        self.record(kind, time.monotonic() - start, error=error_label(e))
        raise
      self.record(kind, time.monotonic() - start,
                  error=f'http_{status}' if status >= 400 else None)
      return status, body

    return timed_route


class PodMetrics(NodeMetrics):
  """A pod's: NodeMetrics, its client count and executor restarts."""

  def __init__(self, name: str, up: Callable[[], bool], clients: int,
               registry: Optional[CollectorRegistry] = None):
    super().__init__('pod', name, up, registry)
    self.clients = Gauge('tff_edge_clients', 'Clients whose shards this pod '
                         'holds.', registry=self.registry)
    self.clients.set(clients)
    self.executor_restarts = Counter(
        'tff_edge_executor_restarts_total',
        "Times the pod restarted its dead executor.", registry=self.registry)


class _MutualTlsServer(socketserver.ThreadingMixIn, simple_server.WSGIServer):
  """WSGI over TLS; each connection's client certificate must be of a
  monitoring role of our CA (tls.PeerPolicy: role, CRL); others are cut."""

  daemon_threads = True

  def __init__(self, address, tls: tls_lib.TlsFiles):
    self._tls = tls
    self._policy = tls_lib.PeerPolicy(tls, tls_lib.CALLERS['metrics'])
    self._lock = threading.Lock()
    self._stamp = None
    self._context: Optional[ssl.SSLContext] = None
    super().__init__(address, _QuietHandler)

  def _current_context(self) -> ssl.SSLContext:
    # Rebuilt when the files change: a rotated certificate or CA is picked
    # up for the next connection.
    with self._lock:
      stamp = self._tls.fingerprint()
      if stamp != self._stamp or self._context is None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                             cafile=self._tls.ca)
        context.load_cert_chain(self._tls.cert, self._tls.key)
        context.verify_mode = ssl.CERT_REQUIRED
        self._context, self._stamp = context, stamp
      return self._context

  def finish_request(self, request, client_address):
    # In the connection's own thread: a slow handshake blocks no one else.
    request.settimeout(_TLS_SOCKET_SECONDS)
    try:
      secure = self._current_context().wrap_socket(request, server_side=True)
      self._policy.check_pem(ssl.DER_cert_to_PEM_cert(
          secure.getpeercert(binary_form=True)).encode())
    except (OSError, ValueError) as e:  # ssl.SSLError, PermissionError.
      logging.info('metrics: refused %s: %s', client_address[0], e)
      return
    super().finish_request(secure, client_address)


class _QuietHandler(simple_server.WSGIRequestHandler):

  def log_message(self, *args):  # Scrapes every few seconds: keep quiet.
    del args


def serve(port: int, registry: CollectorRegistry, host: Optional[str] = None,
          tls: Optional[tls_lib.TlsFiles] = None):
  """Serves `registry` at /metrics on host:port in a daemon thread.

  With `tls` (the node's own files), HTTPS on every interface by default
  that demands a client certificate of the `monitoring` role from the
  cluster CA (Prometheus' scrape `tls_config`); without it, plain HTTP on
  loopback by default (a local run), so no plaintext port faces the
  network unless `host` says so.

  Returns:
    The server (its `server_port` is the port; `shutdown()` stops it).
  """
  if tls is None:
    server, _ = prometheus_client.start_http_server(
        port, addr=host or '127.0.0.1', registry=registry)
    return server
  server = _MutualTlsServer((host or '0.0.0.0', port), tls)
  server.set_app(prometheus_client.make_wsgi_app(registry))
  threading.Thread(target=server.serve_forever, name='metrics',
                   daemon=True).start()
  return server
