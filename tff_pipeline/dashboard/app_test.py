"""Tests for tff_pipeline.dashboard.app over a real HTTP server."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
from typing import Optional

from absl.testing import absltest
import portpicker
import yaml
from werkzeug import serving

from tff_pipeline.dashboard import app as app_lib

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


class AppTest(absltest.TestCase):

  def _serve(self, runs_dir: str, **kwargs) -> None:
    server = serving.make_server('127.0.0.1', 0,
                                 app_lib.create_app(runs_dir, **kwargs),
                                 threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    self.addCleanup(server.server_close)
    self.addCleanup(server.shutdown)
    self.port = server.server_port

  def _get(self, path: str, headers: Optional[dict[str, str]] = None
           ) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=20)
    try:
      connection.request('GET', path, headers=headers or {})
      response = connection.getresponse()
      return response.status, dict(response.getheaders()), response.read()
    finally:
      connection.close()

  def _json(self, path: str, **headers):
    status, _, body = self._get(path, headers)
    return status, json.loads(body)

  def _runs(self) -> str:
    root = self.create_tempdir().full_path
    rows = [{'round': 1, 'round_seconds': 1.5, 'clients': ['client_0007'],
             'train': {'loss': 2.0, 'accuracy': 0.25},
             'eval': {'loss': 1.5, 'accuracy': 0.5},
             'privacy': {'epsilon': 0.75, 'delta': 1e-5},
             'failures': [{'pod': 'edge-1', 'kind': 'error',
                           'clients': ['client_0042'], 'error': 'x'}]}]
    _write(os.path.join(root, 'dp', 'config.json'),
           json.dumps({'task': 'fashion_mnist', 'aggregator': 'dp_fixed',
                       'rounds': 2, 'target_epsilon': 4.0}))
    _write(os.path.join(root, 'dp', 'metrics.jsonl'),
           ''.join(json.dumps(r) + '\n' for r in rows))
    _write(os.path.join(root, 'bad', 'config.json'),
           json.dumps({'task': 'movielens', 'rounds': 3}))
    _write(os.path.join(root, 'bad', 'metrics.jsonl'),
           '{"round": 1, "round_seconds": 2.0, "eval": {"rmse": 0.97}}\n'
           'garbage\n'
           '{"round": 2, "round_seconds": 2.0, "eval": {"rmse": 0.95}}\n')
    _write(os.path.join(root, 'bad', 'summary.json'),
           json.dumps({'final_round': 2, 'final_eval': {'rmse': 0.95}}))
    return root

  def test_runs_list_and_one_run(self):
    self._serve(self._runs())
    status, data = self._json('/api/runs')
    self.assertEqual(status, 200)
    self.assertIsNone(data['problem'])
    by_name = {r['name']: r for r in data['runs']}
    self.assertEqual(set(by_name), {'dp', 'bad'})
    self.assertEqual(by_name['dp']['state'], 'live')
    self.assertEqual(by_name['dp']['epsilon'], 0.75)
    self.assertEqual(by_name['dp']['target_epsilon'], 4.0)
    self.assertEqual(by_name['bad']['state'], 'finished')
    self.assertEqual(by_name['bad']['metric'], 'rmse')
    self.assertEqual(by_name['bad']['eval'], {'rmse': 0.95})
    self.assertLen(by_name['bad']['problems'], 1)
    status, run = self._json('/api/runs/bad')
    self.assertEqual(status, 200)
    self.assertEqual([r['round'] for r in run['rows']], [1, 2])
    self.assertIn('line 2 is not JSON', run['problems'][0])
    self.assertEqual(run['metrics'], ['rmse'])
    status, run = self._json('/api/runs/nope')
    self.assertEqual(status, 404)
    self.assertIn("no run 'nope'", run['problem'])

  def test_dp_run_sends_no_client_ids(self):
    self._serve(self._runs())
    for path in ('/api/runs', '/api/runs/dp', '/api/federation?run=dp'):
      status, _, body = self._get(path)
      self.assertEqual(status, 200, path)
      self.assertNotIn(b'client_00', body, path)
    _, run = self._json('/api/runs/dp')
    self.assertTrue(run['private'])
    self.assertEqual(run['rows'][0]['clients_count'], 1)
    self.assertEqual(run['rows'][0]['failures'][0]['clients_count'], 1)

  def test_missing_runs_folder_and_unreachable_nodes_are_said_in_place(self):
    dead = f'127.0.0.1:{portpicker.pick_unused_port()}'
    topology = os.path.join(self.create_tempdir().full_path, 't.yaml')
    with open(topology, 'w', encoding='utf-8') as f:
      yaml.safe_dump({'edge_servers': [{
          'name': 'es-0', 'address': dead, 'health': dead,
          'pods': [{'name': 'edge-0', 'address': dead, 'health': dead}]}]}, f)
    self._serve('/nonexistent/runs', topology=topology)
    status, data = self._json('/api/runs')
    self.assertEqual(status, 200)
    self.assertIn('/nonexistent/runs does not exist', data['problem'])
    status, data = self._json('/api/federation')
    self.assertEqual(status, 200)
    server = data['edge_servers'][0]
    self.assertEqual((server['state'], server['pods'][0]['state']),
                     ('down', 'down'))
    self.assertIn('connection refused', server['pods'][0]['problems'][0])
    self.assertEqual(data['coordinator']['state'], 'idle')
    for page in ('/', '/runs/x', '/federation', '/compare'):
      status, _, body = self._get(page)
      self.assertEqual(status, 200, page)
      self.assertIn(b'data-page=', body)

  def test_unchanged_answers_are_304(self):
    self._serve(self._runs())
    status, headers, _ = self._get('/api/runs/bad')
    self.assertEqual(status, 200)
    status, _, body = self._get('/api/runs/bad',
                                {'If-None-Match': headers['ETag']})
    self.assertEqual((status, body), (304, b''))

  def test_token(self):
    token = 'x' * 24
    self._serve(self._runs(), token=token)
    self.assertEqual(self._get('/api/runs')[0], 401)
    self.assertEqual(self._get('/')[0], 401)
    self.assertEqual(self._get('/static/app.js')[0], 401)
    self.assertEqual(self._get('/api/runs?token=wrong')[0], 401)
    self.assertEqual(self._get('/healthz')[0], 200)
    self.assertEqual(self._get('/api/runs', {
        'Authorization': f'Bearer {token}'})[0], 200)
    status, headers, _ = self._get(f'/runs/dp?token={token}&a=1')
    self.assertEqual(status, 303)
    self.assertEqual(headers['Location'], '/runs/dp?a=1')  # Token dropped.
    cookie = headers['Set-Cookie']
    self.assertIn('HttpOnly', cookie)
    self.assertIn('SameSite=Strict', cookie)
    self.assertEqual(self._get('/api/runs', {
        'Cookie': cookie.split(';', 1)[0]})[0], 200)

  def test_loopback_only_refuses_other_host_names(self):
    self._serve(self._runs())
    self.assertEqual(self._get('/', {'Host': 'evil.example:8080'})[0], 403)
    self.assertEqual(self._get('/', {'Host': f'localhost:{self.port}'})[0],
                     200)
    self.assertEqual(self._get('/', {'Host': f'[::1]:{self.port}'})[0], 200)
    self._serve(self._runs(), loopback_only=False, token='y' * 20)
    self.assertEqual(self._get('/', {'Host': 'dash.example'})[0], 401)

  def test_pages_load_nothing_from_elsewhere(self):
    self._serve(self._runs())
    _, headers, page = self._get('/runs/dp')
    self.assertIn("script-src 'self'", headers['Content-Security-Policy'])
    self.assertEqual(headers['X-Content-Type-Options'], 'nosniff')
    assets = re.findall(rb'(?:src|href)="([^"]+)"', page)
    self.assertNotEmpty(assets)
    for asset in assets:
      self.assertTrue(asset.startswith(b'/'), asset)
      if asset.startswith(b'/static/'):
        self.assertEqual(self._get(asset.decode())[0], 200, asset)
    # No URL in any asset but the SVG namespace.
    for name in os.listdir(os.path.join(_PACKAGE, 'static')):
      with open(os.path.join(_PACKAGE, 'static', name), encoding='utf-8') as f:
        urls = set(re.findall(r'https?://[^\s\'"`)]+', f.read()))
      self.assertLessEqual(urls, {'http://www.w3.org/2000/svg'}, name)


if __name__ == '__main__':
  absltest.main()
