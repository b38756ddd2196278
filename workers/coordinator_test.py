"""Coordinator-side checks that need edge servers but no training."""

import os
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import portpicker

from data_prep import shards
from workers import coordinator as distributed
from workers import edge_server
from workers import health
from workers import topology as topology_lib


def _manifest(clients: list[str], task: str = 'toy') -> dict:
  return {'format_version': shards.FORMAT_VERSION, 'task': task,
          'features': {'y': {'kind': 'int64', 'shape': []}},
          'num_classes': 2, 'partition': {'method': 'natural'}, 'source': {},
          'eval': None,
          'clients': [{'client_id': c, 'file': f'clients/{c}.tfrecord',
                       'num_examples': 1, 'sha256': '0' * 64,
                       'label_histogram': None} for c in clients]}


class ClusterDescribeTest(absltest.TestCase):
  """A real edge server asks real pod endpoints for their manifests."""

  def _cluster(self, pods: dict[str, dict],
               held_out: Optional[dict[str, list[str]]] = None
               ) -> distributed.Cluster:
    specs = []
    for name, manifest in pods.items():
      reply = {'pod': name, 'manifest': manifest,
               'held_out_clients': (held_out or {}).get(name, [])}
      server = health.HealthServer(0, {'/control/manifest': (
          lambda r=reply: (200, r))})
      server.start()
      self.addCleanup(server.stop)
      specs.append(topology_lib.Pod(name, '127.0.0.1:1',
                                    f'127.0.0.1:{server.port}'))
    port = portpicker.pick_unused_port()
    spec = topology_lib.EdgeServer('es-0', f'127.0.0.1:{port}',
                                   '127.0.0.1:1', tuple(specs))
    grpc_server = edge_server.serve(edge_server.EdgeServer(spec), port)
    self.addCleanup(grpc_server.stop, None)
    cluster = distributed.Cluster(topology_lib.Topology((spec,)))
    self.addCleanup(cluster.close)
    return cluster

  def test_routes_each_client_to_its_pod_in_id_order(self):
    view = self._cluster({'edge-0': _manifest(['b', 'd']),
                          'edge-1': _manifest(['a', 'c'])}).describe()
    self.assertEqual(view.pod_of, {'a': 'edge-1', 'b': 'edge-0',
                                   'c': 'edge-1', 'd': 'edge-0'})
    self.assertEqual(view.server_of, {'edge-0': 'es-0', 'edge-1': 'es-0'})
    self.assertEqual(view.manifest.client_ids(), ['a', 'b', 'c', 'd'])
    self.assertEqual(view.manifest.shard_dir, '.')

  def test_collects_held_out_clients_of_the_pods(self):
    view = self._cluster({'edge-0': _manifest(['b', 'd']),
                          'edge-1': _manifest(['a', 'c'])},
                         held_out={'edge-0': ['d'], 'edge-1': ['a', 'c']}
                         ).describe()
    self.assertEqual(view.held_out_clients, ('a', 'c', 'd'))
    view = self._cluster({'edge-0': _manifest(['a'])}).describe()
    self.assertEqual(view.held_out_clients, ())

  def test_held_out_data_away_from_its_client_is_refused(self):
    cluster = self._cluster({'edge-0': _manifest(['a']),
                             'edge-1': _manifest(['b'])},
                            held_out={'edge-1': ['a']})
    with self.assertRaisesRegex(
        distributed.ClusterError,
        'pod edge-1 holds held-out data of client a but not its training'):
      cluster.describe()

  def test_client_on_two_pods_is_refused(self):
    cluster = self._cluster({'edge-0': _manifest(['a', 'b']),
                             'edge-1': _manifest(['b'])})
    with self.assertRaisesRegex(distributed.ClusterError,
                                'client b is on both pod edge-0 and pod edge-1'):
      cluster.describe()

  def test_pods_with_different_datasets_are_refused(self):
    cluster = self._cluster({'edge-0': _manifest(['a']),
                             'edge-1': _manifest(['b'], task='other')})
    with self.assertRaisesRegex(distributed.ClusterError, 'different datasets'):
      cluster.describe()

  def test_unreachable_pod_is_named(self):
    spec = topology_lib.Pod('edge-9', '127.0.0.1:1',
                            f'127.0.0.1:{portpicker.pick_unused_port()}')
    port = portpicker.pick_unused_port()
    server_spec = topology_lib.EdgeServer('es-0', f'127.0.0.1:{port}',
                                          '127.0.0.1:1', (spec,))
    grpc_server = edge_server.serve(edge_server.EdgeServer(server_spec), port)
    self.addCleanup(grpc_server.stop, None)
    cluster = distributed.Cluster(topology_lib.Topology((server_spec,)))
    with self.assertRaisesRegex(distributed.ClusterError, 'edge-9.*running'):
      cluster.describe()

  def test_unreachable_edge_server_is_named_with_its_address(self):
    address = f'127.0.0.1:{portpicker.pick_unused_port()}'
    spec = topology_lib.EdgeServer(
        'es-3', address, '127.0.0.1:1',
        (topology_lib.Pod('edge-0', '127.0.0.1:1', '127.0.0.1:1'),))
    cluster = distributed.Cluster(topology_lib.Topology((spec,)))
    with self.assertRaisesRegex(distributed.ClusterError,
                                f'edge server es-3 at {address}'):
      cluster.describe(timeout=5)


class SecAggRelayTest(absltest.TestCase):
  """SecAgg+ stages through a real edge server to pod control routes."""

  def test_relays_each_pod_its_request_and_reports_the_rest(self):
    specs, received = [], {}

    def route(name, status):
      def answer(request):
        received[name] = request
        return status, ({'party': name, 'echo': request} if status == 200
                        else {'error': 'replayed round'})
      return answer

    for name, status in (('edge-0', 200), ('edge-1', 409)):
      server = health.HealthServer(
          0, {'/control/manifest': lambda n=name: (200, {
              'pod': n, 'manifest': _manifest([f'{n}-c']),
              'secagg': {'party': n, 'ready': True}})},
          post_routes={'/control/secagg/round': route(name, status)})
      server.start()
      self.addCleanup(server.stop)
      specs.append(topology_lib.Pod(name, '127.0.0.1:1',
                                    f'127.0.0.1:{server.port}'))
    specs.append(topology_lib.Pod(  # Nobody listens there.
        'edge-2', '127.0.0.1:1',
        f'127.0.0.1:{portpicker.pick_unused_port()}'))
    port = portpicker.pick_unused_port()
    spec = topology_lib.EdgeServer('es-0', f'127.0.0.1:{port}',
                                   '127.0.0.1:1', tuple(specs))
    grpc_server = edge_server.serve(edge_server.EdgeServer(spec), port)
    self.addCleanup(grpc_server.stop, None)
    cluster = distributed.Cluster(topology_lib.Topology((spec,)))
    self.addCleanup(cluster.close)
    view = distributed.ClusterView(
        manifest=None, pod_of={}, server_of={p.name: 'es-0' for p in specs})
    requests = {p.name: {'stage': 'advertise', 'for': p.name} for p in specs}
    replies, failures = cluster.secagg_relay(view, requests, timeout=10)
    self.assertEqual(replies, {'edge-0': {'party': 'edge-0',
                                          'echo': requests['edge-0']}})
    self.assertEqual(received['edge-1'], requests['edge-1'])
    kinds = {f['pod']: f['kind'] for f in failures}
    self.assertEqual(kinds, {'edge-1': 'refused', 'edge-2': 'unavailable'})
    self.assertIn('replayed round', next(
        f['error'] for f in failures if f['pod'] == 'edge-1'))

  def test_describe_collects_the_pods_secagg_parties(self):
    server = health.HealthServer(0, {'/control/manifest': lambda: (200, {
        'pod': 'edge-0', 'manifest': _manifest(['a']),
        'secagg': {'party': 'edge-0', 'ready': True, 'policy': {}}})})
    server.start()
    self.addCleanup(server.stop)
    port = portpicker.pick_unused_port()
    spec = topology_lib.EdgeServer(
        'es-0', f'127.0.0.1:{port}', '127.0.0.1:1',
        (topology_lib.Pod('edge-0', '127.0.0.1:1',
                          f'127.0.0.1:{server.port}'),))
    grpc_server = edge_server.serve(edge_server.EdgeServer(spec), port)
    self.addCleanup(grpc_server.stop, None)
    cluster = distributed.Cluster(topology_lib.Topology((spec,)))
    self.addCleanup(cluster.close)
    self.assertEqual(cluster.describe().secagg,
                     {'edge-0': {'party': 'edge-0', 'ready': True,
                                 'policy': {}}})


if __name__ == '__main__':
  absltest.main()
