import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import PIL.Image

from data_prep import errors
from data_prep import image_folder
from data_prep import shards

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(path: str, pixels: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(pixels).save(path)
  return path


def _gray(value: int, size=(6, 4)) -> np.ndarray:
  return np.full(size, value, np.uint8)


class ImageFolderTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.rng = np.random.default_rng(0)

  def _client_folders(self) -> str:
    """alice: 3 cats 2 dogs; bob: 4 dogs; 6x4 grayscale PNGs."""
    root = os.path.join(self.dir, 'clients')
    for owner, counts in (('alice', {'cat': 3, 'dog': 2}),
                          ('bob', {'dog': 4})):
      for label, count in counts.items():
        for i in range(count):
          _save(os.path.join(root, owner, label, f'{i}.png'),
                self.rng.integers(0, 256, (6, 4), dtype=np.uint8))
    return root

  def test_client_folders_are_the_clients_and_pixels_survive(self):
    root = self._client_folders()
    self.assertEqual(image_folder.detect_layout(root),
                     image_folder.CLIENTS_LAYOUT)
    manifest = image_folder.prepare(root, os.path.join(self.dir, 's'),
                                    num_clients=0, partition='natural',
                                    eval_fraction=0.25)
    # 5 images: round(1.25) = 1 held out; 4 images: round(1.0) = 1.
    self.assertEqual({c.client_id: c.num_examples for c in manifest.clients},
                     {'alice': 4, 'bob': 3})
    self.assertEqual(manifest.eval.num_examples, 2)
    self.assertEqual(manifest.source['classes'], ['cat', 'dog'])
    self.assertEqual(manifest.features['pixels']['shape'], [6, 4, 1])
    # Every PNG (lossless) is in one shard with its label folder's class.
    written = {}
    for owner in ('alice', 'bob'):
      for label in ('cat', 'dog'):
        folder = os.path.join(root, owner, label)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
          pixels = np.asarray(PIL.Image.open(os.path.join(folder, name)))
          written[pixels.tobytes()] = ['cat', 'dog'].index(label)
    stored = {}
    for info in (*manifest.clients, manifest.eval):
      rows = shards.read_numpy(manifest, info)
      for pixels, label in zip(rows['pixels'], rows['label']):
        stored[pixels[..., 0].tobytes()] = int(label)
    self.assertEqual(stored, written)

  def test_label_folders_are_split_by_the_partition(self):
    root = os.path.join(self.dir, 'pool')
    for label in ('a', 'b'):
      for i in range(10):
        _save(os.path.join(root, label, f'{i}.png'), _gray(i))
    self.assertEqual(image_folder.detect_layout(root),
                     image_folder.LABELS_LAYOUT)
    manifest = image_folder.prepare(root, os.path.join(self.dir, 's'),
                                    num_clients=4, partition='iid')
    # 20 images over 4 clients: 5 each, round(0.5) = 1 held out of each.
    self.assertEqual([c.num_examples for c in manifest.clients], [4] * 4)
    self.assertEqual(manifest.eval.num_examples, 4)
    with self.assertRaisesRegex(errors.DataPrepError, 'no natural clients'):
      image_folder.prepare(root, os.path.join(self.dir, 's'),
                           partition='natural')

  def test_color_images_are_rgb_and_image_size_resizes(self):
    root = os.path.join(self.dir, 'pool')
    _save(os.path.join(root, 'red', '0.png'),
          np.tile(np.array([200, 10, 30, 255], np.uint8), (8, 8, 1)))  # RGBA.
    _save(os.path.join(root, 'red', '1.jpg'),
          np.tile(np.array([200, 10, 30], np.uint8), (16, 12, 1)))
    _save(os.path.join(root, 'gray', '0.png'), _gray(90, (8, 8)))
    with self.assertRaisesRegex(errors.DataFormatError,
                                r'1.jpg is 12x16 pixels but .*0.png is 8x8; '
                                r'pass --image_size'):
      image_folder.prepare(root, os.path.join(self.dir, 's'), num_clients=1,
                           partition='iid', eval_fraction=0.4)
    manifest = image_folder.prepare(root, os.path.join(self.dir, 's'),
                                    num_clients=1, partition='iid',
                                    eval_fraction=0.4, image_size=4)
    self.assertEqual(manifest.features['pixels']['shape'], [4, 4, 3])
    pixels = np.concatenate([shards.read_numpy(manifest, info)['pixels']
                             for info in (*manifest.clients, manifest.eval)])
    colors = sorted({tuple(p.reshape(-1, 3).mean(axis=0).round())
                     for p in pixels})
    # A uniform image stays uniform when resized; gray is gray in RGB; the
    # JPEG is within its quantization error of the colour it was saved as.
    self.assertEqual(colors[0], (90, 90, 90))
    for red in colors[1:]:
      np.testing.assert_allclose(red, (200, 10, 30), atol=4)

  def test_an_unreadable_image_is_named(self):
    root = os.path.join(self.dir, 'pool')
    for i in range(3):
      _save(os.path.join(root, 'a', f'{i}.png'), _gray(i))
    good = open(os.path.join(root, 'a', '0.png'), 'rb').read()
    cases = {'junk.png': b'not an image at all',
             'cut.png': good[:len(good) // 2]}
    for name, content in cases.items():
      with self.subTest(name):
        path = os.path.join(root, 'a', name)
        with open(path, 'wb') as f:
          f.write(content)
        with self.assertRaisesRegex(errors.DataFormatError,
                                    f'{path} is not a readable image'):
          image_folder.prepare(root, os.path.join(self.dir, 's'),
                               num_clients=1, partition='iid',
                               eval_fraction=0.3)
        os.remove(path)

  def test_eval_data_folder_and_reuse(self):
    root = self._client_folders()
    held = os.path.join(self.dir, 'held')
    _save(os.path.join(held, 'dog', 'x.png'), _gray(7))
    shard_dir = os.path.join(self.dir, 's')
    first = image_folder.find_or_prepare(root, shard_dir, num_clients=0,
                                         partition='natural', eval_data=held)
    self.assertEqual(first.eval.num_examples, 1)
    self.assertEqual(shards.read_numpy(first, first.eval)['label'].tolist(),
                     [1])
    self.assertEqual(sum(c.num_examples for c in first.clients), 9)
    mtime = os.stat(os.path.join(shard_dir, 'manifest.json')).st_mtime_ns
    image_folder.find_or_prepare(root, shard_dir, num_clients=0,
                                 partition='natural', eval_data=held)
    self.assertEqual(
        os.stat(os.path.join(shard_dir, 'manifest.json')).st_mtime_ns, mtime)
    _save(os.path.join(root, 'carol', 'cat', '0.png'), _gray(1))
    changed = image_folder.find_or_prepare(root, shard_dir, num_clients=0,
                                           partition='natural', eval_data=held)
    self.assertIn('carol', changed.client_ids())

  def test_cli_one_error_line(self):
    root = os.path.join(self.dir, 'pool')
    _save(os.path.join(root, 'a', '0.png'), _gray(1))
    bad = os.path.join(root, 'a', 'bad.jpg')
    with open(bad, 'wb') as f:
      f.write(b'\xff\xd8\xff garbage')
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    result = subprocess.run(
        [sys.executable, '-m', 'data_prep.image_folder', f'--data_dir={root}',
         f'--output_dir={os.path.join(self.dir, "out")}', '--num_clients=1',
         '--partition=iid', '--eval_fraction=0.5'],
        cwd=_REPO, capture_output=True, text=True,
        env=dict(env, PYTHONPATH=_REPO), timeout=300, check=False)
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertStartsWith(lines[0], f'error: {bad} is not a readable image')


if __name__ == '__main__':
  absltest.main()
