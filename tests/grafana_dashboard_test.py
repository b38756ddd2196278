"""The shipped Grafana dashboard parses and queries only metrics that exist.

k8s/monitoring/grafana-dashboard.json is checked against what the real
registries of workers.metrics expose: each is exercised as the coordinator,
an edge server and a pod exercise it, served on a loopback port, scraped,
and parsed with prometheus-client's own text parser. Every PromQL query of
every panel must name at least one metric; every metric it names must be a
scraped sample name, and every label it matches on must be a label of that
sample (or one Prometheus adds to every target: instance, job).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

from absl.testing import absltest
from prometheus_client import parser

from tests import testutil
from workers import metrics

DASHBOARD = os.path.join(testutil.REPO_ROOT, 'k8s', 'monitoring',
                         'grafana-dashboard.json')
# PromQL's functions, aggregations and keywords used as bare words.
_PROMQL_WORDS = frozenset({
    'sum', 'min', 'max', 'avg', 'count', 'topk', 'bottomk', 'quantile',
    'rate', 'irate', 'increase', 'delta', 'idelta', 'deriv', 'histogram_quantile',
    'clamp_min', 'clamp_max', 'abs', 'time', 'vector', 'scalar', 'by',
    'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and',
    'or', 'unless', 'offset', 'max_over_time', 'min_over_time',
    'avg_over_time', 'last_over_time', 'changes', 'resets', 'label_replace'})
_TARGET_LABELS = frozenset({'instance', 'job'})


def _scraped_samples() -> dict[str, set[str]]:
  """{sample name: its label names} over all three kinds of node."""
  coordinator = metrics.CoordinatorMetrics()
  coordinator.start_run({'output_dir': 'runs/r', 'task': 'fashion_mnist',
                         'rounds': 3, 'target_epsilon': 5.0})
  coordinator.observe_round({
      'round': 1, 'round_seconds': 2.0, 'clients': ['a', 'b'],
      'train': {m: 0.5 for m in metrics.TASK_METRICS},
      'eval': {m: 0.5 for m in metrics.TASK_METRICS},
      'privacy': {'epsilon': 1.0}, 'pod_seconds': {'edge-0': 1.0},
      'failures': [{'pod': 'edge-1', 'kind': 'timeout'}],
      'network': {'coordinator_bytes_sent': 10}})
  server = metrics.NodeMetrics('edge_server', 'es-0', lambda: True)
  server.record('pod_run', 1.0, peer='edge-0')
  server.record('pod_run', None, peer='edge-1', error='unavailable')
  pod = metrics.PodMetrics('edge-0', lambda: True, clients=3)
  pod.record('manifest', 0.01)
  pod.executor_restarts.inc()
  samples: dict[str, set[str]] = {}
  for registry in (coordinator.registry, server.registry, pod.registry):
    http = metrics.serve(0, registry, host='127.0.0.1')
    try:
      with urllib.request.urlopen(
          f'http://127.0.0.1:{http.server_port}/metrics', timeout=10) as r:
        text = r.read().decode('utf-8')
    finally:
      http.shutdown()
      http.server_close()
    for family in parser.text_string_to_metric_families(text):
      for sample in family.samples:
        samples.setdefault(sample.name, set()).update(sample.labels)
  return samples


def _selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
  """(metric name, matched label names) pairs and the other bare words."""
  expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # Strings.
  expr = re.sub(r'\[[^\]]*\]', '', expr)  # Range selectors, $__rate_interval.
  expr = re.sub(r'\b(by|without|on|ignoring)\s*\(([^)]*)\)', r'\1', expr)
  found = []
  for name, matchers in re.findall(
      r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}', expr):
    labels = {m.split('=')[0].strip(' !~') for m in matchers.split(',')
              if m.strip()}
    found.append((name, labels))
  expr = re.sub(r'\{[^}]*\}', '', expr)
  words = set(re.findall(r'(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)', expr))
  named = {n for n, _ in found}
  for word in words - named - _PROMQL_WORDS:
    found.append((word, set()))
  return found, words & _PROMQL_WORDS


class GrafanaDashboardTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with open(DASHBOARD, encoding='utf-8') as f:
      cls.dashboard = json.load(f)
    cls.samples = _scraped_samples()

  def _targets(self):
    for panel in self.dashboard['panels']:
      for target in panel.get('targets', []):
        yield panel['title'], target

  def test_is_an_importable_dashboard(self):
    self.assertEqual(self.dashboard['uid'], 'tff-edge-federation')
    self.assertEqual([i['pluginId'] for i in self.dashboard['__inputs']],
                     ['prometheus'])
    ids = [p['id'] for p in self.dashboard['panels']]
    self.assertLen(set(ids), len(ids))
    self.assertGreaterEqual(len(list(self._targets())), 15)
    for title, target in self._targets():
      self.assertEqual(target['datasource']['uid'], '${DS_PROMETHEUS}', title)

  def test_every_query_names_metrics_that_exist(self):
    used = set()
    for title, target in self._targets():
      selectors, _ = _selectors(target['expr'])
      self.assertNotEmpty(selectors, f'{title}: {target["expr"]}')
      for name, labels in selectors:
        self.assertIn(name, self.samples,
                      f'{title}: {name} is not exposed by workers.metrics')
        self.assertLessEqual(labels, self.samples[name] | _TARGET_LABELS,
                             f'{title}: {name}')
        used.add(name)
    # The series the issue names are on the dashboard.
    for name in ('tff_edge_round', 'tff_edge_round_seconds',
                 'tff_edge_eval_accuracy', 'tff_edge_privacy_epsilon',
                 'tff_edge_failures_total', 'tff_edge_bytes_total',
                 'tff_edge_up', 'tff_edge_calls_total',
                 'tff_edge_call_seconds_bucket',
                 'tff_edge_call_errors_total'):
      self.assertIn(name, used)

  def test_grouping_labels_exist(self):
    for title, target in self._targets():
      for group in re.findall(r'\bby\s*\(([^)]*)\)', target['expr']):
        labels = {g.strip() for g in group.split(',')}
        names = [n for n, _ in _selectors(target['expr'])[0]]
        available = set().union(*(self.samples[n] for n in names))
        self.assertLessEqual(labels, available | _TARGET_LABELS, title)

  def test_the_checker_catches_a_wrong_name(self):
    selectors, _ = _selectors(
        'sum by (kind) (rate(tff_edge_failure_total{kind="x"}[5m]))')
    self.assertEqual(selectors, [('tff_edge_failure_total', {'kind'})])
    self.assertNotIn('tff_edge_failure_total', self.samples)


if __name__ == '__main__':
  absltest.main()
