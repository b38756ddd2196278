"""Tests `python -m data_prep.emnist` end to end on synthetic EMNIST files."""

import os

from absl.testing import absltest
import numpy as np

from data_prep import shards
from data_prep import testing


class EmnistCliTest(absltest.TestCase):

  def test_letters_and_ambiguous_subsets(self):
    root = self.create_tempdir().full_path
    letters_dir = os.path.join(root, "letters")
    expected = testing.write_dataset(letters_dir, np.random.default_rng(0),
                                     num_train=80, num_test=10,
                                     num_classes=26,
                                     emnist_subset="letters")
    mixed_dir = os.path.join(root, "mixed")
    for subset in ("digits", "byclass"):
      testing.write_dataset(mixed_dir, np.random.default_rng(1),
                            num_train=20, num_test=5,
                            emnist_subset=subset)
    out_dir = os.path.join(root, "shards")
    ok = testing.start_module("data_prep.emnist", f"--output_dir={out_dir}",
                              f"--data_dir={letters_dir}",
                              "--num_clients=2", "--partition=iid")
    bad = testing.start_module("data_prep.emnist",
                               f"--output_dir={root}/other",
                               f"--data_dir={mixed_dir}")
    ok_out, ok_err = ok.communicate(timeout=300)
    bad_out, bad_err = bad.communicate(timeout=300)

    self.assertEqual(ok.returncode, 0, ok_err)
    self.assertIn("emnist: 2 clients, 80 examples", ok_out)
    manifest = shards.load_manifest(out_dir)
    self.assertEqual(manifest.num_classes, 26)
    self.assertEqual(manifest.source["emnist_subset"], "letters")
    # Upright images and 0-based labels reach the eval shard.
    eval_data = shards.read_numpy(manifest, manifest.eval)
    np.testing.assert_array_equal(eval_data["pixels"],
                                  expected["test"][0])
    np.testing.assert_array_equal(eval_data["label"], expected["test"][1])

    self.assertEqual(bad.returncode, 2)
    self.assertEqual(bad_out, "")
    self.assertEqual(bad_err.count("\n"), 1, bad_err)
    self.assertIn("several EMNIST subsets (byclass, digits)", bad_err)
    self.assertIn("--emnist_subset", bad_err)


if __name__ == "__main__":
  absltest.main()
