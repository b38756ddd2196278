import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from data_prep import errors
from data_prep import manifest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ManifestTest(absltest.TestCase):

  def test_importing_it_does_not_import_tensorflow(self):
    # Edge pods load and verify manifests in a 40 MB process, not 600 MB.
    code = ('import sys; import data_prep.manifest; '
            'print("tensorflow" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], cwd=_REPO, check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=_REPO)).stdout
    self.assertEqual(out.strip(), 'False')

  def test_round_trip_and_verify(self):
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, 'clients'))
    with open(os.path.join(root, 'clients', 'a.tfrecord'), 'wb') as f:
      f.write(b'payload')
    raw = {'format_version': manifest.FORMAT_VERSION, 'task': 'toy',
           'features': {'y': {'kind': 'int64', 'shape': []}},
           'num_classes': 2, 'partition': {}, 'source': {}, 'eval': None,
           'clients': [{'client_id': 'a', 'file': 'clients/a.tfrecord',
                        'num_examples': 1, 'sha256': manifest._sha256(  # pylint: disable=protected-access
                            os.path.join(root, 'clients', 'a.tfrecord')),
                        'label_histogram': None}]}
    built = manifest.manifest_from_json(raw, root, 'test')
    manifest.write_manifest(built)
    loaded = manifest.load_manifest(root)
    manifest.verify_shards(loaded)
    self.assertEqual(loaded.client_ids(), ['a'])
    self.assertEqual(json.loads(manifest.manifest_to_json(loaded))['task'],
                     'toy')

  def test_malformed_content_names_its_sender(self):
    with self.assertRaisesRegex(errors.ShardError, 'pod edge-2'):
      manifest.manifest_from_json({'task': 'x'}, '.', 'pod edge-2')


if __name__ == '__main__':
  absltest.main()
