from concurrent import futures
import os
import tempfile
import threading

from absl.testing import absltest
import grpc
import portpicker

from data_prep import testing
from data_prep.errors import UserError
from workers import topology
from workers import topology_gen
from workers import wire


class GenerateTest(absltest.TestCase):

  def test_ten_pods_two_servers_in_local_cluster_blocks(self):
    generated = topology_gen.generate(10, 2, eval_data='/eval', tls_dir='/tls')
    self.assertEqual([s.name for s in generated.edge_servers],
                     ['edge-server-0', 'edge-server-1'])
    self.assertEqual([p.name for p in generated.edge_servers[0].pods],
                     [f'edge-{i}' for i in range(5)])
    self.assertEqual([p.name for p in generated.edge_servers[1].pods],
                     [f'edge-{i}' for i in range(5, 10)])
    pod = generated.pods[3]
    self.assertEqual((pod.address, pod.health),
                     ('edge-3.edge:8000', 'edge-3.edge:8001'))
    self.assertEqual(generated.edge_servers[1].address,
                     'edge-server-1.edge-server:7000')
    self.assertEqual((generated.eval_data, generated.tls_dir),
                     ('/eval', '/tls'))

  def test_every_pod_under_exactly_one_server_for_many_shapes(self):
    for pods, servers in ((1, 1), (3, 2), (20, 2), (20, 3), (7, 7)):
      with self.subTest(pods=pods, servers=servers):
        generated = topology_gen.generate(pods, servers)
        names = [p.name for p in generated.pods]
        self.assertEqual(names, [f'edge-{i}' for i in range(pods)])
        self.assertTrue(all(s.pods for s in generated.edge_servers))
        sizes = [len(s.pods) for s in generated.edge_servers]
        self.assertLessEqual(max(sizes) - min(sizes), 1)

  def test_patterns_fill_names_and_addresses(self):
    generated = topology_gen.generate(
        2, 1, pod_name='site-{i}', pod_address='site-{i}:9000',
        pod_health='site-{i}:9001', server_name='es',
        server_address='es:7000', server_health='es:7001')
    self.assertEqual([(p.name, p.address) for p in generated.pods],
                     [('site-0', 'site-0:9000'), ('site-1', 'site-1:9000')])

  def test_bad_input_is_named(self):
    cases = {
        'at least 1': lambda: topology_gen.generate(0, 1),
        'every edge server needs a pod': lambda: topology_gen.generate(2, 3),
        'has no {i}': lambda: topology_gen.generate(
            2, 1, pod_address='edge:8000'),
        'not host:port': lambda: topology_gen.generate(
            2, 1, pod_address='edge-{i}'),
        'DNS label': lambda: topology_gen.generate(2, 1, pod_name='Edge_{i}'),
    }
    for message, call in cases.items():
      with self.subTest(message):
        with self.assertRaisesRegex(UserError, message):
          call()

  def test_cli_writes_a_topology_that_loads(self):
    out = os.path.join(tempfile.mkdtemp(), 'sub', 'topology.yaml')
    result = testing.run_module(
        'workers.topology_gen', '--pods=20', '--edge_servers=2',
        '--eval_data=/eval', '--tls_dir=/tls', f'--out={out}', timeout=60)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('20 pods under 2 edge servers', result.stdout)
    loaded = topology.load(out)
    self.assertEqual(loaded, topology_gen.generate(20, 2, eval_data='/eval',
                                                   tls_dir='/tls'))

  def test_cli_error_exits_2_with_the_reason(self):
    result = testing.run_module('workers.topology_gen', '--pods=1',
                                '--edge_servers=2', '--out=/tmp/x.yaml',
                                timeout=60)
    self.assertEqual(result.returncode, 2)
    self.assertIn('every edge server needs a pod', result.stderr)


class _FakeEdgeServer:
  """Answers Describe like workers.edge_server: each pod, or its error."""

  def __init__(self, pods: list[str]):
    self.errors: dict[str, str] = {pod: 'connection refused' for pod in pods}
    self.clients: dict[str, list[str]] = {pod: [f'{pod}-c'] for pod in pods}
    self.pods = pods
    self.calls = 0
    self.port = portpicker.pick_unused_port()
    self.server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        'tff_edge.EdgeServer', {'Describe': grpc.unary_unary_rpc_method_handler(
            self._describe)})
    self.server.add_generic_rpc_handlers([handler])
    self.server.add_insecure_port(f'127.0.0.1:{self.port}')

  def _describe(self, request, context):
    del context
    wire.unpack(request)
    self.calls += 1
    pods = []
    for pod in self.pods:
      entry = {'name': pod}
      if pod in self.errors:
        entry['error'] = self.errors[pod]
      else:
        entry['manifest'] = {'clients': [{'client_id': c}
                                         for c in self.clients[pod]]}
      pods.append(entry)
    return wire.pack({'pods': pods})


class WaitReadyTest(absltest.TestCase):

  def _started_fake(self, pods: list[str]) -> _FakeEdgeServer:
    fake = _FakeEdgeServer(pods)
    fake.server.start()
    self.addCleanup(fake.server.stop, None)
    return fake

  def _topology(self, port: int) -> topology.Topology:
    return topology_gen.generate(
        2, 1, pod_address='127.0.0.1:{i}000', pod_health='127.0.0.1:{i}001',
        server_address=f'127.0.0.1:{port}', server_health='127.0.0.1:1')

  def test_times_out_naming_the_server_that_does_not_answer(self):
    port = portpicker.pick_unused_port()
    with self.assertRaisesRegex(UserError, 'edge-server-0 at 127.0.0.1'):
      topology_gen.wait_ready(self._topology(port), None, timeout=1, poll=0.2)

  def test_names_the_pod_that_is_not_up(self):
    fake = self._started_fake(['edge-0', 'edge-1'])
    fake.errors = {'edge-1': 'connection refused'}
    with self.assertRaisesRegex(UserError, 'pod edge-1: connection refused'):
      topology_gen.wait_ready(self._topology(fake.port), None, timeout=0.5,
                              poll=0.1)

  def test_waits_while_a_client_is_on_two_pods(self):
    fake = self._started_fake(['edge-0', 'edge-1'])
    fake.errors = {}
    fake.clients = {'edge-0': ['c0', 'c2'], 'edge-1': ['c1', 'c2']}
    with self.assertRaisesRegex(UserError,
                                'client c2 is on both edge-0 and edge-1'):
      topology_gen.wait_ready(self._topology(fake.port), None, timeout=0.5,
                              poll=0.1)

  def test_returns_once_every_pod_answers(self):
    fake = self._started_fake(['edge-0', 'edge-1'])

    def pods_come_up():
      fake.errors = {}
    timer = threading.Timer(0.5, pods_come_up)
    timer.start()
    self.addCleanup(timer.cancel)
    topology_gen.wait_ready(self._topology(fake.port), None, timeout=20,
                            poll=0.1)
    self.assertGreater(fake.calls, 1)


if __name__ == '__main__':
  absltest.main()
