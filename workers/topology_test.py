import os
import tempfile

from absl.testing import absltest

from data_prep.errors import UserError
from workers import topology


def _raw():
  return {'edge_servers': [
      {'name': 'es-0', 'address': '10.1.2.1:7000', 'health': '10.1.2.1:7001',
       'pods': [{'name': 'edge-0', 'address': '10.1.1.1:8000',
                 'health': '10.1.1.1:8001'},
                {'name': 'edge-1', 'address': 'edge-1.edge:8000',
                 'health': 'edge-1.edge:8001'}]}],
          'eval_data': '/data/eval'}


class TopologyTest(absltest.TestCase):

  def test_save_then_load_round_trips(self):
    parsed = topology.parse(_raw(), 'test')
    path = os.path.join(tempfile.mkdtemp(), 'topology.yaml')
    topology.save(parsed, path)
    self.assertEqual(topology.load(path), parsed)
    self.assertEqual([p.name for p in parsed.pods], ['edge-0', 'edge-1'])
    self.assertEqual(parsed.edge_server('es-0').pods[1].address,
                     'edge-1.edge:8000')

  def test_bad_entries_are_named(self):
    cases = {
        'used twice': lambda r: r['edge_servers'][0]['pods'][1].update(
            name='edge-0'),
        'not host:port': lambda r: r['edge_servers'][0].update(
            address='10.1.2.1'),
        'missing': lambda r: r['edge_servers'][0]['pods'][0].pop('health'),
        'DNS label': lambda r: r['edge_servers'][0].update(name='ES_0'),
        'non-empty list "pods"': lambda r: r['edge_servers'][0].update(
            pods=[]),
        'unknown keys': lambda r: r.update(coordinator='x'),
    }
    for message, change in cases.items():
      with self.subTest(message):
        raw = _raw()
        change(raw)
        with self.assertRaisesRegex(UserError, message):
          topology.parse(raw, 'test.yaml')

  def test_missing_file_says_how_to_make_one(self):
    with self.assertRaisesRegex(UserError, 'local_cluster'):
      topology.load('/nonexistent/topology.yaml')

  def test_unknown_edge_server_is_named(self):
    with self.assertRaisesRegex(UserError, "'es-9'.*es-0"):
      topology.parse(_raw(), 't').edge_server('es-9')


if __name__ == '__main__':
  absltest.main()
