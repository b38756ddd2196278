"""Tests for data_prep.cli, in-process (entry-point tests spawn it)."""

import contextlib
import io
import os

from absl import app
from absl import flags
from absl.testing import absltest
import numpy as np

from data_prep import cli
from data_prep import shards
from data_prep import testing


def _run_main(task, *args):
  """Runs make_main(task) with fresh flags; returns (exit code, out, err)."""
  flag_values = flags.FlagValues()
  cli.define_flags(task, flag_values)
  flag_values(["prog", *args])
  stdout, stderr = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      cli.make_main(task, flag_values)(["prog"])
    except SystemExit as e:
      code = e.code
  return code, stdout.getvalue(), stderr.getvalue()


class CliTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.data_dir = os.path.join(self.root, "raw")
    testing.write_dataset(self.data_dir, np.random.default_rng(0),
                          num_train=120, num_test=30)

  def test_success_prints_summary(self):
    out_dir = os.path.join(self.root, "out")
    code, out, err = _run_main("mnist", f"--output_dir={out_dir}",
                               f"--data_dir={self.data_dir}",
                               "--num_clients=4", "--partition=iid")
    self.assertEqual(code, 0, err)
    self.assertRegex(
        out, rf"^mnist: 4 clients, 120 examples \(per client min 30 / "
        rf"median 30 / max 30\), 30 eval examples -> {out_dir} in "
        r"[0-9.]+ s\n$")
    shards.verify_shards(shards.load_manifest(out_dir))

  def test_data_error_is_one_line_exit_2(self):
    missing = os.path.join(self.root, "missing")
    code, out, err = _run_main("mnist", f"--output_dir={self.root}/o",
                               f"--data_dir={missing}")
    self.assertEqual(code, cli.EXIT_DATA_ERROR)
    self.assertEqual(out, "")
    self.assertRegex(err, rf"^error: mnist data directory {missing} does "
                     r"not exist .*--data_dir=DIR\n$")

  def test_request_error_exit_2(self):
    code, _, err = _run_main("mnist", f"--output_dir={self.root}/o",
                             f"--data_dir={self.data_dir}",
                             "--num_clients=500")
    self.assertEqual(code, cli.EXIT_DATA_ERROR)
    self.assertIn("--num_clients=500 exceeds the 120", err)

  def test_output_dir_is_a_file(self):
    path = os.path.join(self.root, "file")
    open(path, "w").close()
    code, _, err = _run_main("mnist", f"--output_dir={path}",
                             f"--data_dir={self.data_dir}",
                             "--num_clients=2")
    self.assertEqual(code, cli.EXIT_DATA_ERROR)
    self.assertIn("is not a directory", err)

  def test_emnist_subset_flag_only_for_emnist(self):
    for task, has_flag in (("emnist", True), ("mnist", False),
                           ("fashion_mnist", False)):
      flag_values = flags.FlagValues()
      cli.define_flags(task, flag_values)
      self.assertEqual("emnist_subset" in flag_values, has_flag)

  def test_default_data_dir_only_for_fashion_mnist(self):
    for task, default in (("fashion_mnist",
                           "/usr/share/datasets/fashion-mnist"),
                          ("mnist", None), ("emnist", None)):
      flag_values = flags.FlagValues()
      cli.define_flags(task, flag_values)
      self.assertEqual(flag_values["data_dir"].default, default)

  def test_extra_arguments_rejected(self):
    flag_values = flags.FlagValues()
    cli.define_flags("mnist", flag_values)
    flag_values(["prog", "--output_dir=/tmp/x"])
    with self.assertRaises(app.UsageError):
      cli.make_main("mnist", flag_values)(["prog", "stray"])

  def test_summary(self):
    info = lambda n: shards.ShardInfo(f"c{n}", f"clients/c{n}.tfrecord",
                                      n, "0" * 64, None)
    manifest = shards.Manifest(
        shard_dir="/s", task="emnist", features={}, num_classes=10,
        partition={}, source={}, clients=(info(3), info(10), info(5),
                                          info(6)),
        eval=info(7), format_version=1)
    self.assertEqual(
        cli.summary(manifest, 2.345),
        "emnist: 4 clients, 24 examples (per client min 3 / median 5.5 / "
        "max 10), 7 eval examples -> /s in 2.3 s")


if __name__ == "__main__":
  absltest.main()
