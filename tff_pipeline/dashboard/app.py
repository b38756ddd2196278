"""The dashboard's web application (Flask): pages, JSON API, access control.

Pages (one HTML shell each; static/app.js draws them from the JSON API and
polls it, so a running training updates without a reload):

  /                 every run under --runs: live ones marked, config, results
  /runs/<name>      one run: task metric curves, epsilon against the target,
                    seconds per round and per pod, failures, bytes per tier
  /compare?run=a&run=b   several runs on one chart
  /federation       coordinator -> edge servers -> pods, each node's state

API: /api/runs, /api/runs/<name>, /api/federation[?run=<name>] (JSON, with
ETags so an unchanged answer costs a 304). Everything is served from this
package (static/): no CDN, the machines are offline.

Access: `token` set, every route but /healthz needs it, as
`Authorization: Bearer <token>` or once as `?token=<token>` (which sets an
HttpOnly, SameSite=Strict cookie and redirects to the same URL without it).
`loopback_only` (the default, listening on 127.0.0.1) also refuses requests
whose Host is not a loopback name, so a web page cannot reach the dashboard
by pointing its own domain at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import hmac
import os
import urllib.parse
from typing import Any, Optional

import flask

from tff_pipeline.dashboard import federation as federation_lib
from tff_pipeline.dashboard import runs as runs_lib

_COOKIE = 'tff_dashboard_token'
_LOOPBACK_NAMES = frozenset({'127.0.0.1', 'localhost', '::1', '[::1]'})
# Scripts, styles and data from this server only (no inline code, no CDN).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'")
_TASK_METRICS = ('accuracy', 'loss', 'rmse', 'recall_at_5')


def _primary_metric(values: Optional[dict[str, Any]]) -> Optional[str]:
  """The metric a run is judged by: RMSE for ratings, else accuracy."""
  if not values:
    return None
  for name in ('rmse', 'accuracy', 'recall_at_5', 'loss'):
    if name in values:
      return name
  return None


def run_brief(run: runs_lib.Run) -> dict[str, Any]:
  """One line of the runs list."""
  config = run.config or {}
  summary = run.summary or {}
  last = run.rows[-1] if run.rows else {}
  evaluated = [r for r in run.rows if isinstance(r.get('eval'), dict)]
  final = summary.get('final_eval') or (evaluated[-1]['eval'] if evaluated
                                        else None)
  privacy = summary.get('privacy') or last.get('privacy') or {}
  return {
      'name': run.name, 'state': run.state, 'updated': run.updated,
      'task': config.get('task'), 'model': config.get('model'),
      'algorithm': config.get('algorithm'),
      'aggregator': config.get('aggregator'),
      'executor': config.get('executor'),
      'num_clients': config.get('num_clients'),
      'clients_per_round': config.get('clients_per_round'),
      'rounds': config.get('rounds'), 'round': last.get('round'),
      'eval': final, 'metric': _primary_metric(final),
      'eval_round': (summary.get('final_round') if summary.get('final_eval')
                     else (evaluated[-1]['round'] if evaluated else None)),
      'epsilon': privacy.get('epsilon'), 'delta': privacy.get('delta'),
      'target_epsilon': config.get('target_epsilon'),
      'wall_seconds': summary.get('wall_seconds'),
      'mean_round_seconds': summary.get('mean_round_seconds'),
      'private': run.private, 'problems': run.problems,
  }


def run_detail(run: runs_lib.Run) -> dict[str, Any]:
  """Everything the run page draws; DP runs carry no client ids."""
  return {'name': run.name, 'state': run.state, 'updated': run.updated,
          'version': run.version, 'private': run.private,
          'config': run.config, 'summary': run.summary,
          'rows': runs_lib.public_rows(run.rows, run.private),
          'problems': run.problems, 'metrics': [
              m for m in _TASK_METRICS
              if any(m in (r.get('train') or {}) or m in (r.get('eval') or {})
                     for r in run.rows)]}


def create_app(runs_dir: str, topology: Optional[str] = None, *,
               tls_dir: str = '', tls_name: str = 'coordinator',
               token: Optional[str] = None, loopback_only: bool = True,
               poll_seconds: float = 2.0,
               federation: Optional[federation_lib.Federation] = None
               ) -> flask.Flask:
  """The dashboard over `runs_dir` (and the nodes of `topology`).

  Args:
    runs_dir: Folder of runs (or one run's folder); may not exist yet.
    topology: Topology YAML of the cluster, for the federation page.
    tls_dir: Overrides the topology's tls_dir.
    tls_name: The certificate (<tls_name>.crt/.key in the TLS dir) the
      dashboard presents to the nodes.
    token: If set, required on every route but /healthz.
    loopback_only: Refuse requests whose Host is not a loopback name.
    poll_seconds: How often the pages ask for news.
    federation: A Federation to use instead of one built from the above.
  """
  app = flask.Flask(__name__)
  app.json.sort_keys = False
  folder = runs_lib.RunsFolder(runs_dir)
  nodes = federation or federation_lib.Federation(topology, tls_dir, tls_name)

  @app.before_request
  def guard():
    if loopback_only:
      host = urllib.parse.urlsplit('//' + flask.request.host).hostname or ''
      if host not in _LOOPBACK_NAMES and f'[{host}]' not in _LOOPBACK_NAMES:
        return flask.Response(
            f'this dashboard listens on loopback and answers only to '
            f'localhost or 127.0.0.1, not {flask.request.host}\n', 403,
            mimetype='text/plain')
    if token is None or flask.request.path == '/healthz':
      return None
    given = flask.request.args.get('token')
    if given is not None and hmac.compare_digest(given, token):
      query = [(k, v) for k, v in flask.request.args.items(multi=True)
               if k != 'token']
      target = flask.request.path + (
          '?' + urllib.parse.urlencode(query) if query else '')
      response = flask.redirect(target, 303)
      response.set_cookie(_COOKIE, token, httponly=True, samesite='Strict',
                          secure=flask.request.is_secure)
      return response
    header = flask.request.headers.get('Authorization', '')
    offered = (header[len('Bearer '):] if header.startswith('Bearer ')
               else flask.request.cookies.get(_COOKIE, ''))
    if offered and hmac.compare_digest(offered, token):
      return None
    return flask.Response(
        'this dashboard needs its access token: open the URL it printed at '
        'start (…/?token=…) or send "Authorization: Bearer <token>"\n', 401,
        mimetype='text/plain', headers={'WWW-Authenticate': 'Bearer'})

  @app.after_request
  def headers(response: flask.Response) -> flask.Response:
    response.headers['Content-Security-Policy'] = _CSP
    response.headers['X-Content-Type-Options'] = 'nosniff'
    response.headers['Referrer-Policy'] = 'no-referrer'
    response.headers['X-Frame-Options'] = 'DENY'
    if flask.request.path.startswith('/api/'):
      response.headers['Cache-Control'] = 'no-cache'
    return response

  def page(name: str, title: str, run: str = '') -> str:
    return flask.render_template('page.html', page=name, title=title,
                                 run=run, poll_ms=int(poll_seconds * 1000))

  def api(body: dict[str, Any]) -> flask.Response:
    response = flask.jsonify(body)
    response.add_etag()
    return response.make_conditional(flask.request)

  @app.get('/')
  def runs_page():
    return page('runs', 'Runs')

  @app.get('/runs/<path:name>')
  def run_page(name: str):
    return page('run', name, run=name)

  @app.get('/compare')
  def compare_page():
    return page('compare', 'Compare runs')

  @app.get('/federation')
  def federation_page():
    return page('federation', 'Federation')

  @app.get('/healthz')
  def healthz():
    return {'ok': True}

  @app.get('/api/runs')
  def api_runs():
    problem = folder.problem()
    runs = [] if problem else folder.all()
    return api({'root': os.path.abspath(runs_dir), 'problem': problem,
                'runs': [run_brief(r) for r in runs]})

  @app.get('/api/runs/<path:name>')
  def api_run(name: str):
    run = folder.read(name)
    if run is None:
      problem = folder.problem() or (
          f'no run {name!r} under {os.path.abspath(runs_dir)} (no '
          'config.json or metrics.jsonl there)')
      return flask.jsonify({'name': name, 'problem': problem}), 404
    return api(run_detail(run))

  @app.get('/api/federation')
  def api_federation():
    run = federation_lib.pick_run(folder, topology,
                                  flask.request.args.get('run') or None)
    return api(federation_lib.annotate(nodes.snapshot(), run))

  return app
