"""FedML's `fedml_config.yaml` vocabulary: its sections, machinery and intent.

FedML (He et al., "FedML: A Research Library and Benchmark for Federated
Machine Learning", 2020) reads a YAML file of sections (`common_args`,
`data_args`, ..., `secure_aggregation_args`, `dp_args`) and flattens them:
every key becomes one attribute, whatever its section (fedml/arguments.py).
So a FedML key name means the same in any section here too. This module
holds what is FedML's rather than ours:

- the sections FedML's examples use besides ours (`SECTIONS`);
- keys about FedML's own machinery (MLOps, MQTT/S3/gRPC/MPI, GPU mapping,
  bootstrap scripts, model cache paths), which have nothing to do here and
  are ignored, each with what replaces it (`machinery_replacement`);
- keys whose intent we honour in our own terms (`translate`): secure
  aggregation (`secure_aggregation_args.enable_sa`, `federated_optimizer:
  LSA`) becomes `--aggregator=secagg`; central DP (`dp_args.enable_dp` with
  `dp_solution_type: cdp`, `epsilon`, `delta`, `mechanism_type: gaussian`)
  becomes DP-FedAvg with noise calibrated to that epsilon and delta;
  `tracking_args.enable_wandb` becomes `--tracking=...,wandb`. Intent we
  cannot honour (local DP, attacks, defenses, FHE) is an error naming the key.

tff_pipeline.core.config turns the result into option values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from data_prep.errors import UserError
from data_prep.errors import did_you_mean

# FedML's sections besides ours (tff_pipeline.core.config.SECTIONS).
PRIVACY_SECTIONS = ('secure_aggregation_args', 'lsa_args', 'dp_args')
_SWITCHED_SECTIONS = {  # section -> (its on switch, what it does)
    'attack_args': ('enable_attack', 'attack simulation'),
    'defense_args': ('enable_defense', 'robust aggregation defenses'),
    'fhe_args': ('enable_fhe', 'homomorphic encryption'),
}
_WHOLE_SECTIONS = {  # section -> what replaces every key in it
    'environment_args': './setup.sh (or the image of k8s/build_image.sh)',
    'private_config_paths': 'one config for the whole run; the topology '
                            'file names edge servers and pods',
}
SECTIONS = (('environment_args',) + PRIVACY_SECTIONS +
            tuple(_SWITCHED_SECTIONS) +
            ('fednova_args', 'task_args', 'private_config_paths'))

_DEVICES = 'nothing (TensorFlow places the work itself)'
_EXECUTORS = 'TFF gRPC executors (--executor, --tls_dir)'
_MODEL_FILES = ('--output_dir (checkpoints, and the exported model in '
                '<output_dir>/model)')
_KERAS = 'nothing (the models are TensorFlow/Keras)'
_TRACKING = '--tracking (tensorboard, mlflow, wandb under --output_dir)'
# FedML keys about its own machinery, by key name (any section), with what
# replaces them here.
_MACHINERY: dict[str, str] = {
    'training_type': '--executor (local, or remote: the edge pods of '
                     '--topology)',
    'scenario': '--executor and --topology (edge servers are the hierarchy)',
    'config_version': 'nothing (one config format)',
    'using_mlops': _TRACKING,
    'enable_tracking': _TRACKING,
    'log_server_url': _TRACKING,
    'bootstrap': _WHOLE_SECTIONS['environment_args'],
    'model_file_cache_folder': _MODEL_FILES,
    'global_model_file_path': _MODEL_FILES,
    'data_file_path': '--data_dir',
    'download': '--data_dir (read from there, never downloaded)',
    'client_id_list': 'seeded client sampling (--seed, --client_sampling)',
    'sleep_time_max': 'nothing',
    'ci': 'nothing',
    'checkpoint_interval': 'a checkpoint after every round (--keep_checkpoints)',
    'server_checkpoint_interval': 'a checkpoint after every round '
                                  '(--keep_checkpoints)',
    'ml_engine': _KERAS,
    'deeplearning_backend': _KERAS,
    'worker_num': 'the edge pods of --topology (or the local runtime)',
    'process_num': 'the edge pods of --topology (or the local runtime)',
    'using_gpu': _DEVICES,
    'gpu_mapping_file': _DEVICES,
    'gpu_mapping_key': _DEVICES,
    'gpu_id': _DEVICES,
    'device_type': _DEVICES,
    'multi_gpu_server': _DEVICES,
    'backend': _EXECUTORS,
    'is_mobile': 'nothing',
    'mqtt_config_path': _EXECUTORS,
    's3_config_path': _EXECUTORS,
    'grpc_ipconfig_path': '--topology (edge servers and their pods)',
    'trpc_master_config_path': '--topology (edge servers and their pods)',
    'enable_cuda_rpc': _DEVICES,
    'cuda_rpc_gpu_mapping': _DEVICES,
    'log_file_dir': '--output_dir',
    'local_log_output_path': '--output_dir',
    'wandb_key': 'nothing: W&B runs offline here (`wandb sync '
                 '<output_dir>/wandb/offline-run-*` uploads it)',
    'wandb_entity': '`wandb sync --entity=...` of the offline run',
    'wandb_only_server': 'nothing (only the coordinator logs)',
    'wandb_obj': 'nothing (the W&B run is made here)',
}
_MACHINERY_PREFIXES = {'mlops_': _TRACKING, 'customized_training_': _EXECUTORS}

_SECAGG = 'SecAgg+ (--aggregator=secagg; see docs/secagg.md)'
# Keys of secure_aggregation_args / lsa_args besides enable_sa.
_SECAGG_KEYS = {
    'sa_method': _SECAGG,
    'prime_number': '--secagg_bits (updates are summed in Z_2^bits)',
    'precision_parameter': '--secagg_bits (updates are summed in Z_2^bits)',
    'targeted_number_active_clients': _SECAGG,
    'privacy_guarantee': _SECAGG,
}
_ACCOUNTANT = ('the RDP and PLD accountants of dp-accounting (epsilon per '
               'round in metrics.jsonl)')
# Keys of dp_args besides the ones `_dp` reads, when DP is on.
_DP_KEYS = {
    'sensitivity': '--clip (each client update is clipped to L2 norm clip, '
                   'which bounds the sensitivity)',
    'rdp_alpha': _ACCOUNTANT,
    'enable_rdp_accountant': _ACCOUNTANT,
    'stop_training_at_epsilon': 'noise calibrated so that the last round '
                                'ends at dp_args.epsilon',
}
_DP_READ = ('enable_dp', 'dp_solution_type', 'dp_type', 'mechanism_type',
            'epsilon', 'delta', 'clipping_norm', 'noise_multiplier')


def machinery_replacement(key: str) -> Optional[str]:
  """What replaces a FedML machinery key here, or None if it is not one."""
  if key in _MACHINERY:
    return _MACHINERY[key]
  for prefix, replacement in _MACHINERY_PREFIXES.items():
    if key.startswith(prefix):
      return replacement
  return None


@dataclasses.dataclass(frozen=True)
class Setting:
  """An option value (unconverted) and the 'section.key' it came from."""
  value: Any
  origin: str


@dataclasses.dataclass
class Translation:
  """What the FedML-only keys of a config mean here.

  Attributes:
    settings: Option name -> the value FedML's keys ask for.
    add_tracking: Trackers to add to --tracking (W&B for enable_wandb).
    claimed: 'section.key' of every key handled here (set or ignored).
    ignored: 'section.key' -> what replaces it, for the one warning.
  """
  settings: dict[str, Setting] = dataclasses.field(default_factory=dict)
  add_tracking: list[str] = dataclasses.field(default_factory=list)
  claimed: set[str] = dataclasses.field(default_factory=set)
  ignored: dict[str, str] = dataclasses.field(default_factory=dict)


class _Reader:
  """A config's keys by name (FedML flattens sections), with duplicates checked."""

  def __init__(self, raw: Mapping[str, Mapping[str, Any]], path: str):
    self.path = path
    self.by_key: dict[str, list[tuple[str, Any]]] = {}
    self.sections: dict[str, list[str]] = {}
    for section, entries in raw.items():
      if not isinstance(entries, Mapping):
        continue
      for key, value in entries.items():
        self.by_key.setdefault(str(key), []).append((str(section), value))
        self.sections.setdefault(str(section), []).append(str(key))

  def origins(self, key: str) -> list[str]:
    """'section.key' of every place `key` is set."""
    return [f'{section}.{key}' for section, _ in self.by_key.get(key, ())]

  def error(self, where: str, message: str) -> UserError:
    return UserError(f'config file {self.path}: {where}{message}')

  def get(self, *keys: str, sections: Optional[tuple[str, ...]] = None
          ) -> Optional[Setting]:
    """The value of the first of `keys` present; equal duplicates allowed.

    Args:
      *keys: Key names meaning the same (FedML renamed some: dp_type and
        dp_solution_type).
      sections: Only look in these sections (None: any).

    Raises:
      UserError: Two of them are set to different values.
    """
    found = [(f'{section}.{key}', value) for key in keys
             for section, value in self.by_key.get(key, ())
             if sections is None or section in sections]
    if not found:
      return None
    origin, value = found[0]
    for other, other_value in found[1:]:
      if other_value != value:
        raise self.error(
            '', f'{origin}={value!r} and {other}={other_value!r} disagree; '
            'keep one of them')
    return Setting(value, origin)

  def switch(self, setting: Optional[Setting]) -> bool:
    """A FedML on/off value (true/false, 1/0)."""
    if setting is None:
      return False
    value = setting.value
    if isinstance(value, bool):
      return value
    if isinstance(value, int) and value in (0, 1):
      return bool(value)
    if isinstance(value, str) and value.lower() in ('true', 'false'):
      return value.lower() == 'true'
    raise self.error(setting.origin, f': expected true or false, got {value!r}')


def _claim_section(reader: _Reader, out: Translation, section: str,
                   known: tuple[str, ...], on: bool,
                   replacements: Mapping[str, str]) -> None:
  """Claims every key of `section`; typos are errors (a privacy switch)."""
  for key in reader.sections.get(section, ()):
    dotted = f'{section}.{key}'
    if key not in known and key not in replacements:
      hint = did_you_mean(key, [*known, *replacements])
      raise reader.error(dotted, f': unknown key{hint}; known keys in '
                         f'{section}: {", ".join(sorted({*known, *replacements}))}')
    out.claimed.add(dotted)
    if on and key in replacements:
      out.ignored[dotted] = replacements[key]


def _secure_aggregation(reader: _Reader, out: Translation) -> bool:
  """enable_sa / federated_optimizer LSA or SA -> secure aggregation."""
  enable = reader.get('enable_sa', sections=('secure_aggregation_args',))
  optimizer = reader.get('federated_optimizer')
  by_optimizer = (optimizer is not None and isinstance(optimizer.value, str)
                  and optimizer.value.lower() in ('lsa', 'sa'))
  if by_optimizer and enable is not None and not reader.switch(enable):
    raise reader.error(
        '', f'{optimizer.origin}={optimizer.value} asks for secure '
        f'aggregation but {enable.origin} is false; set it to true, or use '
        'federated_optimizer: FedAvg')
  secure = by_optimizer or reader.switch(enable)
  for section in ('secure_aggregation_args', 'lsa_args'):
    _claim_section(reader, out, section, ('enable_sa',), secure, _SECAGG_KEYS)
  if secure:
    out.settings['aggregator'] = Setting(
        'secagg', enable.origin if reader.switch(enable) else optimizer.origin)
  return secure


def _dp(reader: _Reader, out: Translation, secure: bool) -> None:
  """dp_args -> central DP (dp_fixed, or secagg_dp with secure aggregation)."""
  enable = reader.get('enable_dp', sections=('dp_args',))
  on = reader.switch(enable)
  _claim_section(reader, out, 'dp_args', _DP_READ, on, _DP_KEYS)
  if not on:
    return

  def get(*keys: str) -> Optional[Setting]:
    return reader.get(*keys, sections=('dp_args',))

  kind = get('dp_solution_type', 'dp_type')
  if kind is None:
    raise reader.error(enable.origin, ' is true but dp_args.dp_solution_type '
                       'is missing; set it to cdp (central DP)')
  solution = str(kind.value).strip().lower()
  if solution == 'ldp':
    raise reader.error(
        kind.origin, '=ldp (local DP) is not supported: noise is added once, '
        'centrally, to the sum of clipped client updates; set it to cdp')
  if solution not in ('cdp', 'dp_clip'):
    raise reader.error(
        kind.origin, f'={kind.value} is not supported; set it to cdp (central '
        'DP calibrated to dp_args.epsilon) or dp_clip (clip and '
        'noise_multiplier)')
  mechanism = get('mechanism_type')
  if mechanism is not None and str(mechanism.value).lower() != 'gaussian':
    raise reader.error(
        mechanism.origin, f'={mechanism.value} is not supported: DP-FedAvg '
        'adds Gaussian noise; set it to gaussian')
  out.settings['aggregator'] = Setting('secagg_dp' if secure else 'dp_fixed',
                                       kind.origin)
  for ours, fedml_key in (('delta', 'delta'), ('clip', 'clipping_norm')):
    setting = get(fedml_key)
    if setting is not None:
      out.settings[ours] = setting
  epsilon, noise = get('epsilon'), get('noise_multiplier')
  if solution == 'cdp':
    if epsilon is None:
      raise reader.error(kind.origin, '=cdp needs dp_args.epsilon (the '
                         'budget the noise is calibrated to)')
    if isinstance(epsilon.value, bool) or not isinstance(
        epsilon.value, (int, float)) or epsilon.value <= 0:
      raise reader.error(epsilon.origin,
                         f': expected a number > 0, got {epsilon.value!r}')
    out.settings['target_epsilon'] = epsilon
    if noise is not None:
      out.ignored[noise.origin] = ('the noise calibrated to '
                                   f'{epsilon.origin}={epsilon.value}')
  else:  # dp_clip: FedML's clip and noise multiplier, epsilon reported.
    if noise is None:
      raise reader.error(kind.origin, '=dp_clip needs dp_args.noise_multiplier')
    out.settings['noise_multiplier'] = noise
    if epsilon is not None:
      out.ignored[epsilon.origin] = ('the epsilon each round reports; '
                                     'dp_solution_type: cdp targets it')


def _switched_sections(reader: _Reader, out: Translation) -> None:
  """attack/defense/FHE: off is honoured (nothing to do); on is an error."""
  for section, (switch, what) in _SWITCHED_SECTIONS.items():
    keys = reader.sections.get(section)
    if not keys:
      continue
    setting = reader.get(switch, sections=(section,))
    if reader.switch(setting):
      raise reader.error(setting.origin, f' is true: {what} is not supported '
                         f'here; set it to false or remove {section}')
    out.claimed.update(f'{section}.{key}' for key in keys)
  if reader.sections.get('task_args'):
    raise reader.error('task_args', ': federated analytics tasks are not '
                       'supported (this project trains models); remove it')
  # FedNova's parameters: federated_optimizer FedNova is refused by name.
  out.claimed.update(f'fednova_args.{k}'
                     for k in reader.sections.get('fednova_args', ()))
  for section, replacement in _WHOLE_SECTIONS.items():
    for key in reader.sections.get(section, ()):
      out.claimed.add(f'{section}.{key}')
      out.ignored[f'{section}.{key}'] = replacement


def translate(raw: Mapping[str, Mapping[str, Any]], path: str) -> Translation:
  """What the FedML-only keys of a parsed config ask for.

  Args:
    raw: The YAML file's sections.
    path: The file, for error messages.

  Returns:
    Option settings, trackers to add, and the keys claimed or ignored.

  Raises:
    UserError: A privacy or feature setting we cannot honour, a typo in a
      privacy section, or two keys meaning the same with different values.
  """
  reader = _Reader(raw, path)
  out = Translation()
  _dp(reader, out, _secure_aggregation(reader, out))
  _switched_sections(reader, out)
  wandb = reader.get('enable_wandb')
  if wandb is not None:
    out.claimed.update(reader.origins('enable_wandb'))
    if reader.switch(wandb):
      out.add_tracking.append('wandb')
  batches = reader.get('batch_num')
  if batches is not None:
    if batches.value not in (-1, None):
      raise reader.error(batches.origin, f'={batches.value}: a limit on '
                         'batches per epoch is not supported; remove it '
                         '(FedML\'s -1: every batch)')
    for origin in reader.origins('batch_num'):
      out.claimed.add(origin)
      out.ignored[origin] = 'every batch of each epoch'
  return out
