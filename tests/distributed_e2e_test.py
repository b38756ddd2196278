"""The layered runtime end to end: 10 edge pods under 2 edge servers.

One local cluster (network namespaces when root, else localhost) serves all
tests: the distributed model must equal the local one, a misrouted client
must fail loudly, and killed or stalled pods must be recorded and survived.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
import subprocess
import sys

from absl import flags
from absl.testing import absltest
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_federated.proto.v0 import executor_pb2

from tests import testutil
from tff_pipeline.core import config as config_lib
from workers import coordinator as distributed
from scipy import stats

from tff_pipeline.learning import algorithms
from tff_pipeline.learning import client_data
from workers import local_runtime as runtime
from tff_pipeline.secagg import form as secure_form
from workers import secure_round as secure_rounds
from tff_pipeline.tasks import registry as tasks
from workers import certs
from workers import executor_client
from workers import health
from workers import local_cluster
from workers import netns
from workers import tls
from workers import wire
from tff_pipeline import plan
from tff_pipeline import api

_DATA = dict(num_clients=20, partition='iid', seed=3)
_PODS, _EDGE_SERVERS = 10, 2


def _config(output_dir: str, **overrides) -> config_lib.TrainConfig:
  values = dict(_DATA, model='2nn', clients_per_round=6, rounds=2,
                eval_every=0, progress=False, output_dir=output_dir)
  values.update(overrides)
  return plan.resolve_config({}, values)


def _weights(result: api.RunResult) -> list[np.ndarray]:
  return [np.asarray(w) for w in result.state.global_model_weights.trainable]


def _rows(output_dir: str) -> list[dict]:
  path = os.path.join(output_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


class DistributedEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    runtime.use_local_runtime(6)
    cls.root = tempfile.mkdtemp(prefix='distributed-e2e-')
    cls.cluster = local_cluster.LocalCluster(
        plan.load_task(_config(os.path.join(cls.root, 'unused'))).manifest.shard_dir,
        _PODS, _EDGE_SERVERS,
        cluster_dir=os.path.join(cls.root, 'cluster')).start()

  @classmethod
  def tearDownClass(cls):
    cls.cluster.stop()
    super().tearDownClass()

  def _remote(self, name: str, **overrides) -> config_lib.TrainConfig:
    return _config(os.path.join(self.root, name), executor='remote',
                   topology=self.cluster.topology_path, **overrides)

  def test_topology_has_ten_pods_in_two_tiers_each_holding_its_own_clients(self):
    topology = self.cluster.topology
    self.assertLen(topology.edge_servers, _EDGE_SERVERS)
    self.assertLen(topology.pods, _PODS)
    cluster = distributed.Cluster(topology, tls.TlsFiles.from_dir(
        topology.tls_dir, 'coordinator') if topology.tls_dir else None)
    view = cluster.describe()
    cluster.close()
    self.assertLen(view.pod_of, _DATA['num_clients'])
    self.assertLen(set(view.pod_of.values()), _PODS)
    for pod in topology.pods:  # Each pod's disk holds exactly its clients.
      files = os.listdir(os.path.join(self.cluster.cluster_dir, 'pods',
                                      pod.name, 'clients'))
      held = sorted(f.removesuffix('.tfrecord') for f in files)
      self.assertEqual(held, sorted(c for c, p in view.pod_of.items()
                                    if p == pod.name))

  def test_distributed_model_equals_local_model(self):
    # Whole runs, several rounds. The CNN's dropout masks depend only on
    # each client's batch and step (tasks/stateless_dropout.py), and the
    # weighted mean sums client updates exactly (aggregation/exact_sum.py),
    # so the order in which the pods' partial sums meet (by pod, then edge
    # server) does not change the model. With float32 sums the CNN parted
    # ways from round 2 on (3.3e-2 after 4 rounds, measured).
    for model, rounds in (('2nn', 3), ('cnn', 4)):
      with self.subTest(model=model):
        local = api.run(_config(
            os.path.join(self.root, f'local-{model}'), model=model,
            rounds=rounds))
        remote = api.run(self._remote(f'remote-{model}', model=model,
                                      rounds=rounds))
        for row in remote.rows:
          self.assertEqual(row['failures'], [])
          self.assertGreater(row['network']['coordinator_bytes_sent'], 0)
        differences = [float(np.max(np.abs(a - b))) for a, b in zip(
            _weights(local), _weights(remote), strict=True)]
        print(f'{model}: max |local - remote| after {rounds} rounds: '
              f'{max(differences):.2e}; eval accuracy local '
              f'{local.summary["final_eval"]["accuracy"]:.4f}, remote '
              f'{remote.summary["final_eval"]["accuracy"]:.4f}')
        self.assertLess(max(differences), 1e-6)
        self.assertEqual(local.summary['final_eval'],
                         remote.summary['final_eval'])
        self.assertNotEqual(float(np.abs(_weights(local)[0]).sum()), 0.0)

  def test_pod_asked_for_a_client_it_does_not_hold_fails_loudly(self):
    config = self._remote('misrouted')
    setup = plan.RemoteSetup(config)
    client = sorted(setup.view.pod_of)[0]
    holder = setup.view.pod_of[client]
    wrong = next(p.name for p in self.cluster.topology.pods
                 if p.name != holder and
                 setup.view.server_of[p.name] == setup.view.server_of[holder])
    setup.view.pod_of[client] = wrong  # A stale or corrupted routing table.
    process = plan.training_process(config, setup.task)
    run_round = setup.round_runner(process)
    state = algorithms.initial_state(process, setup.task)
    with self.assertRaisesRegex(distributed.ClusterError,
                                f'pod {wrong} .*{client}.*not held'):
      run_round(state, [client_data.client_key(client, 1)], [client], 1)
    setup.close()

  def _secure_setup(self, name: str, **overrides):
    config = self._remote(name, aggregator='secagg', clients_per_round=20,
                          **overrides)
    setup = plan.RemoteSetup(config)
    process = plan.training_process(config, setup.task)
    tf.keras.utils.set_random_seed(config.seed)
    state = algorithms.initial_state(process, setup.task)
    sampled = sorted(setup.view.pod_of)
    keys = [client_data.client_key(c, 7) for c in sampled]
    return config, setup, process, state, sampled, keys

  def test_secagg_remote_equals_local_secagg(self):
    # One round: the stochastic rounding of the two runs differs by ~1e-9,
    # and a second round of the 2NN turns that into ReLU flips (~3e-4 on 2%
    # of the weights, measured) - noise, not an aggregation error.
    local = api.run(_config(os.path.join(self.root, 'secagg-local'),
                                      aggregator='secagg', rounds=1))
    remote = api.run(self._remote('secagg-remote',
                                            aggregator='secagg', rounds=1))
    for row in remote.rows:
      self.assertEqual(row['failures'], [])
      self.assertEqual(sorted(row['participants']), sorted(row['clients']))
    for a, b in zip(_weights(local), _weights(remote), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

  def test_secagg_what_the_coordinator_and_edge_servers_see_is_uniform(self):
    config, setup, process, state, sampled, keys = self._secure_setup(
        'secagg-uniform')
    form = secure_form.SecureForm(process.next, len(sampled), '.')
    runner = distributed.DistributedRound(
        setup.cluster, setup.view, process.next,
        executor_client.ExecutorClient(runtime.local_worker().target),
        stages=(form.pod_round, form.merge_partials))
    tag = secure_rounds.round_tag(1, 1, sampled)
    secagg = {'tag': tag, 'layout': form.layout.to_json(),
              'public_keys': {c: setup.view.public_keys[c] for c in sampled}}
    report = distributed.RoundReport(failures=[])
    broadcast = form.prepare(state)
    partials = runner.fan_out((broadcast, keys, tag), sampled, set(), report,
                              secagg=secagg)
    self.assertEqual(report.failures, [])
    self.assertLen(partials, _EDGE_SERVERS)  # What the coordinator receives.
    modulus = form.layout.moduli[0]
    from tensorflow_federated.python.core.impl.executors import value_serialization  # pylint: disable=g-import-not-at-top
    kernels = []
    for partial in partials:
      value, _ = value_serialization.deserialize_value(partial,
                                                       form.partial_type)
      kernel = np.ravel(value[1][0]).astype(np.float64) / modulus
      kernels.append(kernel)
      self.assertGreater(stats.kstest(kernel, 'uniform').pvalue, 1e-3)
      counts = np.bincount((kernel * 32).astype(int), minlength=32)
      self.assertGreater(stats.chisquare(counts).pvalue, 1e-3)
    # Together they unmask: 20 values in [0, 2^32) each, far from uniform.
    total = np.mod(np.round(sum(kernels) * modulus), modulus)
    self.assertLess(total.max(), 20 * 2**32)
    # One pod's reply to its edge server, as the edge server gets it.
    pod = self.cluster.topology.pods[0]
    pod_clients = [c for c in sampled if setup.view.pod_of[c] == pod.name]
    # As its edge server calls it (through the pod's TLS terminator).
    server = self.cluster.topology.edge_servers[0]
    server_tls = tls.TlsFiles.from_dir(self.cluster.topology.tls_dir,
                                       server.name)
    status, body = tls.http_post_json(pod.address, '/control/secagg/masks', {
        'tag': tag, 'clients': pod_clients, 'layout': form.layout.to_json(),
        'public_keys': secagg['public_keys']}, server_tls, timeout=60,
                                      server_name=pod.name)
    self.assertEqual(status, 200, body)
    pod_round = runner._up_to_merge  # pylint: disable=protected-access
    arg = executor_client.struct_value([
        ('', value_serialization.serialize_value(
            broadcast, form.pod_round.type_signature.parameter[0])[0]),
        ('', value_serialization.serialize_value(
            [keys[sampled.index(c)] for c in pod_clients],
            form.pod_round.type_signature.parameter[1])[0]),
        ('', value_serialization.serialize_value(
            tag, form.pod_round.type_signature.parameter[2])[0])])
    reply = executor_client.ExecutorClient(pod.address, tls.grpc_channel(
        pod.address, server_tls, server_name=pod.name)).run(
            'pod-round', pod_round, arg, len(pod_clients))
    value, _ = value_serialization.deserialize_value(
        executor_client.unplaced(reply), form.partial_type)
    kernel = np.ravel(value[1][0]).astype(np.float64) / modulus
    self.assertGreater(stats.kstest(kernel, 'uniform').pvalue, 1e-3)
    # Unmasked, its sum of len(pod_clients) values would be below this.
    self.assertGreater(kernel.max() * modulus, len(pod_clients) * 2**32)
    setup.close()

  def test_secagg_participant_dropped_mid_round_is_redone_without_it(self):
    config, setup, process, state, sampled, keys = self._secure_setup(
        'secagg-dropout', round_timeout=8.0)
    run_round = setup.round_runner(process)
    pod = self.cluster.pod('edge-4')
    executor_pid = testutil.child_pids(pod.process.pid)[0]
    os.kill(executor_pid, signal.SIGSTOP)  # Drops out after its masks.
    try:
      output, report = run_round(state, keys, sampled, 1)
    finally:
      os.kill(executor_pid, signal.SIGCONT)
    setup.close()
    dropped = [f for f in report.failures if f.get('pod') == 'edge-4']
    self.assertLen(dropped, 1, report.failures)
    self.assertEqual(dropped[0]['kind'], 'timeout')
    self.assertEqual(report.attempts, 2)
    lost = set(dropped[0]['clients'])
    self.assertNotEmpty(lost)
    self.assertEqual(sorted(report.participants),
                     sorted(set(sampled) - lost))
    # The model is the secure mean over the survivors, as a local secure
    # round over exactly them computes it (not garbage from unmatched masks).
    local_task = plan.load_task(_config(os.path.join(self.root, 'unused')))
    local_process = plan.training_process(config, local_task)
    mask_root = tempfile.mkdtemp()
    local_round = secure_rounds.LocalSecureRound(
        secure_form.SecureForm(local_process.next, len(sampled), mask_root),
        mask_root)
    survivors = report.participants
    expected, _ = local_round(
        state, [keys[sampled.index(c)] for c in survivors], survivors, 1)
    for a, b in zip(process.get_model_weights(output.state).trainable,
                    local_process.get_model_weights(expected.state).trainable,
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

  def test_every_channel_is_mutual_tls_and_no_plaintext_port_is_reachable(self):
    topology = self.cluster.topology
    self.assertTrue(self.cluster.use_tls, 'nginx missing? run ./setup.sh')
    self.assertIsNotNone(topology.tls_dir)
    pod, server = topology.pods[0], topology.edge_servers[0]
    stranger_dir = os.path.join(tempfile.mkdtemp(), 'certs')
    certs.write_bundle(stranger_dir, ['coordinator'])
    ours = tls.TlsFiles.from_dir(topology.tls_dir, 'coordinator')
    # Someone else's CA, and a caller that trusts ours but has no cert of it.
    stranger = tls.TlsFiles(ours.ca, os.path.join(stranger_dir,
                                                  'coordinator.crt'),
                            os.path.join(stranger_dir, 'coordinator.key'))
    describe = lambda channel: channel.unary_unary(
        '/tff_edge.EdgeServer/Describe')(wire.pack({}), timeout=30)
    header, _ = wire.unpack(describe(tls.grpc_channel(
        server.address, ours, server_name=server.name)))
    self.assertLen(header['pods'], len(server.pods))
    for channel in (tls.grpc_channel(server.address, stranger,
                                     server_name=server.name),
                    grpc.insecure_channel(server.address)):
      with self.assertRaises(grpc.RpcError):
        describe(channel)
    # Pods: the terminator refuses callers without a cluster certificate.
    pod_tls = tls.TlsFiles.from_dir(topology.tls_dir, server.name)
    status, _ = tls.http_get_json(pod.address, '/control/manifest', pod_tls,
                                  server_name=pod.name)
    self.assertEqual(status, 200)
    status, _ = tls.http_get_json(pod.address, '/control/manifest', stranger,
                                  server_name=pod.name)
    self.assertEqual(status, 403)
    for channel in (tls.grpc_channel(pod.address, stranger,
                                     server_name=pod.name),
                    grpc.insecure_channel(pod.address)):
      client = executor_client.ExecutorClient(pod.address, channel)
      with self.assertRaises(executor_client.ExecutorError):
        client.run('f', executor_pb2.Value(), None, 1, timeout=20)
    self.assertEqual(health.get_json(pod.health, '/manifest')[0], 404)
    if not self.cluster.use_netns:
      return
    # From another node's namespace: the executor's plaintext port is not on
    # the pod's address, and its private namespace cannot be routed to.
    pod_ip = pod.address.rsplit(':', 1)[0]
    other = self.cluster.namespace_of(server.name)
    probe = ('import socket,sys\n'
             's=socket.socket();s.settimeout(3)\n'
             'try:\n s.connect((sys.argv[1],int(sys.argv[2])));print("open")\n'
             'except OSError as e:\n print(type(e).__name__)\n')
    def reach(host, port):
      return subprocess.run(
          ['ip', 'netns', 'exec', other, sys.executable, '-c', probe, host,
           str(port)], capture_output=True, text=True, check=True
      ).stdout.strip()
    executor_port = local_cluster._POD_EXECUTOR_PORT  # pylint: disable=protected-access
    self.assertEqual(reach(pod_ip, pod.address.rsplit(':', 1)[1]), 'open')
    self.assertEqual(reach(pod_ip, executor_port), 'ConnectionRefusedError')
    inner = netns.Network.PRIVATE_INNER
    self.assertNotEqual(reach(inner, executor_port), 'open')
    subprocess.run(['ip', '-n', other, 'route', 'add', f'{inner}/32', 'via',
                    pod_ip], check=True)
    try:  # Even told to go through the pod: it does not forward.
      self.assertNotEqual(reach(inner, executor_port), 'open')
    finally:
      subprocess.run(['ip', '-n', other, 'route', 'del', f'{inner}/32'],
                     check=False)

  def _start_training(self, config: config_lib.TrainConfig):
    args = [f'--{k}={v}' for k, v in config_lib.to_dict(config).items()
            if k in ('executor', 'topology', 'num_clients', 'partition',
                     'seed', 'model', 'clients_per_round', 'rounds',
                     'eval_every', 'output_dir', 'round_timeout')]
    env = dict(os.environ, PYTHONPATH=testutil.REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, '-m', 'tff_pipeline.train', '--progress=false',
         *args], cwd=testutil.REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)

  def _wait_rows(self, output_dir: str, count: int, process, timeout=300):
    deadline = time.monotonic() + timeout
    while len(_rows(output_dir)) < count:
      if process.poll() is not None:
        self.fail(f'training exited early: {process.stdout.read()}')
      self.assertLess(time.monotonic(), deadline, 'training too slow')
      time.sleep(0.2)

  def test_killed_pod_is_recorded_and_the_run_finishes(self):
    config = self._remote('killed-pod', clients_per_round=20, rounds=8)
    process = self._start_training(config)
    self._wait_rows(config.output_dir, 1, process)
    time.sleep(0.5)  # Inside round 2.
    victim = self.cluster.pod('edge-3')
    os.kill(victim.process.pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    self.assertEqual(process.returncode, 0, output)
    rows = _rows(config.output_dir)
    self.assertEqual([r['round'] for r in rows], list(range(1, 9)))
    failures = [f for r in rows for f in r['failures']]
    failed = next((f for f in failures if f.get('pod') == 'edge-3'), None)
    self.assertIsNotNone(failed, rows)
    self.assertIn(failed['kind'], ('unavailable', 'error'))
    self.assertNotEmpty(failed['clients'])
    # The supervisor restarted it and later rounds use it again.
    self.assertEqual(rows[-1]['failures'], [])
    self.assertGreaterEqual(victim.restarts, 1)

  def test_straggler_past_round_timeout_is_dropped(self):
    config = self._remote('straggler', clients_per_round=20, rounds=3,
                          round_timeout=8.0)
    process = self._start_training(config)
    self._wait_rows(config.output_dir, 1, process)
    pod = self.cluster.pod('edge-5')
    executor_pid = testutil.child_pids(pod.process.pid)[0]
    os.kill(executor_pid, signal.SIGSTOP)  # Stalls without dying.
    try:
      self._wait_rows(config.output_dir, 2, process)
    finally:
      os.kill(executor_pid, signal.SIGCONT)
    output, _ = process.communicate(timeout=600)
    self.assertEqual(process.returncode, 0, output)
    rows = _rows(config.output_dir)
    stalled = [f for f in rows[1]['failures'] if f.get('pod') == 'edge-5']
    self.assertLen(stalled, 1, rows[1])
    self.assertEqual(stalled[0]['kind'], 'timeout')

  def test_coordinator_killed_resumes_without_losing_a_round(self):
    config = self._remote('coordinator-kill', rounds=4)
    process = self._start_training(config)
    self._wait_rows(config.output_dir, 2, process)
    process.kill()
    process.wait()
    done = [r['round'] for r in _rows(config.output_dir)]
    resumed = api.run(
        plan.resolve_config({}, {**config_lib.to_dict(config), 'resume': True}))
    rounds = [r['round'] for r in _rows(config.output_dir)]
    self.assertEqual(rounds, [1, 2, 3, 4])
    # The kill may land between a round's metrics row and its checkpoint;
    # then that one round is redone (the row is replaced, not duplicated).
    self.assertIn(resumed.rows[0]['round'], (done[-1], done[-1] + 1))


if __name__ == '__main__':
  tf.config.threading.set_inter_op_parallelism_threads(2)
  absltest.main()
