"""Tests for workers.metrics: scraped over HTTP, parsed by Prometheus' parser."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.request

from absl.testing import absltest
from prometheus_client import parser

from workers import certs
from workers import metrics
from workers import tls as tls_lib


def _scrape(registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
  """{(sample name, sorted labels): value} from a real /metrics response."""
  server = metrics.serve(0, registry, host='127.0.0.1')
  try:
    with urllib.request.urlopen(
        f'http://127.0.0.1:{server.server_port}/metrics', timeout=10) as r:
      text = r.read().decode('utf-8')
  finally:
    server.shutdown()
    server.server_close()
  return {(s.name, tuple(sorted(s.labels.items()))): s.value
          for family in parser.text_string_to_metric_families(text)
          for s in family.samples}


# Two rows in the README's metrics.jsonl format (a remote DP run).
_ROWS = [
    {'round': 1, 'round_seconds': 4.5, 'clients': ['c1', 'c2', 'c3'],
     'train': {'loss': 1.25, 'accuracy': 0.5, 'num_examples': 60},
     'failures': [{'pod': 'edge-1', 'edge_server': 'es-0',
                   'kind': 'unavailable', 'clients': ['c3'], 'error': 'x'}],
     'network': {'coordinator_bytes_sent': 1000,
                 'coordinator_bytes_received': 400,
                 'edge_server_bytes_sent': 3000,
                 'edge_server_bytes_received': 1200, 'attempts': 1},
     'pod_seconds': {'edge-0': 2.0},
     'privacy': {'epsilon': 1.5, 'delta': 1e-5}},
    {'round': 2, 'round_seconds': 3.0, 'clients': ['c4', 'c5'],
     'train': {'loss': 1.0, 'accuracy': 0.625, 'num_examples': 40},
     'eval': {'loss': 0.875, 'accuracy': 0.75},
     'failures': [{'edge_server': 'es-1', 'kind': 'timeout', 'error': 'y'},
                  {'pod': 'edge-1', 'edge_server': 'es-0',
                   'kind': 'unavailable', 'error': 'z'}],
     'network': {'coordinator_bytes_sent': 10, 'coordinator_bytes_received': 4,
                 'edge_server_bytes_sent': 30,
                 'edge_server_bytes_received': 12, 'attempts': 2},
     'pod_seconds': {'edge-0': 1.5, 'edge-1': 2.5},
     'privacy': {'epsilon': 2.25, 'delta': 1e-5}},
]


class CoordinatorMetricsTest(absltest.TestCase):

  def test_rows_become_the_named_series(self):
    coordinator = metrics.CoordinatorMetrics()
    coordinator.start_run({'output_dir': 'runs/demo-1', 'task': 'fashion_mnist',
                           'model': 'lr', 'aggregator': 'dp_fixed',
                           'executor': 'remote', 'rounds': 4,
                           'target_epsilon': 8.0})
    for row in _ROWS:
      coordinator.observe_round(row)
    got = _scrape(coordinator.registry)
    # Expected values summed by hand from _ROWS above.
    self.assertEqual(got[('tff_edge_round', ())], 2)
    self.assertEqual(got[('tff_edge_rounds_planned', ())], 4)
    self.assertEqual(got[('tff_edge_round_seconds', ())], 3.0)
    self.assertEqual(got[('tff_edge_round_clients', ())], 2)
    self.assertEqual(got[('tff_edge_eval_accuracy', ())], 0.75)
    self.assertEqual(got[('tff_edge_eval_loss', ())], 0.875)
    self.assertEqual(got[('tff_edge_train_accuracy', ())], 0.625)
    self.assertEqual(got[('tff_edge_privacy_epsilon', ())], 2.25)
    self.assertEqual(got[('tff_edge_privacy_target_epsilon', ())], 8.0)
    self.assertEqual(got[('tff_edge_failures_total', (('kind', 'unavailable'),))], 2)
    self.assertEqual(got[('tff_edge_failures_total', (('kind', 'timeout'),))], 1)
    self.assertEqual(got[('tff_edge_failures_total', (('kind', 'error'),))], 0)
    for tier, direction, total in (('coordinator', 'sent', 1010),
                                   ('coordinator', 'received', 404),
                                   ('edge_server', 'sent', 3030),
                                   ('edge_server', 'received', 1212)):
      self.assertEqual(got[('tff_edge_bytes_total', (('direction', direction),
                                                     ('tier', tier)))], total)
    self.assertEqual(got[('tff_edge_pod_seconds', (('pod', 'edge-0'),))], 1.5)
    self.assertEqual(got[('tff_edge_pod_seconds', (('pod', 'edge-1'),))], 2.5)
    info = [labels for name, labels in got if name == 'tff_edge_run_info']
    self.assertEqual(dict(info[0]), {'run': 'demo-1', 'task': 'fashion_mnist',
                                     'model': 'lr', 'aggregator': 'dp_fixed',
                                     'executor': 'remote'})

  def test_every_task_metric_has_a_gauge(self):
    coordinator = metrics.CoordinatorMetrics()
    coordinator.observe_round({'round': 1, 'round_seconds': 1.0, 'clients': [],
                               'train': {'loss': 2.0},
                               'eval': {'loss': 0.9, 'rmse': 0.95,
                                        'recall_at_5': 0.25,
                                        'accuracy': 0.5}})
    got = _scrape(coordinator.registry)
    self.assertEqual(got[('tff_edge_eval_rmse', ())], 0.95)
    self.assertEqual(got[('tff_edge_eval_recall_at_5', ())], 0.25)
    self.assertEqual(got[('tff_edge_train_loss', ())], 2.0)


class NodeMetricsTest(absltest.TestCase):

  def test_calls_seconds_errors_and_up(self):
    alive = [True]
    node = metrics.NodeMetrics('edge_server', 'es-0', lambda: alive[0])
    node.record('pod_run', 0.2, peer='edge-0')
    node.record('pod_run', 7.0, peer='edge-0')
    node.record('pod_run', None, peer='edge-1', error='unavailable')

    class Aborted(Exception):
      kind = 'timeout'

    with self.assertRaises(Aborted):
      with node.timed('run'):
        raise Aborted()
    self.assertEqual(node.wrap('describe', lambda: 3)(), 3)
    route = node.wrap_route('manifest', lambda: (409, {}))
    self.assertEqual(route(), (409, {}))
    got = _scrape(node.registry)
    self.assertEqual(got[('tff_edge_up', (('node', 'es-0'),
                                          ('role', 'edge_server')))], 1)
    self.assertEqual(got[('tff_edge_calls_total', (('kind', 'pod_run'),
                                                   ('peer', 'edge-0')))], 2)
    self.assertEqual(got[('tff_edge_call_seconds_count',
                          (('kind', 'pod_run'), ('peer', 'edge-0')))], 2)
    self.assertEqual(got[('tff_edge_call_seconds_sum',
                          (('kind', 'pod_run'), ('peer', 'edge-0')))], 7.2)
    # 0.2 s falls in le=0.25, 7 s only from le=10 on.
    self.assertEqual(got[('tff_edge_call_seconds_bucket',
                          (('kind', 'pod_run'), ('le', '0.25'),
                           ('peer', 'edge-0')))], 1)
    self.assertEqual(got[('tff_edge_call_seconds_bucket',
                          (('kind', 'pod_run'), ('le', '10.0'),
                           ('peer', 'edge-0')))], 2)
    self.assertEqual(got[('tff_edge_call_errors_total',
                          (('error', 'unavailable'), ('kind', 'pod_run'),
                           ('peer', 'edge-1')))], 1)
    self.assertEqual(got[('tff_edge_call_errors_total',
                          (('error', 'timeout'), ('kind', 'run'),
                           ('peer', '')))], 1)
    self.assertEqual(got[('tff_edge_call_errors_total',
                          (('error', 'http_409'), ('kind', 'manifest'),
                           ('peer', '')))], 1)
    self.assertEqual(got[('tff_edge_calls_total', (('kind', 'describe'),
                                                   ('peer', '')))], 1)
    alive[0] = False  # Read at scrape time.
    got = _scrape(node.registry)
    self.assertEqual(got[('tff_edge_up', (('node', 'es-0'),
                                          ('role', 'edge_server')))], 0)

  def test_pod_metrics(self):
    pod = metrics.PodMetrics('edge-3', lambda: True, clients=7)
    pod.executor_restarts.inc()
    got = _scrape(pod.registry)
    self.assertEqual(got[('tff_edge_clients', ())], 7)
    self.assertEqual(got[('tff_edge_executor_restarts_total', ())], 1)
    self.assertEqual(got[('tff_edge_up', (('node', 'edge-3'),
                                          ('role', 'pod')))], 1)

  def test_error_labels_are_bounded(self):
    import grpc  # pylint: disable=g-import-not-at-top

    class WithCode(Exception):
      code = grpc.StatusCode.FAILED_PRECONDITION

    self.assertEqual(metrics.error_label(WithCode()), 'failed_precondition')
    self.assertEqual(metrics.error_label(ValueError('free text')),
                     'ValueError')


class MutualTlsMetricsTest(absltest.TestCase):
  """/metrics of a node with TLS files: only a monitoring certificate."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    certs.write_bundle(cls.dir, ['edge-0', 'prometheus', 'edge-server-0',
                                 'coordinator'])
    cls.node = tls_lib.TlsFiles.from_dir(cls.dir, 'edge-0')
    registry = metrics.CollectorRegistry()
    metrics.PodMetrics('edge-0', lambda: True, 3, registry)
    cls.server = metrics.serve(0, registry, host='127.0.0.1', tls=cls.node)
    cls.url = f'https://localhost:{cls.server.server_port}/metrics'

  @classmethod
  def tearDownClass(cls):
    cls.server.shutdown()
    cls.server.server_close()
    super().tearDownClass()

  def _get(self, client: str | None) -> str:
    context = ssl.create_default_context(cafile=self.node.ca)
    if client:
      files = tls_lib.TlsFiles.from_dir(self.dir, client)
      context.load_cert_chain(files.cert, files.key)
    with urllib.request.urlopen(self.url, context=context, timeout=10) as r:
      return r.read().decode('utf-8')

  def test_a_monitoring_certificate_scrapes(self):
    self.assertIn('tff_edge_clients', self._get('prometheus'))

  def test_other_roles_and_no_certificate_are_cut(self):
    for client in (None, 'edge-server-0', 'coordinator'):
      with self.subTest(client=client):
        with self.assertRaises((urllib.error.URLError, ssl.SSLError,
                                ConnectionError)):
          self._get(client)

  def test_plaintext_gets_nothing(self):
    with socket.create_connection(('127.0.0.1', self.server.server_port),
                                  timeout=10) as sock:
      try:
        sock.sendall(b'GET /metrics HTTP/1.0\r\n\r\n')
        data = sock.recv(4096)
      except ConnectionError:
        data = b''  # Cut: not a TLS handshake.
    self.assertNotIn(b'tff_edge', data)

  def test_without_tls_it_listens_on_loopback_only(self):
    server = metrics.serve(0, metrics.CollectorRegistry())
    try:
      self.assertEqual(server.server_address[0], '127.0.0.1')
    finally:
      server.shutdown()
      server.server_close()


if __name__ == '__main__':
  absltest.main()
