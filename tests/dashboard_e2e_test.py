"""The dashboard in a real browser, watching a real training on real pods.

Two edge pods under one edge server (processes started here, with mutual
TLS when nginx is installed, each tier with --metrics_port), the dashboard
(`python -m tff_pipeline.dashboard`) and a short remote training
(`python -m tff_pipeline.train --executor=remote`: logistic regression on
Fashion-MNIST, 6 clients, 4 per round). Debian's headless Chromium loads
the run's page once, before the run exists, and the test watches it:

  * the page says in place that the run does not exist yet, then shows it;
  * the round counter advances while the run trains, without a reload;
  * after the run, every chart holds exactly the points of metrics.jsonl;
  * edge-1 is SIGKILLed mid-run: later rounds record it as failed, the
    failures chart shows them, and the federation page draws it down while
    edge-0 and the edge server stay up (with their TLS identities);
  * /metrics of the coordinator, the edge server and a pod have the named
    series;
  * a corrupt metrics.jsonl line is reported on the page, the rest drawn.

Screenshots go to the test's output dir ($TEST_UNDECLARED_OUTPUTS_DIR under
Bazel). Skipped when Chromium is not installed (apt package `chromium`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

from absl.testing import absltest
import portpicker
from prometheus_client import parser
import yaml

from data_prep import images
from tests import chromium
from tests import testutil
from workers import certs
from workers import health
from workers import placement
from workers import tls
from workers import tls_terminator

_ROUNDS = 10
_KILL_AFTER_ROUND = 3
# 4 of 6 clients per round, 3 on each pod: every round has a client on the
# surviving pod, so the run goes on after edge-1 dies.
_TRAIN_FLAGS = ('--task=fashion_mnist', '--model=lr', '--num_clients=6',
                '--partition=iid', '--seed=0', '--clients_per_round=4',
                f'--rounds={_ROUNDS}', '--eval_every=1', '--progress=false',
                '--round_retries=0')


def _env() -> dict[str, str]:
  env = dict(os.environ, PYTHONPATH=testutil.REPO_ROOT,
             TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('TFF_DASHBOARD_TOKEN', None)
  return env


def _scrape(port: int, tls_dir: str | None) -> dict[tuple[str, tuple], float]:
  """A node's /metrics: with TLS as Prometheus would (monitoring role)."""
  if tls_dir is None:
    url, context = f'http://127.0.0.1:{port}/metrics', None
  else:
    files = tls.TlsFiles.from_dir(tls_dir, 'prometheus')
    context = ssl.create_default_context(cafile=files.ca)
    context.load_cert_chain(files.cert, files.key)
    url = f'https://localhost:{port}/metrics'
  with urllib.request.urlopen(url, context=context, timeout=10) as r:
    text = r.read().decode('utf-8')
  return {(s.name, tuple(sorted(s.labels.items()))): s.value
          for f in parser.text_string_to_metric_families(text)
          for s in f.samples}


def _rows(path: str) -> list[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      return [json.loads(line) for line in f if line.endswith('\n')]
  except FileNotFoundError:
    return []


class DashboardEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.binary = chromium.find()
    if cls.binary is None:
      raise absltest.SkipTest('Chromium is not installed (Debian package '
                              '`chromium`); the browser test needs it')
    if not os.path.isdir(testutil.FASHION_MNIST_DIR):
      raise absltest.SkipTest(f'no Fashion-MNIST in {testutil.FASHION_MNIST_DIR}')
    cls.root = tempfile.mkdtemp(prefix='dashboard-e2e-')
    # Kept after the test (the rest of root is not).
    cls.out = os.environ.get('TEST_UNDECLARED_OUTPUTS_DIR') or tempfile.mkdtemp(
        prefix='dashboard-e2e-screenshots-')
    cls.processes: list[subprocess.Popen] = []
    cls.by_name: dict[str, subprocess.Popen] = {}
    try:
      cls._start_cluster()
    except BaseException:
      cls.tearDownClass()
      raise

  @classmethod
  def tearDownClass(cls):
    for process in reversed(getattr(cls, 'processes', [])):
      if process.poll() is None:
        process.terminate()
    for process in getattr(cls, 'processes', []):
      try:
        process.wait(20)
      except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(getattr(cls, 'root', ''), ignore_errors=True)
    super().tearDownClass()

  @classmethod
  def _spawn(cls, name: str, *args: str) -> subprocess.Popen:
    log = open(os.path.join(cls.root, f'{name}.log'), 'wb')
    process = subprocess.Popen([sys.executable, '-m', *args],
                               cwd=testutil.REPO_ROOT, env=_env(),
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    cls.processes.append(process)
    cls.by_name[name] = process
    return process

  @classmethod
  def _log(cls, name: str) -> str:
    with open(os.path.join(cls.root, f'{name}.log'), encoding='utf-8',
              errors='replace') as f:
      return f.read()[-3000:]

  @classmethod
  def _start_cluster(cls) -> None:
    manifest = images.find_or_prepare(
        task='fashion_mnist', data_dir=None,
        shard_dir=os.path.join(cls.root, 'shards'), num_clients=6,
        partition='iid', partition_alpha=0.5, seed=0)
    pods = ['edge-0', 'edge-1']
    assigned = placement.assign_filled(manifest.client_ids(), pods, '')
    try:
      tls_terminator.find_nginx()
      cls.tls_dir = os.path.join(cls.root, 'certs')
      certs.write_bundle(cls.tls_dir, ['coordinator', 'edge-server-0',
                                       'prometheus', *pods])
    except tls_terminator.TerminatorError:
      cls.tls_dir = None  # Plain channels; the page then says plaintext.
    port = portpicker.pick_unused_port
    cls.metrics_ports = {name: port() for name in
                         ('coordinator', 'edge-server-0', *pods)}
    spec_pods = []
    for name in pods:
      pod_dir = os.path.join(cls.root, 'pods', name)
      placement.write_pod_dir(manifest, assigned[name], pod_dir)
      address, health_address = f'127.0.0.1:{port()}', f'127.0.0.1:{port()}'
      args = ['workers.edge_pod', f'--name={name}', f'--data_dir={pod_dir}',
              f'--port={address.rsplit(":", 1)[1]}',
              f'--health_port={health_address.rsplit(":", 1)[1]}',
              '--verify_shards=false',
              f'--metrics_port={cls.metrics_ports[name]}']
      if cls.tls_dir:
        args += [f'--tls_dir={cls.tls_dir}',
                 f'--run_dir={os.path.join(cls.root, "run", name)}']
      cls._spawn(name, *args)
      spec_pods.append({'name': name, 'address': address,
                        'health': health_address})
    eval_dir = os.path.join(cls.root, 'coordinator')
    placement.write_eval_dir(manifest, eval_dir)
    server_health = f'127.0.0.1:{port()}'
    topology = {'edge_servers': [{'name': 'edge-server-0',
                                  'address': f'127.0.0.1:{port()}',
                                  'health': server_health,
                                  'pods': spec_pods}],
                'eval_data': eval_dir}
    if cls.tls_dir:
      topology['tls_dir'] = cls.tls_dir
    cls.topology = os.path.join(cls.root, 'topology.yaml')
    with open(cls.topology, 'w', encoding='utf-8') as f:
      yaml.safe_dump(topology, f)
    cls._spawn('edge-server-0', 'workers.edge_server',
               f'--topology={cls.topology}', '--name=edge-server-0',
               f'--metrics_port={cls.metrics_ports["edge-server-0"]}')
    cls.runs = os.path.join(cls.root, 'runs')
    cls.dashboard_port = port()
    cls._spawn('dashboard', 'tff_pipeline.dashboard', f'--runs={cls.runs}',
               f'--topology={cls.topology}', f'--port={cls.dashboard_port}',
               '--poll_seconds=0.5')
    deadline = time.monotonic() + 180
    for name, address, path in [
        *[(p['name'], p['health'], '/readyz') for p in spec_pods],
        ('edge-server-0', server_health, '/readyz'),
        ('dashboard', f'127.0.0.1:{cls.dashboard_port}', '/healthz')]:
      while True:
        if cls.by_name[name].poll() is not None:
          raise AssertionError(f'{name} exited: {cls._log(name)}')
        try:
          if health.get_json(address, path, 2.0)[0] == 200:
            break
        except OSError:
          pass
        if time.monotonic() > deadline:
          raise AssertionError(f'{name} not ready: {cls._log(name)}')
        time.sleep(0.2)
    cls.url = f'http://127.0.0.1:{cls.dashboard_port}'

  def _points(self, browser: chromium.Chromium, chart: str,
              shape: str = 'circle.pt') -> dict[str, list[tuple[float, float]]]:
    """{series: [(x, y), ...]} as plotted in the page's SVG."""
    found = browser.evaluate(f'''
        [...document.querySelectorAll('svg[data-chart="{chart}"] {shape}')]
          .map(e => [e.dataset.series || '', e.dataset.x, e.dataset.y])''')
    out: dict[str, list[tuple[float, float]]] = {}
    for series, x, y in found:
      out.setdefault(series, []).append((float(x), float(y)))
    return out

  def test_live_run_charts_and_a_killed_pod(self):
    browser = chromium.Chromium(self.binary, width=1280, height=900)
    self.addCleanup(browser.close)
    run_dir = os.path.join(self.runs, 'e2e')
    # The page is open before the run (and the runs folder) exists: it says
    # so, in place.
    browser.navigate(f'{self.url}/runs/e2e')
    self.assertRegex(browser.wait_for(
        'document.getElementById("run-problem")?.textContent'),
                     r"runs folder .* does not exist|no run 'e2e'")
    origin = browser.evaluate('performance.timeOrigin')

    start = time.monotonic()
    train = self._spawn(
        'train', 'tff_pipeline.train', *_TRAIN_FLAGS, '--executor=remote',
        f'--topology={self.topology}', f'--output_dir={run_dir}',
        f'--metrics_port={self.metrics_ports["coordinator"]}')
    seen_rounds, seen_states, coordinator_metrics = [], set(), None
    killed_at = None
    mid_run_points = None
    while train.poll() is None:
      self.assertLess(time.monotonic() - start, 300, self._log('train'))
      shown = browser.evaluate(
          '[document.getElementById("round")?.dataset.round,'
          ' document.querySelector(".runhead .badge")?.dataset.state]')
      if shown[0] is not None:
        seen_rounds.append(int(shown[0]))
        seen_states.add(shown[1])
      done = len(_rows(os.path.join(run_dir, 'metrics.jsonl')))
      if killed_at is None and done >= _KILL_AFTER_ROUND:
        self.by_name['edge-1'].send_signal(signal.SIGKILL)
        killed_at = done
      if coordinator_metrics is None and done >= 2:
        coordinator_metrics = _scrape(self.metrics_ports['coordinator'], self.tls_dir)
      if mid_run_points is None and 0 < (seen_rounds or [0])[-1] < _ROUNDS:
        mid_run_points = self._points(browser, 'metric-accuracy')
      time.sleep(0.25)
    train_seconds = time.monotonic() - start
    self.assertEqual(train.returncode, 0, self._log('train'))
    rows = _rows(os.path.join(run_dir, 'metrics.jsonl'))
    self.assertLen(rows, _ROUNDS)

    # Live: the counter moved through several rounds on ONE page load.
    browser.wait_for('document.querySelector(".runhead .badge")'
                     '?.dataset.state === "finished"', timeout=30)
    self.assertEqual(browser.evaluate(
        'document.getElementById("round").textContent'), str(_ROUNDS))
    self.assertEqual(browser.evaluate('performance.timeOrigin'), origin)
    distinct = sorted(set(r for r in seen_rounds if r > 0))
    self.assertGreaterEqual(len(distinct), 3, seen_rounds)
    self.assertLess(distinct[0], _ROUNDS)
    self.assertEqual(seen_rounds, sorted(seen_rounds))  # Never backwards.
    self.assertIn('live', seen_states)
    self.assertIsNotNone(mid_run_points)
    self.assertLess(len(mid_run_points.get('eval (held-out)', [])), _ROUNDS)

    # The charts hold exactly the rows of metrics.jsonl.
    def plotted(points, series):
      return sorted(points.get(series, []))

    def column(pick):
      return sorted((float(r['round']), float(pick(r))) for r in rows
                    if pick(r) is not None)

    for metric in ('accuracy', 'loss'):
      points = self._points(browser, f'metric-{metric}')
      self.assertEqual(plotted(points, 'train (clients)'),
                       column(lambda r, m=metric: r['train'].get(m)))
      self.assertEqual(plotted(points, 'eval (held-out)'),
                       column(lambda r, m=metric: r['eval'].get(m)))
    points = self._points(browser, 'round-seconds')
    self.assertEqual(plotted(points, 'round'),
                     column(lambda r: r['round_seconds']))
    points = self._points(browser, 'pod-seconds')
    for pod in ('edge-0', 'edge-1'):
      self.assertEqual(plotted(points, pod),
                       column(lambda r, p=pod: r['pod_seconds'].get(p)))
    bars = self._points(browser, 'failures', 'rect.bar')['']
    self.assertEqual(sorted(bars), column(lambda r: len(r['failures'])))

    # The kill: edge-1 failed in the rounds after it, and only edge-1.
    failed = [(r['round'], f['pod'], f['kind']) for r in rows
              for f in r['failures']]
    self.assertNotEmpty(failed)
    self.assertEqual({pod for _, pod, _ in failed}, {'edge-1'})
    self.assertGreater(min(r for r, _, _ in failed), killed_at - 1)
    self.assertEqual(browser.evaluate(
        'document.querySelectorAll("#failure-list tbody tr").length'),
        min(8, len(failed)))
    browser.screenshot(os.path.join(self.out, 'dashboard-run.png'))

    # The federation: edge-1 drawn down, the rest up.
    browser.navigate(f'{self.url}/federation')
    browser.wait_for('document.querySelector(\'.node[data-node="edge-1"]\')'
                     '?.dataset.state === "down"', timeout=30)
    states = browser.evaluate('''Object.fromEntries([...document
        .querySelectorAll(".node")].map(n => [n.dataset.node, n.dataset.state]))''')
    self.assertEqual(states, {'coordinator': 'idle', 'edge-server-0': 'up',
                              'edge-0': 'up', 'edge-1': 'down'})
    facts = browser.evaluate('''Object.fromEntries([...document.querySelectorAll(
        '.node[data-node="edge-1"] dd')].map(d => [d.dataset.fact, d.textContent]))''')
    self.assertTrue(facts['failures'].startswith(str(len(failed))), facts)
    tls_fact = browser.evaluate('''document.querySelector(
        '.node[data-node="edge-0"] dd[data-fact="TLS"]').textContent''')
    if self.tls_dir:
      self.assertTrue(tls_fact.startswith('edge-0 · by tff-edge cluster CA'),
                      tls_fact)
    else:
      self.assertEqual(tls_fact, 'plaintext (no tls_dir)')
    self.assertEqual(browser.evaluate(
        'document.querySelectorAll("svg.wires path").length'), 3)
    browser.screenshot(os.path.join(self.out, 'dashboard-federation.png'))

    # /metrics of every tier.
    self.assertGreaterEqual(coordinator_metrics[('tff_edge_round', ())], 1)
    for name in ('tff_edge_round_seconds', 'tff_edge_eval_accuracy',
                 'tff_edge_privacy_epsilon'):
      self.assertIn((name, ()), coordinator_metrics)
    self.assertIn(('tff_edge_failures_total', (('kind', 'unavailable'),)),
                  coordinator_metrics)
    self.assertIn(('tff_edge_bytes_total', (('direction', 'sent'),
                                            ('tier', 'coordinator'))),
                  coordinator_metrics)
    server = _scrape(self.metrics_ports['edge-server-0'], self.tls_dir)
    self.assertEqual(server[('tff_edge_up', (('node', 'edge-server-0'),
                                             ('role', 'edge_server')))], 1)
    self.assertGreaterEqual(
        server[('tff_edge_calls_total', (('kind', 'run'), ('peer', '')))],
        _ROUNDS)
    for kind in {k for _, _, k in failed}:
      self.assertEqual(
          server[('tff_edge_call_errors_total',
                  (('error', kind), ('kind', 'pod_run'), ('peer', 'edge-1')))],
          sum(1 for _, _, k in failed if k == kind))
    self.assertIn(('tff_edge_call_seconds_count',
                   (('kind', 'pod_run'), ('peer', 'edge-0'))), server)
    pod = _scrape(self.metrics_ports['edge-0'], self.tls_dir)
    self.assertEqual(pod[('tff_edge_up', (('node', 'edge-0'),
                                          ('role', 'pod')))], 1)
    self.assertEqual(pod[('tff_edge_clients', ())], 3)

    # A corrupt line: said on the page, the other rows still drawn.
    broken = os.path.join(self.runs, 'broken')
    os.makedirs(broken)
    shutil.copy(os.path.join(run_dir, 'config.json'), broken)
    with open(os.path.join(broken, 'metrics.jsonl'), 'w',
              encoding='utf-8') as f:
      f.write(json.dumps(rows[0]) + '\n{"round": 2, "trai\n' +
              json.dumps(rows[2]) + '\n')
    browser.navigate(f'{self.url}/runs/broken')
    problem = browser.wait_for(
        'document.getElementById("problems")?.textContent')
    self.assertIn('metrics.jsonl line 2 is not JSON', problem)
    self.assertEqual(sorted(self._points(browser, 'round-seconds')['round']),
                     [(1.0, rows[0]['round_seconds']),
                      (3.0, rows[2]['round_seconds'])])

    # The runs list shows both.
    browser.navigate(self.url)
    listed = browser.wait_for('''Object.fromEntries([...document
        .querySelectorAll("#runs tbody tr")].map(r => [r.dataset.run, r.dataset.state]))''')
    self.assertEqual(listed['e2e'], 'finished')
    self.assertIn('broken', listed)
    print(f'dashboard e2e: training took {train_seconds:.1f} s; rounds seen '
          f'on the page: {distinct}; screenshots in {self.out}',
          file=sys.stderr)


if __name__ == '__main__':
  absltest.main()
