"""Tests for data_prep.errors."""

from absl.testing import absltest

from data_prep import errors


class ErrorsTest(absltest.TestCase):

  def test_hierarchy(self):
    self.assertTrue(issubclass(errors.DataFormatError, errors.DataPrepError))
    self.assertTrue(issubclass(errors.ShardError, errors.DataPrepError))

  def test_message_is_one_line(self):
    err = errors.ShardError("shard /x is corrupt\n(details)\n  fix it")
    self.assertEqual(str(err), "shard /x is corrupt (details) fix it")

  def test_rebuild_hint_names_module_and_dir(self):
    hint = errors.rebuild_hint("/x/shards", "emnist")
    self.assertIn("python -m data_prep.emnist", hint)
    self.assertIn("--output_dir=/x/shards", hint)

  def test_rebuild_hint_unknown_task_uses_placeholder(self):
    self.assertIn("data_prep.<task>", errors.rebuild_hint("/x", None))


if __name__ == "__main__":
  absltest.main()
