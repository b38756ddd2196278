"""Tests `python -m data_prep.fashion_mnist` end to end on the real files."""

import os

from absl.testing import absltest

from data_prep import image_datasets
from data_prep import shards
from data_prep import testing

_FASHION_DIR = image_datasets.DEFAULT_DATA_DIRS["fashion_mnist"]


class FashionMnistCliTest(absltest.TestCase):

  def test_success_and_missing_data_dir(self):
    if not os.path.isdir(_FASHION_DIR):
      self.skipTest(f"{_FASHION_DIR} missing; apt-get install "
                    "dataset-fashion-mnist")
    root = self.create_tempdir().full_path
    out_dir = os.path.join(root, "shards")
    missing = os.path.join(root, "no_such_dir")
    # Both children import TF (slow); run them side by side.
    ok = testing.start_module("data_prep.fashion_mnist",
                              f"--output_dir={out_dir}", "--num_clients=5")
    bad = testing.start_module("data_prep.fashion_mnist",
                               f"--output_dir={root}/other",
                               f"--data_dir={missing}")
    ok_out, ok_err = ok.communicate(timeout=300)
    bad_out, bad_err = bad.communicate(timeout=300)

    self.assertEqual(ok.returncode, 0, ok_err)
    self.assertRegex(ok_out, r"^fashion_mnist: 5 clients, 60000 examples "
                     r"\(per client min \d+ / median \d+ / max \d+\), "
                     rf"10000 eval examples -> {out_dir} in [0-9.]+ s\n$")
    manifest = shards.load_manifest(out_dir)
    self.assertEqual(manifest.partition, {"method": "dirichlet",
                                          "alpha": 0.5, "num_clients": 5,
                                          "seed": 0})
    self.assertEqual(manifest.source["data_dir"], _FASHION_DIR)
    shards.verify_shards(manifest)

    self.assertEqual(bad.returncode, 2)
    self.assertEqual(bad_out, "")
    self.assertNotIn("Traceback", bad_err)
    self.assertLen(bad_err.splitlines(), 1, bad_err)
    self.assertTrue(bad_err.startswith(f"error: fashion_mnist data "
                                       f"directory {missing} does not "
                                       "exist"), bad_err)
    self.assertIn("apt-get install dataset-fashion-mnist", bad_err)
    self.assertFalse(os.path.exists(os.path.join(root, "other")))


if __name__ == "__main__":
  absltest.main()
