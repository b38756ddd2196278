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

  def test_shard_verifier_checks_each_shard_once_when_used(self):
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, 'clients'))
    infos = []
    for name in ('a', 'b', 'c'):
      path = os.path.join(root, 'clients', f'{name}.tfrecord')
      with open(path, 'wb') as f:
        f.write(name.encode() * 10)
      infos.append({'client_id': name, 'file': f'clients/{name}.tfrecord',
                    'num_examples': 1, 'num_bytes': 10,
                    'sha256': manifest._sha256(path),  # pylint: disable=protected-access
                    'label_histogram': None})
    raw = {'format_version': manifest.FORMAT_VERSION, 'task': 'toy',
           'features': {'y': {'kind': 'int64', 'shape': []}},
           'num_classes': None, 'partition': {}, 'source': {}, 'eval': None,
           'clients': infos}
    loaded = manifest.manifest_from_json(raw, root, 'test')
    # c is corrupt (same size, other bytes); it is not looked at until used.
    with open(os.path.join(root, 'clients', 'c.tfrecord'), 'wb') as f:
      f.write(b'x' * 10)
    verifier = manifest.ShardVerifier(loaded)
    self.assertEqual(verifier.verify(['a', 'b', 'a']), 2)
    self.assertEqual(verifier.verify(['b']), 0)  # Done already.
    # b is not hashed again: damage after its check goes unnoticed here
    # (TFRecord's CRCs catch it when read).
    with open(os.path.join(root, 'clients', 'b.tfrecord'), 'wb') as f:
      f.write(b'y' * 10)
    self.assertEqual(verifier.verify(['b']), 0)
    with self.assertRaisesRegex(errors.ShardError,
                                r'c\.tfrecord is corrupt \(sha256'):
      verifier.verify(['a', 'c'])
    with self.assertRaisesRegex(errors.ShardError, r"client id 'd' is not"):
      verifier.verify(['d'])
    # Up to a limit, a new verifier checks everything at once (b fails).
    self.assertFalse(manifest.ShardVerifier(loaded).verify_if_few(limit=2))
    with self.assertRaisesRegex(errors.ShardError, r'b\.tfrecord is corrupt'):
      manifest.ShardVerifier(loaded).verify_if_few(limit=3)

  def test_malformed_content_names_its_sender(self):
    with self.assertRaisesRegex(errors.ShardError, 'pod edge-2'):
      manifest.manifest_from_json({'task': 'x'}, '.', 'pod edge-2')


if __name__ == '__main__':
  absltest.main()
