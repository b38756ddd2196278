import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from absl.testing import absltest
import numpy as np
import portpicker
from prometheus_client import parser as prom_parser

from data_prep import shards
from tests import testutil
from workers import certs
from workers import executor_client
from workers import health
from workers import tls
from workers.secagg import keys as secagg_keys
from workers.secagg import maskfile
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import server as server_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shard_dir() -> str:
  per_client = {f'c{i}': {'x': np.full((3, 2), i, np.int64),
                          'y': np.arange(3, dtype=np.int64)} for i in range(3)}
  return shards.write_shards(
      os.path.join(tempfile.mkdtemp(), 'pod'), 'toy',
      {'x': {'kind': 'int64', 'shape': [2]}, 'y': {'kind': 'int64', 'shape': []}},
      per_client.items(), eval_examples=None, num_classes=3,
      partition={'method': 'natural'}, source={}, label_key='y').shard_dir


def _run_to_exit(data_dir: str) -> subprocess.CompletedProcess:
  """Runs a pod expected to refuse `data_dir` at start."""
  env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
      [sys.executable, '-m', 'workers.edge_pod', f'--data_dir={data_dir}',
       f'--port={portpicker.pick_unused_port()}',
       f'--health_port={portpicker.pick_unused_port()}', '--insecure'],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=120)


class EdgePodTest(absltest.TestCase):

  def _start(self, data_dir: str, *extra: str):
    if not any(arg.startswith('--tls_dir') for arg in extra):
      extra = (*extra, '--insecure')
    port, health_port = (portpicker.pick_unused_port(),
                         portpicker.pick_unused_port())
    self.port = port
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    process = subprocess.Popen(
        [sys.executable, '-m', 'workers.edge_pod', f'--port={port}',
         f'--health_port={health_port}', f'--data_dir={data_dir}',
         '--name=edge-7', *extra], cwd=_REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    self.addCleanup(lambda: process.poll() is None and process.kill())
    address = f'127.0.0.1:{health_port}'
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      self.assertIsNone(process.poll(), 'pod exited early')
      try:
        if health.get_json(address, '/readyz', 1.0)[0] == 200:
          return process, address
      except OSError:
        pass
      time.sleep(0.2)
    self.fail('pod never became ready')

  def test_serves_manifest_and_stops_cleanly_on_sigterm(self):
    process, address = self._start(_shard_dir())
    status, body = health.get_json(address, '/manifest')
    self.assertEqual(status, 200)
    self.assertEqual(body['pod'], 'edge-7')
    self.assertEqual([c['client_id'] for c in body['manifest']['clients']],
                     ['c0', 'c1', 'c2'])
    self.assertEqual(health.get_json(address, '/healthz')[0], 200)
    executor = testutil.child_pids(process.pid)
    self.assertLen(executor, 1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    self.assertEqual(process.returncode, 0, output)
    self.assertIn('stopped', output)
    self.assertFalse(testutil.pid_alive(executor[0]))

  def test_publishes_its_secagg_party_and_keeps_its_identity_private(self):
    data_dir = _shard_dir()
    _, address = self._start(data_dir, '--secagg_threshold=4')
    _, body = health.get_json(address, '/control/manifest')
    self.assertEqual(body['secagg']['party'], 'edge-7')
    self.assertTrue(body['secagg']['ready'])
    self.assertEqual(body['secagg']['policy']['min_parties'], 4)
    status, advert = tls.http_post_json(
        address, '/control/secagg/round',
        {'stage': 'advertise', 'run': '3' * 32, 'round': 1, 'attempt': 1})
    self.assertEqual(status, 200, advert)
    self.assertEqual(advert['party'], 'edge-7')
    # The identity key stays on the pod's disk, private to it; what left is
    # its public half, in a self-signed certificate (no CA: --insecure).
    key_file = os.path.join(data_dir, 'secagg-identity.key')
    self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
    with open(key_file, 'rb') as f:
      raw = f.read()
    self.assertNotIn(messages.b64encode(raw), str(advert))
    self.assertTrue(os.path.exists(os.path.join(data_dir,
                                                'secagg-state.json')))

  def test_mutual_tls_mode_serves_only_verified_callers(self):
    cert_dir = os.path.join(tempfile.mkdtemp(), 'certs')
    certs.write_bundle(cert_dir, ['edge-7', 'edge-server-0'])
    stranger_dir = os.path.join(tempfile.mkdtemp(), 'certs')
    certs.write_bundle(stranger_dir, ['edge-server-0'])
    process, address = self._start(_shard_dir(), f'--tls_dir={cert_dir}')
    # The plain port has probes only: no manifest, no control calls.
    self.assertEqual(health.get_json(address, '/healthz')[0], 200)
    self.assertEqual(health.get_json(address, '/manifest')[0], 404)
    self.assertEqual(tls.http_post_json(address, '/control/secagg/round',
                                      {})[0], 404)
    target = f'127.0.0.1:{self.port}'
    caller = tls.TlsFiles.from_dir(cert_dir, 'edge-server-0')
    status, body = tls.http_get_json(target, '/control/manifest', caller,
                                     server_name='edge-7')
    self.assertEqual(status, 200, body)
    # Its certificate binds no SecAgg identity (no --secagg_key CSR): the
    # pod serves, SecAgg says why it is off.
    self.assertFalse(body['secagg']['ready'])
    self.assertIn('does not certify', body['secagg']['problem'])
    stranger = tls.TlsFiles.from_dir(stranger_dir, 'edge-server-0')
    # Another CA's certificate: nginx refuses it (and we refuse its server).
    stranger_trusting_us = tls.TlsFiles(ca=caller.ca, cert=stranger.cert,
                                        key=stranger.key)
    status, _ = tls.http_get_json(target, '/control/manifest',
                                  stranger_trusting_us, server_name='edge-7')
    self.assertEqual(status, 403)
    # gRPC to the executor: with our certificate only.
    good = executor_client.ExecutorClient(
        target, tls.grpc_channel(target, caller, server_name='edge-7'))
    self.assertIsNotNone(good._executor(0, executor_client._Deadline(30)))  # pylint: disable=protected-access
    bad = executor_client.ExecutorClient(
        target, tls.grpc_channel(target, stranger_trusting_us,
                                 server_name='edge-7'))
    with self.assertRaises(Exception) as raised:
      bad._executor(0, executor_client._Deadline(30))  # pylint: disable=protected-access
    self.assertIn('UNAUTHENTICATED', str(raised.exception))
    plain = executor_client.ExecutorClient(target)
    with self.assertRaises(Exception):
      plain._executor(0, executor_client._Deadline(10))  # pylint: disable=protected-access
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    self.assertEqual(process.returncode, 0, output)

  def test_without_tls_dir_or_insecure_it_refuses_to_start(self):
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    result = subprocess.run(
        [sys.executable, '-m', 'workers.edge_pod', f'--data_dir={_shard_dir()}',
         f'--port={portpicker.pick_unused_port()}',
         f'--health_port={portpicker.pick_unused_port()}'],
        cwd=_REPO, env=env, capture_output=True, text=True, timeout=120)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertIn('give --tls_dir, or --insecure', result.stderr)

  def test_killed_pod_leaves_no_orphan_executor(self):
    process, _ = self._start(_shard_dir())
    executor = testutil.child_pids(process.pid)
    self.assertLen(executor, 1)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while testutil.pid_alive(executor[0]) and time.monotonic() < deadline:
      time.sleep(0.1)
    self.assertFalse(testutil.pid_alive(executor[0]), 'executor outlived its pod')

  def test_dead_executor_is_restarted(self):
    process, address = self._start(_shard_dir())
    first = testutil.child_pids(process.pid)[0]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      status, body = health.get_json(address, '/readyz')
      children = testutil.child_pids(process.pid)
      if status == 200 and children and children[0] != first:
        break
      time.sleep(0.2)
    else:
      self.fail('executor was not restarted')
    self.assertEqual(health.get_json(address, '/healthz')[1]['restarts'], 1)

  def test_metrics_port_serves_up_clients_calls_and_restarts(self):
    metrics_port = portpicker.pick_unused_port()
    process, address = self._start(_shard_dir(),
                                   f'--metrics_port={metrics_port}')

    def scrape() -> dict:
      with urllib.request.urlopen(
          f'http://127.0.0.1:{metrics_port}/metrics', timeout=10) as r:
        text = r.read().decode('utf-8')
      return {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in prom_parser.text_string_to_metric_families(text)
              for s in f.samples}

    self.assertEqual(health.get_json(address, '/control/manifest')[0], 200)
    status, _ = tls.http_post_json(address, '/control/secagg/mask',
                                   {'tag': 't', 'clients': ['z9']})
    self.assertEqual(status, 409)
    got = scrape()
    self.assertEqual(got[('tff_edge_up', (('node', 'edge-7'),
                                          ('role', 'pod')))], 1)
    self.assertEqual(got[('tff_edge_clients', ())], 3)
    self.assertEqual(got[('tff_edge_calls_total', (('kind', 'manifest'),
                                                   ('peer', '')))], 1)
    self.assertEqual(got[('tff_edge_call_errors_total',
                          (('error', 'http_409'), ('kind', 'secagg_mask'),
                           ('peer', '')))], 1)
    os.kill(testutil.child_pids(process.pid)[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while scrape()[('tff_edge_executor_restarts_total', ())] < 1:
      self.assertLess(time.monotonic(), deadline, 'no restart counted')
      time.sleep(0.2)

  def test_corrupt_shard_is_refused_at_start_naming_the_file(self):
    data_dir = _shard_dir()
    with open(os.path.join(data_dir, 'clients', 'c1.tfrecord'), 'r+b') as f:
      f.write(b'\xff\xff')
    result = _run_to_exit(data_dir)
    self.assertEqual(result.returncode, 2)
    self.assertIn('c1.tfrecord', result.stderr)
    self.assertIn('error: edge pod', result.stderr)


  def test_large_pods_verify_each_shard_when_it_is_first_sampled(self):
    data_dir = _shard_dir()
    with open(os.path.join(data_dir, 'clients', 'c1.tfrecord'), 'r+b') as f:
      f.write(b'\xff\xff')
    # More clients than --verify_at_start_max: it starts without hashing.
    _, address = self._start(data_dir, '--verify_at_start_max=2')
    verify = lambda clients: tls.http_post_json(address, '/control/verify',
                                                {'clients': clients})
    self.assertEqual(verify(['c0', 'c2']), (200, {'verified': 2}))
    self.assertEqual(verify(['c0']), (200, {'verified': 0}))
    status, body = verify(['c0', 'c1'])
    self.assertEqual(status, 409)
    self.assertIn('c1.tfrecord is corrupt', body['error'])
    status, body = verify(['c9'])
    self.assertEqual(status, 409)
    self.assertIn(executor_client.NOT_HELD_MARKER, body['error'])

  def _with_held_out(self, client_ids):
    data_dir = _shard_dir()
    shards.write_shards(
        os.path.join(data_dir, shards.HELD_OUT_DIR), 'toy',
        {'x': {'kind': 'int64', 'shape': [2]},
         'y': {'kind': 'int64', 'shape': []}},
        ((c, {'x': np.zeros((1, 2), np.int64), 'y': np.zeros(1, np.int64)})
         for c in client_ids), eval_examples=None, num_classes=None,
        partition={}, source={}, label_key=None)
    return data_dir

  def test_reports_which_clients_it_holds_held_out_data_of(self):
    _, address = self._start(self._with_held_out(['c0', 'c2']))
    status, body = health.get_json(address, '/manifest')
    self.assertEqual(status, 200)
    self.assertEqual(body['held_out_clients'], ['c0', 'c2'])
    _, address = self._start(_shard_dir())
    self.assertEqual(health.get_json(address, '/manifest')[1]
                     ['held_out_clients'], [])

  def test_held_out_data_of_a_client_it_does_not_hold_is_refused(self):
    data_dir = self._with_held_out(['c1', 'c9'])
    result = _run_to_exit(data_dir)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertIn('clients this pod does not hold (c9)', result.stderr)
    self.assertIn('held_out', result.stderr)


# The lying-server harness at the pod's HTTP control routes.

_BITS, _LENGTH = 24, 50
_OTHERS = ('edge-1', 'edge-2', 'edge-3', 'edge-4', 'edge-5')


class LyingServerAtTheControlRoutesTest(absltest.TestCase):
  """A real pod (mutual TLS, SecAgg identity in its certificate) and five
  in-process parties certified by the same CA; the test is the aggregation
  tier: it relays, and lies. Six parties: complete graph, t = 3, q = 5."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = _shard_dir()
    pod_identity = secagg_keys.load_or_create_identity(
        os.path.join(cls.data_dir, 'secagg-identity.key'))
    identities = {p: secagg_keys.generate_identity() for p in _OTHERS}
    cls.cert_dir = os.path.join(tempfile.mkdtemp(), 'certs')
    certs.write_bundle(cls.cert_dir, ['edge-7', 'edge-server-0', *_OTHERS],
                       secagg_identities={'edge-7': pod_identity,
                                          **identities})
    with open(os.path.join(cls.cert_dir, 'ca.crt'), 'rb') as f:
      cls.roster = secagg_keys.CertificateRoster.from_pem(f.read())
    cls.identities = identities
    cls.policy = policy_lib.Policy(min_parties=3)
    port, health_port = (portpicker.pick_unused_port(),
                         portpicker.pick_unused_port())
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    cls.process = subprocess.Popen(
        [sys.executable, '-m', 'workers.edge_pod', f'--port={port}',
         f'--health_port={health_port}', f'--data_dir={cls.data_dir}',
         '--name=edge-7', f'--tls_dir={cls.cert_dir}'], cwd=_REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cls.target = f'127.0.0.1:{port}'
    cls.caller = tls.TlsFiles.from_dir(cls.cert_dir, 'edge-server-0')
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      try:
        if health.get_json(f'127.0.0.1:{health_port}', '/readyz',
                           1.0)[0] == 200:
          break
      except OSError:
        pass
      time.sleep(0.2)

  @classmethod
  def tearDownClass(cls):
    cls.process.kill()
    cls.process.wait()
    super().tearDownClass()

  def _post(self, path, body):
    return tls.http_post_json(self.target, path, body, self.caller,
                              timeout=30, server_name='edge-7')

  def _parties(self):
    """Fresh in-process parties (their certificates from the bundle)."""
    out = {}
    for name in _OTHERS:
      with open(os.path.join(self.cert_dir, f'{name}.crt'), 'rb') as f:
        der = secagg_keys.certificate_der(
            certs.x509.load_pem_x509_certificate(f.read()))
      out[name] = party_lib.Party(name, self.identities[name], self.roster,
                                  self.policy, certificate=der)
    return out

  def _send(self, parties, name, method, request):
    """The pod over HTTP (200 -> reply; else (status, error)), others direct."""
    if name == 'edge-7':
      path = ('/control/secagg/mask' if method == 'mask'
              else '/control/secagg/round')
      status, body = self._post(path, request)
      return body if status == 200 else (status, body.get('error', body))
    return getattr(parties[name], method)(request)

  def _round(self, round_num=1):
    """Honest stages 1-3: (server, parties, forwarded shares)."""
    rid = messages.RoundId(messages.new_run_nonce(), round_num, 1)
    srv = server_lib.RoundServer(rid, _BITS, _LENGTH, self.policy,
                                 self.roster)
    parties = self._parties()
    names = ['edge-7', *_OTHERS]
    request = srv.advertise_request()
    for name in names:
      srv.add_advert(self._send(parties, name, 'advertise', request))
    request = srv.participants_request()
    self.requests = {'participants': request}
    for name in names:
      srv.add_reveal(self._send(parties, name, 'reveal', request))
    request = srv.reveals_request()
    for name in names:
      srv.add_shares(self._send(parties, name, 'share_keys', request))
    return srv, parties, srv.forwarded_shares_requests()

  def _inputs(self, srv, parties, forwarded):
    """Stage 4; the pod's masked input as its round computation makes it."""
    inputs = {n: np.random.default_rng(i).integers(0, 2**16, _LENGTH,
                                                   dtype=np.uint64)
              for i, n in enumerate(['edge-7', *_OTHERS])}
    header = self._send(parties, 'edge-7', 'mask', forwarded['edge-7'])
    self.assertIsInstance(header, dict, header)
    mask = maskfile.read(self.data_dir, srv.rid.tag)
    srv.add_masked_input(header, prg.pack(
        (inputs['edge-7'] + mask) & np.uint64(2**_BITS - 1), _BITS))
    for name in _OTHERS:
      srv.add_masked_input(*parties[name].masked_input(forwarded[name],
                                                       inputs[name]))
    return inputs

  def test_an_honest_round_through_the_routes_is_exact(self):
    srv, parties, forwarded = self._round()
    inputs = self._inputs(srv, parties, forwarded)
    request = srv.survivors_request()
    for name in ['edge-7', *_OTHERS]:
      srv.add_consistency(self._send(parties, name, 'consistency', request))
    self.assertFalse(os.path.exists(maskfile.path(self.data_dir,
                                                  srv.rid.tag)))
    request = srv.signatures_request()
    for name in ['edge-7', *_OTHERS]:
      srv.add_unmask(self._send(parties, name, 'unmask', request))
    np.testing.assert_array_equal(
        srv.result(), sum(inputs.values()) & np.uint64(2**_BITS - 1))

  def test_replays_are_refused(self):
    srv, parties, forwarded = self._round(round_num=2)
    self._inputs(srv, parties, forwarded)
    rid = srv.rid
    cases = {
        'the same advertisement': (
            'round', {'stage': 'advertise', **rid.to_json()},
            'already sent its masked input (attempt 1)'),
        'a new attempt after the input left': (
            'round', {'stage': 'advertise', 'run': rid.run,
                      'round': rid.round, 'attempt': 2},
            'already sent its masked input'),
        'the participant list again': (
            'round', self.requests['participants'], 'no live session'),
        'the masked input again': (
            'mask', forwarded['edge-7'], 'no live session'),
    }
    for what, (route, request, why) in cases.items():
      with self.subTest(what):
        status, body = self._post(f'/control/secagg/{route}', request)
        self.assertEqual(status, 409, body)
        self.assertIn(why, body['error'])

  def test_a_second_participant_set_is_refused(self):
    rid = messages.RoundId(messages.new_run_nonce(), 3, 1)
    srv = server_lib.RoundServer(rid, _BITS, _LENGTH, self.policy,
                                 self.roster)
    parties = self._parties()
    request = srv.advertise_request()
    adverts = {n: self._send(parties, n, 'advertise', request)
               for n in ['edge-7', *_OTHERS]}
    for advert in adverts.values():
      srv.add_advert(advert)
    first = srv.participants_request()
    self.assertEqual(self._post('/control/secagg/round', first)[0], 200)
    second = dict(first, adverts=[a for a in first['adverts']
                                  if a['party'] != 'edge-5'])
    status, body = self._post('/control/secagg/round', second)
    self.assertEqual(status, 409, body)
    self.assertIn("at stage 'revealed'", body['error'])

  def test_both_share_kinds_for_one_party_are_refused(self):
    # edge-5's input arrived; the tier tells the pod it dropped (to get its
    # mask-key share) and tells the others it survived (for its b-share).
    srv, parties, forwarded = self._round(round_num=4)
    self._inputs(srv, parties, forwarded)
    honest = srv.survivors_request()
    lying = dict(honest, survivors=[p for p in honest['survivors']
                                    if p != 'edge-5'])
    signature = self._send(parties, 'edge-7', 'consistency', lying)
    self.assertIsInstance(signature, dict, signature)  # It cannot tell yet.
    signatures = {'edge-7': signature['signature']}
    for name in _OTHERS:  # The honest list, as they saw it.
      signatures[name] = parties[name].consistency(honest)['signature']
    status, body = self._post('/control/secagg/round', {
        'stage': 'signatures', **srv.rid.to_json(),
        'signatures': signatures})
    self.assertEqual(status, 409, body)
    self.assertIn('fewer than the quorum 5: nothing revealed', body['error'])
    # And no second chance in this round.
    status, body = self._post('/control/secagg/round', {
        'stage': 'signatures', **srv.rid.to_json(),
        'signatures': signatures})
    self.assertEqual(status, 409)

  def test_substituted_keys_are_detected(self):
    attacker = secagg_keys.RoundKeys.generate()
    for victim, why in (('edge-1', 'not signed by its identity key'),
                        ('edge-7', 'different advert for edge-7')):
      with self.subTest(victim=victim):
        rid = messages.RoundId(messages.new_run_nonce(), 5, 1)
        srv = server_lib.RoundServer(rid, _BITS, _LENGTH, self.policy,
                                     self.roster)
        parties = self._parties()
        request = srv.advertise_request()
        for name in ['edge-7', *_OTHERS]:
          srv.add_advert(self._send(parties, name, 'advertise', request))
        honest = srv.participants_request()
        request = copy.deepcopy(honest)
        for advert in request['adverts']:
          if advert['party'] == victim:
            advert['s_pk'] = messages.b64encode(attacker.s_public)
        status, body = self._post('/control/secagg/round', request)
        if status == 200:  # A neighbour's key: checked with the graph.
          for name in _OTHERS:  # They saw the honest list.
            srv.add_reveal(parties[name].reveal(honest))
          srv.add_reveal(body)
          status, body = self._post('/control/secagg/round',
                                    srv.reveals_request())
        self.assertEqual(status, 409, body)
        self.assertIn(why, body['error'])

  def test_a_participant_set_below_the_threshold_is_refused(self):
    rid = messages.RoundId(messages.new_run_nonce(), 6, 1)
    srv = server_lib.RoundServer(rid, _BITS, _LENGTH,
                                 policy_lib.Policy(min_parties=2), self.roster)
    parties = self._parties()
    request = srv.advertise_request()
    for name in ('edge-7', 'edge-1'):
      srv.add_advert(self._send(parties, name, 'advertise', request))
    status, body = self._post('/control/secagg/round',
                              srv.participants_request())
    self.assertEqual(status, 409, body)
    self.assertIn('2 parties, fewer than the minimum 3', body['error'])

  def test_hostile_tags_and_lengths_are_refused_and_touch_no_file(self):
    before = sorted(os.listdir(self.data_dir))
    run = messages.new_run_nonce()

    def live(round_num):
      """A live session to send hostile participant lists into."""
      request = {'stage': 'advertise', 'run': run, 'round': round_num,
                 'attempt': 1}
      self.assertEqual(self._post('/control/secagg/round', request)[0], 200)
      return {'stage': 'participants', 'run': run, 'round': round_num,
              'attempt': 1, 'bits': 24, 'length': 10, 'adverts': []}

    bad = {
        'dots in the run': lambda: ('mask', {
            'stage': 'forwarded_shares', 'run': '../../clients', 'round': 7,
            'attempt': 1, 'shares': {}}, 'bad run nonce'),
        'a path in the round': lambda: ('round', {
            'stage': 'advertise', 'run': run, 'round': '7/../../x',
            'attempt': 2}, 'bad round'),
        'a huge vector': lambda: ('round', dict(live(71), length=2**40),
                                  'length: expected an integer'),
        'bits beyond 62': lambda: ('round', dict(live(72), bits=63),
                                   'bits: expected an integer'),
        'too many adverts': lambda: ('round', dict(
            live(73), adverts=[0] * 100_001), 'at most 100000'),
        'a huge attempt': lambda: ('round', {
            'stage': 'advertise', 'run': run, 'round': 74,
            'attempt': 10**6}, 'bad attempt'),
        'an unknown stage': lambda: ('round', {'stage': '../advertise'},
                                     'unknown SecAgg stage'),
        'not an object': lambda: ('round', ['advertise'],
                                  'unknown SecAgg stage'),
    }
    for what, case in bad.items():
      with self.subTest(what):
        route, request, why = case()
        status, body = self._post(f'/control/secagg/{route}', request)
        self.assertEqual(status, 409, body)
        self.assertIn(why, body['error'])
    # Short or mangled share ciphertexts in a live round.
    srv, parties, forwarded = self._round(round_num=8)
    mine = forwarded['edge-7']
    sender = sorted(mine['shares'])[0]
    for what, value in (('truncated', mine['shares'][sender][:-8]),
                        ('not base64', '@' * 40)):
      with self.subTest(what):
        status, body = self._post('/control/secagg/mask', dict(
            mine, shares={**mine['shares'], sender: value}))
        self.assertEqual(status, 409, body)
    self.assertEqual(sorted(os.listdir(self.data_dir)), sorted(
        set(before) | {'secagg'}))
    self.assertEqual(os.listdir(os.path.join(self.data_dir, 'secagg')), [])


if __name__ == '__main__':
  absltest.main()
