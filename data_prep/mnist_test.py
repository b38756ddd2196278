"""Tests `python -m data_prep.mnist` end to end on a synthetic dataset."""

import os

from absl.testing import absltest
import numpy as np

from data_prep import shards
from data_prep import testing


class MnistCliTest(absltest.TestCase):

  def test_success_and_missing_flag(self):
    root = self.create_tempdir().full_path
    data_dir = os.path.join(root, "raw")
    expected = testing.write_dataset(data_dir, np.random.default_rng(0),
                                     num_train=90, num_test=20)
    out_dir = os.path.join(root, "shards")
    ok = testing.start_module("data_prep.mnist", f"--output_dir={out_dir}",
                              f"--data_dir={data_dir}", "--num_clients=3",
                              "--partition=iid", "--seed=4")
    # MNIST has no default data dir.
    bad = testing.start_module("data_prep.mnist",
                               f"--output_dir={root}/other")
    ok_out, ok_err = ok.communicate(timeout=300)
    bad_out, bad_err = bad.communicate(timeout=300)

    self.assertEqual(ok.returncode, 0, ok_err)
    self.assertIn("mnist: 3 clients, 90 examples", ok_out)
    manifest = shards.load_manifest(out_dir)
    self.assertEqual(manifest.partition["seed"], 4)
    labels = np.concatenate([shards.read_numpy(manifest, c)["label"]
                             for c in manifest.clients])
    np.testing.assert_array_equal(np.sort(labels),
                                  np.sort(expected["train"][1]))
    eval_data = shards.read_numpy(manifest, manifest.eval)
    np.testing.assert_array_equal(eval_data["pixels"],
                                  expected["test"][0])

    self.assertEqual(bad.returncode, 2)
    self.assertEqual(bad_out, "")
    self.assertEqual(bad_err.count("\n"), 1, bad_err)
    self.assertIn("error: mnist has no default data directory", bad_err)
    self.assertIn("--data_dir", bad_err)


if __name__ == "__main__":
  absltest.main()
