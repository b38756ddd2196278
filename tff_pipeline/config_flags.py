"""The training options as absl flags, for the entry points that take them.

`tff_pipeline.train` and `tff_pipeline.prepare` call `define()` at import
(entry points only); `resolve()` then gives defaults < --config YAML <
explicit flags as a validated `TrainConfig`.
"""

from __future__ import annotations

import sys

from absl import flags

from tff_pipeline import plan
from tff_pipeline.core import config as config_lib

FLAGS = flags.FLAGS


def define() -> None:
  """Defines --config and one flag per TrainConfig field."""
  flags.DEFINE_string(
      'config', None,
      'FedML-style YAML config (sections common_args, data_args, model_args, '
      'train_args, validation_args, device_args, comm_args, tracking_args, '
      'and FedML\'s environment_args, secure_aggregation_args, lsa_args, '
      'dp_args, ...); a FedML fedml_config.yaml runs as it is. Flags '
      'override it.')
  for name, field in config_lib.OPTION_FIELDS.items():
    meta = field.metadata
    help_text = meta['help']
    if meta['choices']:
      help_text += f' One of: {", ".join(meta["choices"])}.'
    aliases = ', '.join(meta['fedml'])
    help_text += f' YAML: {meta["section"]}.{name}'
    help_text += f' (FedML: {aliases}).' if aliases else '.'
    default = field.default
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


def resolve() -> config_lib.TrainConfig:
  """Resolves defaults < --config YAML < explicit flags."""
  yaml_values = {}
  if FLAGS.config:
    overrides = config_lib.parse_yaml(FLAGS.config)
    warning = overrides.warning()
    if warning:  # Once, on stderr (not also through absl logging).
      print(f'warning: {warning}', file=sys.stderr)
    yaml_values = overrides.values
  explicit = {name: FLAGS[name].value
              for name in config_lib.OPTION_FIELDS if FLAGS[name].present}
  return plan.resolve_config(yaml_values, explicit)
