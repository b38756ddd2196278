"""Training configuration: defaults, FedML-style YAML, and validation.

One `TrainConfig` field per command-line flag. Each field's metadata names its
YAML section (FedML's `common_args`, `data_args`, ...), its help text, allowed
values, and the FedML key names accepted as aliases, so that flags, YAML and
`--helpfull` cannot drift apart.

Precedence: defaults < YAML file (`--config`) < flags given on the command line.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

import yaml

from data_prep.errors import UserError
from data_prep.errors import did_you_mean

SECTIONS = (
    'common_args',
    'data_args',
    'model_args',
    'train_args',
    'validation_args',
    'device_args',
    'comm_args',
    'tracking_args',
)

# Task, model, aggregator and optimizer names live in their registries
# (tff_pipeline.tasks.registry, the task families,
# tff_pipeline.aggregation.registry, tff_pipeline.learning.optimizers);
# tff_pipeline.plan checks them. Only these fixed choices live here.
PARTITIONS = ('iid', 'dirichlet', 'natural')
ALGORITHMS = ('fedavg', 'fedprox')
EXECUTORS = ('local', 'remote')
CLIENT_SAMPLINGS = ('auto', 'uniform', 'poisson')
PRECISIONS = ('fp32', 'bf16')


def _opt(
    default: Any,
    section: str,
    help_text: str,
    choices: Optional[tuple[str, ...]] = None,
    fedml: tuple[str, ...] = (),
    check: Optional[Callable[[Any], Optional[str]]] = None,
    names: Optional[str] = None,
) -> Any:
  """A config field with the metadata that flags and YAML are built from.

  `names` marks a field whose value is a name from a registry above this
  layer ('tasks', 'models', 'aggregators', 'optimizers'): case-insensitive
  (unless it is a package.module:name), checked by tff_pipeline.plan.
  """
  assert section in SECTIONS, section
  return dataclasses.field(
      default=default,
      metadata={
          'section': section,
          'help': help_text,
          'choices': choices,
          'fedml': fedml,
          'check': check,
          'names': names,
      },
  )


def _at_least(lower: float) -> Callable[[Any], Optional[str]]:
  return lambda v: None if v >= lower else f'must be >= {lower}, got {v}'


def _positive(v: Any) -> Optional[str]:
  return None if v > 0 else f'must be > 0, got {v}'


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs; field names are the flag names."""

  # common_args
  seed: int = _opt(
      0, 'common_args',
      'Seed for partitioning, initial weights, client sampling and shuffling.',
      fedml=('common_args.random_seed',), check=_at_least(0))
  # data_args
  task: str = _opt(
      'fashion_mnist', 'data_args',
      'Training scenario: a built-in task or package.module:name (your own '
      'task family).', fedml=('data_args.dataset',), names='tasks')
  data_dir: str = _opt(
      '', 'data_args',
      'Folder with the raw dataset files (idx gz for image tasks). Empty: the '
      "task's default location (fashion_mnist: /usr/share/datasets/fashion-mnist).",
      fedml=('data_args.data_cache_dir',))
  shard_dir: str = _opt(
      '', 'data_args',
      'Folder for per-client shards written by data_prep. Empty: a folder under '
      '$TFF_PIPELINE_CACHE (default ~/.cache/tff_pipeline) named after the '
      'task and partition.')
  emnist_subset: str = _opt(
      'auto', 'data_args',
      'EMNIST subset (digits, letters, balanced, bymerge, byclass, mnist); '
      '"auto" takes the single subset found in --data_dir.',
      choices=('auto', 'digits', 'letters', 'balanced', 'bymerge', 'byclass',
               'mnist'))
  num_clients: int = _opt(
      100, 'data_args',
      'Number of clients the training data is split into; with '
      '--partition=natural, keep the N largest owners (0: all of them).',
      fedml=('train_args.client_num_in_total',), check=_at_least(0))
  partition: str = _opt(
      'dirichlet', 'data_args',
      'How data is split over clients: iid, dirichlet (FedML "hetero"; see '
      '--partition_alpha) or natural (by owner, where the data has owners).',
      choices=PARTITIONS, fedml=('data_args.partition_method',))
  partition_alpha: float = _opt(
      0.5, 'data_args',
      'Dirichlet concentration for --partition=dirichlet; smaller is more '
      'heterogeneous.', check=_positive)
  # model_args
  model: str = _opt('cnn', 'model_args',
                    'Model: image tasks take cnn (TFF EMNIST conv-dropout), '
                    '2nn (200-200 MLP), lr (logistic regression) or '
                    'package.module:function (your own Keras classifier, '
                    'function(input_shape, num_classes)); other tasks name '
                    'their own.', names='models')
  precision: str = _opt(
      'fp32', 'model_args',
      'Client and evaluation compute: fp32, or bf16 (Keras mixed_bfloat16: '
      'bfloat16 layers, float32 variables, output layer, updates and '
      'aggregation).', choices=PRECISIONS)
  # train_args
  algorithm: str = _opt(
      'fedavg', 'train_args',
      'Federated algorithm: fedavg (weighted FedAvg / FedOpt with '
      '--server_optimizer) or fedprox (see --fedprox_mu).',
      choices=ALGORITHMS, fedml=('train_args.federated_optimizer',))
  rounds: int = _opt(30, 'train_args', 'Number of training rounds.',
                     fedml=('train_args.comm_round',), check=_at_least(1))
  clients_per_round: int = _opt(
      10, 'train_args', 'Clients sampled (seeded) per round; with '
      '--client_sampling=poisson, the expected number.',
      fedml=('train_args.client_num_per_round',), check=_at_least(1))
  client_sampling: str = _opt(
      'auto', 'train_args',
      'uniform: exactly --clients_per_round clients without replacement; '
      'poisson: each client independently with probability '
      'clients_per_round/num_clients (what DP accounting analyses best); '
      'auto: poisson with a DP aggregator, uniform otherwise.',
      choices=CLIENT_SAMPLINGS)
  client_epochs: int = _opt(1, 'train_args',
                            'Local epochs over each client dataset per round.',
                            fedml=('train_args.epochs',), check=_at_least(1))
  client_batch_size: int = _opt(20, 'train_args', 'Client batch size.',
                                fedml=('train_args.batch_size',), check=_at_least(1))
  client_optimizer: str = _opt('sgd', 'train_args', 'Client optimizer.',
                               names='optimizers')
  client_learning_rate: float = _opt(0.1, 'train_args',
                                     'Client learning rate.',
                                     fedml=('train_args.learning_rate', 'train_args.lr'),
                                     check=_positive)
  client_momentum: float = _opt(0.9, 'train_args',
                                'Momentum for --client_optimizer=sgdm.',
                                check=_at_least(0.0))
  weight_decay: float = _opt(
      0.0, 'train_args',
      'L2 weight decay on the client (same meaning as torch SGD weight_decay).',
      fedml=('train_args.wd',), check=_at_least(0.0))
  server_optimizer: str = _opt('sgd', 'train_args',
                               'Server optimizer (FedOpt).',
                               names='optimizers')
  server_learning_rate: float = _opt(1.0, 'train_args',
                                     'Server learning rate.',
                                     fedml=('train_args.server_lr',), check=_positive)
  server_momentum: float = _opt(0.9, 'train_args',
                                'Momentum for --server_optimizer=sgdm.',
                                check=_at_least(0.0))
  aggregator: str = _opt(
      'mean', 'train_args',
      'How client updates are combined: mean (weighted, plain), secagg '
      '(unweighted mean of --clip-clipped updates under pairwise-mask secure '
      'aggregation), dp_fixed / dp_adaptive (DP-FedAvg: Gaussian noise, fixed '
      'or quantile-adaptive clipping), secagg_dp (dp_fixed over secagg).',
      names='aggregators')
  clip: float = _opt(
      1.0, 'train_args',
      'L2 norm bound of each client update for secagg, dp_fixed and '
      'secagg_dp; the initial bound for dp_adaptive.', check=_positive)
  secagg_bits: int = _opt(
      32, 'train_args',
      'Fixed-point bits per coordinate of a securely summed update (Z_2^b).',
      check=lambda v: None if 8 <= v <= 48 else f'must be in [8, 48], got {v}')
  noise_multiplier: float = _opt(
      1.0, 'train_args',
      'DP noise stddev / clip (dp_* and secagg_dp); ignored when '
      '--target_epsilon is set.', check=_at_least(0.0))
  target_epsilon: float = _opt(
      0.0, 'train_args',
      'If > 0: choose the noise multiplier so the whole run is '
      '(target_epsilon, --delta)-DP, before training starts.',
      check=_at_least(0.0))
  delta: float = _opt(
      1e-5, 'train_args', 'The delta that epsilon is reported at.',
      check=lambda v: None if 0 < v < 1 else f'must be in (0, 1), got {v}')
  target_unclipped_quantile: float = _opt(
      0.5, 'train_args',
      'dp_adaptive: the fraction of updates the adaptive clip leaves unclipped.',
      check=lambda v: None if 0 < v < 1 else f'must be in (0, 1), got {v}')
  fedprox_mu: float = _opt(0.01, 'train_args',
                           'FedProx proximal strength (with --algorithm=fedprox).',
                           fedml=('train_args.mu',), check=_at_least(0.0))
  # validation_args
  eval_every: int = _opt(
      5, 'validation_args',
      'Evaluate the global model on the held-out split every N rounds (and '
      'always after the last round); 0 evaluates only after the last round.',
      fedml=('validation_args.frequency_of_the_test',), check=_at_least(0))
  eval_batch_size: int = _opt(500, 'validation_args',
                              'Batch size for evaluation.', check=_at_least(1))
  # device_args
  executor: str = _opt('local', 'device_args',
                       'Where client work runs: local (the TFF C++ runtime in '
                       'this process tree) or remote (the edge pods of '
                       '--topology, through their edge servers).',
                       choices=EXECUTORS)
  topology: str = _opt(
      '', 'device_args',
      'With --executor=remote: the topology YAML (edge servers, their pods, '
      'eval_data); `python -m workers.local_cluster` writes one.',
      fedml=('comm_args.grpc_ipconfig_path',))
  tls_dir: str = _opt(
      '', 'comm_args',
      'With --executor=remote: folder with ca.crt, coordinator.crt and '
      'coordinator.key for mutual TLS to the edge servers (empty: the '
      "topology's tls_dir; none there: insecure channels).")
  round_timeout: float = _opt(
      0.0, 'device_args',
      'With --executor=remote: seconds a pod may take for its part of a '
      'round before it is dropped from the round (0: no limit).',
      check=_at_least(0.0))
  round_retries: int = _opt(
      3, 'device_args',
      'With --executor=remote: how often a round in which no pod succeeded '
      'is retried (after 5 s) before the run stops.', check=_at_least(0))
  # tracking_args
  output_dir: str = _opt(
      '', 'tracking_args',
      'Where metrics.jsonl, summary.json, TensorBoard events and checkpoints '
      'go. Empty: a new folder runs/<task>-<date>-<time>.')
  resume: bool = _opt(
      False, 'tracking_args',
      'Continue from the last checkpoint in --output_dir (after a crash or '
      'kill); the result equals an uninterrupted run.')
  keep_checkpoints: int = _opt(3, 'tracking_args',
                               'How many round checkpoints to keep.',
                               check=_at_least(1))
  progress: bool = _opt(True, 'tracking_args',
                        'Show a live progress line on the terminal.')
  metrics_port: int = _opt(
      0, 'tracking_args',
      'Serve Prometheus /metrics on this port while training (round, eval '
      'metrics, epsilon, failures, bytes; see workers/metrics.py); 0: off.',
      check=lambda v: None if 0 <= v <= 65535 else
      f'must be a port in [0, 65535], got {v}')


OPTION_FIELDS: dict[str, dataclasses.Field] = {
    f.name: f for f in dataclasses.fields(TrainConfig)
}

# FedML's value spellings, per option: FedML value (lower-cased) -> ours.
_FEDML_VALUES: dict[str, dict[str, str]] = {
    'task': {'fmnist': 'fashion_mnist', 'fashionmnist': 'fashion_mnist',
             'femnist': 'emnist', 'fed_shakespeare': 'shakespeare',
             'stackoverflow_lr': 'stackoverflow_tag',
             'movielens_100k': 'movielens', 'ml-100k': 'movielens'},
    'partition': {'hetero': 'dirichlet', 'homo': 'iid'},
    'algorithm': {'fedopt': 'fedavg'},
}

# FedML keys about its own deployment: ignored, with what replaces them here.
_IGNORED_FEDML_KEYS: dict[str, str] = {
    'common_args.training_type': '--executor (local or remote)',
    'common_args.scenario': '--executor',
    'common_args.using_mlops': 'metrics.jsonl and TensorBoard in --output_dir',
    'common_args.config_version': 'nothing (one config format)',
    'data_args.data_file_path': '--data_dir',
    'train_args.client_id_list': 'seeded sampling (--seed)',
    'train_args.sleep_time_max': 'nothing',
    'train_args.ci': 'nothing',
    'device_args.worker_num': 'executor pods in the topology',
    'device_args.using_gpu': 'nothing (TensorFlow picks devices)',
    'device_args.gpu_mapping_file': 'nothing (TensorFlow picks devices)',
    'device_args.gpu_mapping_key': 'nothing (TensorFlow picks devices)',
    'device_args.gpu_id': 'nothing (TensorFlow picks devices)',
    'device_args.device_type': 'nothing (TensorFlow picks devices)',
    'device_args.process_num': 'executor pods in the topology',
    'comm_args.backend': 'TFF gRPC executors (--executor)',
    'comm_args.is_mobile': 'nothing',
    'comm_args.mqtt_config_path': 'TFF gRPC executors (--executor)',
    'comm_args.s3_config_path': 'TFF gRPC executors (--executor)',
    'comm_args.trpc_master_config_path': 'the topology file',
    'tracking_args.log_file_dir': '--output_dir',
    'tracking_args.enable_tracking': 'metrics.jsonl and TensorBoard',
    'tracking_args.log_server_url': 'metrics.jsonl and TensorBoard',
    'tracking_args.enable_wandb': 'TensorBoard event files in --output_dir',
}
_IGNORED_PREFIXES: dict[str, str] = {
    'wandb_': 'TensorBoard event files in --output_dir',
    'mlops_': 'metrics.jsonl and TensorBoard in --output_dir',
}


@dataclasses.dataclass(frozen=True)
class YamlOverrides:
  """Values read from a YAML config, keyed by option name."""

  values: dict[str, Any]
  ignored: dict[str, str]  # 'section.key' -> what to use instead

  def warning(self) -> Optional[str]:
    """One warning naming every ignored FedML key and our equivalent."""
    if not self.ignored:
      return None
    parts = [f'{k} (use {v})' for k, v in sorted(self.ignored.items())]
    return ('ignoring FedML deployment keys that do not apply here: ' +
            '; '.join(parts))


def _ignored_equivalent(section: str, key: str) -> Optional[str]:
  dotted = f'{section}.{key}'
  if dotted in _IGNORED_FEDML_KEYS:
    return _IGNORED_FEDML_KEYS[dotted]
  for prefix, equivalent in _IGNORED_PREFIXES.items():
    if key.startswith(prefix):
      return equivalent
  return None


def _option_for_key(section: str, key: str) -> Optional[str]:
  """Maps a YAML key in a section to an option name (ours or FedML's)."""
  field = OPTION_FIELDS.get(key)
  if field is not None and field.metadata['section'] == section:
    return key
  for name, f in OPTION_FIELDS.items():
    if f'{section}.{key}' in f.metadata['fedml']:
      return name
  return None


def _coerce(name: str, value: Any, where: str) -> Any:
  """Converts a raw (flag or YAML) value to the option's type and spelling."""
  field = OPTION_FIELDS[name]
  kind = type(field.default)
  if kind is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ('true', 'false'):
      return value.lower() == 'true'
    raise UserError(f'{where}: expected true or false, got {value!r}')
  if kind is int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
      raise UserError(f'{where}: expected an integer, got {value!r}')
    try:
      return int(value)
    except ValueError:
      raise UserError(f'{where}: expected an integer, got {value!r}') from None
  if kind is float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
      raise UserError(f'{where}: expected a number, got {value!r}')
    try:
      return float(value)
    except ValueError:
      raise UserError(f'{where}: expected a number, got {value!r}') from None
  if value is None:
    return ''
  if not isinstance(value, (str, int, float)):
    raise UserError(f'{where}: expected a string, got {value!r}')
  text = str(value)
  names = field.metadata['names']
  if field.metadata['choices'] is not None or (names and ':' not in text):
    lowered = text.lower()
    return _FEDML_VALUES.get(name, {}).get(lowered, lowered)
  if name in ('data_dir', 'shard_dir', 'output_dir'):
    return os.path.expanduser(text)
  return text


def parse_yaml(path: str) -> YamlOverrides:
  """Reads a FedML-style YAML config into option values.

  Args:
    path: The YAML file.

  Returns:
    The values it sets and the FedML deployment keys it ignores.

  Raises:
    UserError: The file is missing or not YAML, or has an unknown section or
      key, or a value of the wrong type.
  """
  try:
    with open(path, encoding='utf-8') as f:
      raw = yaml.safe_load(f)
  except FileNotFoundError:
    raise UserError(f'config file {path} does not exist; check --config') from None
  except yaml.YAMLError as e:
    mark = getattr(e, 'problem_mark', None)
    where = f' line {mark.line + 1}' if mark is not None else ''
    problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
    raise UserError(f'config file {path}{where} is not valid YAML: {problem}; '
                    'fix the file') from None
  if raw is None:
    raw = {}
  if not isinstance(raw, Mapping):
    raise UserError(f'config file {path} must be a mapping of sections '
                    f'({", ".join(SECTIONS)})')
  values: dict[str, Any] = {}
  ignored: dict[str, str] = {}
  origin: dict[str, str] = {}
  for section, entries in raw.items():
    if section not in SECTIONS:
      hint = did_you_mean(str(section), SECTIONS)
      raise UserError(f'config file {path}: unknown section {section!r}'
                      f'{hint}; sections are {", ".join(SECTIONS)}')
    if entries is None:
      continue
    if not isinstance(entries, Mapping):
      raise UserError(f'config file {path}: section {section} must be a mapping '
                      'of key: value')
    for key, value in entries.items():
      key = str(key)
      where = f'config file {path}: {section}.{key}'
      name = _option_for_key(section, key)
      if name is None:
        equivalent = _ignored_equivalent(section, key)
        if equivalent is not None:
          ignored[f'{section}.{key}'] = equivalent
          continue
        field = OPTION_FIELDS.get(key)
        if field is not None:
          raise UserError(f'{where}: {key} belongs in section '
                          f'{field.metadata["section"]}; move it there')
        known = [n for n, f in OPTION_FIELDS.items()
                 if f.metadata['section'] == section]
        known += [a.split('.', 1)[1] for f in OPTION_FIELDS.values()
                  for a in f.metadata['fedml'] if a.startswith(section + '.')]
        hint = did_you_mean(key, known)
        raise UserError(f'{where}: unknown key{hint}; known keys in {section}: '
                        f'{", ".join(sorted(set(known)))}')
      if name in values and origin[name] != key:
        raise UserError(f'{where}: sets {name} again (already set by '
                        f'{origin[name]}); keep one of them')
      values[name] = _coerce(name, value, where)
      origin[name] = key
  return YamlOverrides(values=values, ignored=ignored)





def requested_task(yaml_values: Mapping[str, Any],
                   flag_values: Mapping[str, Any]) -> str:
  """The task a run asks for (flag over YAML over default), coerced."""
  if 'task' in flag_values:
    return _coerce('task', flag_values['task'], '--task')
  return yaml_values.get('task', TrainConfig.task)


def resolve(yaml_values: Mapping[str, Any],
            flag_values: Mapping[str, Any],
            task_defaults: Optional[Mapping[str, Any]] = None) -> TrainConfig:
  """Builds and validates a config: defaults < task < YAML < flags.

  Args:
    yaml_values: Option values from `parse_yaml`.
    flag_values: Option values given explicitly on the command line.
    task_defaults: The task's own defaults (its family's `defaults`).

  Returns:
    A validated `TrainConfig`.

  Raises:
    UserError: A value is out of range or the combination is inconsistent.
  """
  merged: dict[str, Any] = dict(yaml_values)
  for name, value in flag_values.items():
    merged[name] = _coerce(name, value, f'--{name}')
  if not merged.get('output_dir'):
    if merged.get('resume'):
      raise UserError('--resume needs --output_dir: the folder of the run to '
                      'continue')
    task = merged.get('task', TrainConfig.task)
    merged['output_dir'] = os.path.join(
        'runs', f'{task}-{time.strftime("%Y%m%d-%H%M%S")}')
  merged = {**(task_defaults or {}), **merged}
  config = TrainConfig(**merged)
  validate(config)
  return config


def validate(config: TrainConfig) -> None:
  """Raises `UserError` naming the first bad value and its fix."""
  for name, field in OPTION_FIELDS.items():
    value = getattr(config, name)
    choices = field.metadata['choices']
    if choices is not None and value not in choices:
      hint = did_you_mean(value, choices)
      raise UserError(f'--{name}={value} is not supported{hint}; choose one of '
                      f'{", ".join(choices)}')
    check = field.metadata['check']
    problem = check(value) if check is not None else None
    if problem:
      raise UserError(f'--{name} {problem}')
  if config.num_clients == 0 and config.partition != 'natural':
    raise UserError('--num_clients=0 (all owners) needs --partition=natural; '
                    'give a number of clients')
  if config.executor == 'remote' and not config.topology:
    raise UserError('--executor=remote needs --topology=<file>; start a '
                    'cluster with `python -m workers.local_cluster '
                    '--topology_out=topology.yaml` or write one')
  if config.num_clients and config.clients_per_round > config.num_clients:
    raise UserError(
        f'--clients_per_round={config.clients_per_round} is greater than '
        f'--num_clients={config.num_clients}; lower it or raise --num_clients')


def to_dict(config: TrainConfig) -> dict[str, Any]:
  return dataclasses.asdict(config)


def to_yaml_sections(config: TrainConfig) -> dict[str, dict[str, Any]]:
  """The config as FedML-style sections (our key names)."""
  out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
  for name, field in OPTION_FIELDS.items():
    out[field.metadata['section']][name] = getattr(config, name)
  return {s: v for s, v in out.items() if v}
