"""pytest glue for absltest-style tests.

absltest.main() parses absl flags; under pytest nobody does, and
TestCase.create_tempdir() reads --test_tmpdir. Marking the flags parsed gives
every flag its default, which is what a plain `python foo_test.py` run sees.
"""

from absl import flags


def pytest_configure(config):
    del config  # Unused.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
