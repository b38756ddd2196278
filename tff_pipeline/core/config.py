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
from tff_pipeline.core import fedml
from workers import liveness

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
TRACKERS = ('tensorboard', 'mlflow', 'wandb')
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


def tracker_names(value: str) -> list[str]:
  """--tracking as a list ('none' or empty: no tracker)."""
  names = [n.strip().lower() for n in value.split(',') if n.strip()]
  return [] if names == ['none'] else names


def _trackers(value: str) -> Optional[str]:
  for name in tracker_names(value):
    if name not in TRACKERS:
      return (f'has {name!r}{did_you_mean(name, TRACKERS)}; give a '
              f'comma-separated subset of {", ".join(TRACKERS)}, or none')
  return None


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
  label_column: str = _opt(
      '', 'data_args',
      '--task=csv: the column holding the class (any values); every other '
      'numeric column is a feature.')
  client_column: str = _opt(
      '', 'data_args',
      "--task=csv: the column naming each row's client; its distinct values "
      'are the clients (the natural partition; --num_clients=N keeps the N '
      'largest, 0 all). Without it the rows are split by --partition.')
  eval_fraction: float = _opt(
      0.1, 'data_args',
      '--task=csv and image_folder: the share of each client\'s examples '
      'held out for evaluation (seeded), unless --eval_data is given.',
      check=lambda v: None if 0 <= v < 1 else f'must be in [0, 1), got {v}')
  eval_data: str = _opt(
      '', 'data_args',
      '--task=csv: a CSV file of held-out rows (the same columns); '
      '--task=image_folder: a folder of <label>/<image> files. Replaces '
      '--eval_fraction.')
  image_size: int = _opt(
      0, 'data_args',
      '--task=image_folder: resize every image to N x N pixels (0: keep '
      'their size, which must then be the same for all).',
      check=_at_least(0))
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
      '(the same weighted mean under SecAgg+ secure aggregation, with an '
      'adaptive clip that does not bite), dp_fixed / dp_adaptive (DP-FedAvg: '
      'Gaussian noise, fixed or quantile-adaptive clipping), secagg_dp '
      '(dp_fixed over a secure sum), distributed_dp (each client adds its '
      'share of Skellam noise before the secure sum: no server sees an '
      'un-noised sum).',
      names='aggregators')
  clip: float = _opt(
      1.0, 'train_args',
      'L2 norm bound of each client update for dp_fixed and secagg_dp; the '
      'initial bound for dp_adaptive (secagg adapts its own clip).',
      check=_positive)
  secagg_bits: int = _opt(
      0, 'train_args',
      'Fixed-point bits per coordinate of a securely summed update (Z_2^b). '
      '0: 32 for secagg and secagg_dp; for distributed_dp the fewest that '
      'keep rounding within 1% of the signal for --clients_per_round '
      '(docs/privacy.md).',
      check=lambda v: None if v == 0 or 8 <= v <= 48 else
      f'must be 0 (auto) or in [8, 48], got {v}')
  secagg_threshold: int = _opt(
      3, 'train_args',
      'Secure aggregation (SecAgg+): the fewest parties whose inputs a '
      'released sum may cover (parties: the edge pods; on the local runtime, '
      'the clients). Smaller rounds are skipped and nothing is released. The '
      'pods enforce their own --secagg_threshold; a remote run refuses pods '
      'that accept fewer than this.', check=_at_least(2))
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
                              'Batch size for evaluation.', check=_at_least(1),
                              fedml=('train_args.eval_batch_size',))
  # device_args
  executor: str = _opt('local', 'device_args',
                       'Where client work runs: local (the TFF C++ runtime in '
                       'this process tree) or remote (the edge pods of '
                       '--topology, through their edge servers).',
                       choices=EXECUTORS)
  topology: str = _opt(
      '', 'device_args',
      'With --executor=remote: the topology YAML (edge servers, their pods, '
      'eval_data); `python -m workers.local_cluster` writes one.')
  tls_dir: str = _opt(
      '', 'comm_args',
      'With --executor=remote: folder with ca.crt, coordinator.crt and '
      'coordinator.key for mutual TLS to the edge servers (empty: the '
      "topology's tls_dir; none there: the run refuses to start unless "
      '--insecure).')
  insecure: bool = _opt(
      False, 'comm_args',
      'With --executor=remote and no TLS directory: talk to the edge servers '
      'in plaintext (a warning each round). Only for a trusted network.')
  round_timeout: float = _opt(
      600.0, 'device_args',
      'With --executor=remote: seconds a pod may take for its part of a '
      'round before it is dropped from the round (0: no limit).',
      check=_at_least(0.0))
  liveness_timeout: float = _opt(
      liveness.DEFAULT_SILENCE_TIMEOUT_SECONDS, 'device_args',
      'With --executor=remote: seconds an edge server may go without '
      'answering a ping while the coordinator waits on it before it is '
      'dropped from the round (at start-up: the run stops; 0: only '
      '--round_timeout bounds the wait).',
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
  log_participants: bool = _opt(
      False, 'tracking_args',
      'DP runs: write the sampled client ids to the outputs (by default '
      'only counts). The sample is then public, so epsilon is reported '
      'without amplification by sampling (larger; --target_epsilon '
      'calibrates for it).')
  progress: bool = _opt(
      True, 'tracking_args',
      'One line per round (round, loss, accuracy, epsilon, failures, '
      'seconds): rewritten in place on a terminal, appended otherwise (logs, '
      '`kubectl logs -f`); false: none.')
  tracking: str = _opt(
      'tensorboard', 'tracking_args',
      'Where params, per-round metrics and the exported model go besides '
      'metrics.jsonl, comma-separated: tensorboard (<output_dir>/tensorboard), '
      'mlflow (a local file store, <output_dir>/mlruns), wandb (an offline '
      'run, <output_dir>/wandb); none for none. FedML: '
      'tracking_args.enable_wandb adds wandb.', check=_trackers)
  wandb_project: str = _opt(
      'tff_pipeline', 'tracking_args', 'W&B project of the offline run.',
      fedml=('tracking_args.wandb_project',))
  wandb_name: str = _opt(
      '', 'tracking_args',
      "W&B run name (empty: the --output_dir folder's name).",
      fedml=('tracking_args.wandb_name', 'tracking_args.run_name'))
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
    'model': {'resnet18_gn': 'resnet18'},
    'partition': {'hetero': 'dirichlet', 'homo': 'iid'},
    # LSA / SA: FedAvg under secure aggregation (see fedml.translate).
    'algorithm': {'fedopt': 'fedavg', 'fedavg_seq': 'fedavg',
                  'fedopt_seq': 'fedavg', 'lsa': 'fedavg', 'sa': 'fedavg'},
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
    by_replacement: dict[str, list[str]] = {}
    for key, replacement in sorted(self.ignored.items()):
      by_replacement.setdefault(replacement, []).append(key)
    parts = [f'{", ".join(keys)} (use {replacement})'
             for replacement, keys in by_replacement.items()]
    return ("ignoring FedML keys about FedML's own machinery: " +
            '; '.join(parts))


def _option_for_key(section: str, key: str) -> Optional[str]:
  """Maps a YAML key to an option name: ours in its section, or FedML's.

  FedML flattens its sections (a key means the same in any of them), so a
  FedML key name is taken in any section; ours belong in their own.
  """
  field = OPTION_FIELDS.get(key)
  if field is not None and field.metadata['section'] == section:
    return key
  for name, f in OPTION_FIELDS.items():
    if any(alias.split('.', 1)[1] == key for alias in f.metadata['fedml']):
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
  if name == 'tracking' and isinstance(value, list):  # YAML [mlflow, wandb]
    value = ','.join(str(v) for v in value)
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
    The values it sets (FedML's privacy and tracking intent included, see
    `fedml.translate`) and the FedML machinery keys it ignores.

  Raises:
    UserError: The file is missing or not YAML, or has an unknown section or
      key, a value of the wrong type, two keys setting one option to
      different values, or FedML intent we cannot honour.
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
  known_sections = SECTIONS + fedml.SECTIONS
  for section, entries in raw.items():
    if section not in known_sections:
      hint = did_you_mean(str(section), known_sections)
      raise UserError(f'config file {path}: unknown section {section!r}'
                      f'{hint}; sections are {", ".join(known_sections)}')
    if entries is not None and not isinstance(entries, Mapping):
      raise UserError(f'config file {path}: section {section} must be a mapping '
                      'of key: value')
  translation = fedml.translate(raw, path)
  values: dict[str, Any] = {}
  origin: dict[str, str] = {}
  ignored: dict[str, str] = dict(translation.ignored)

  def set_option(name: str, value: Any, where: str) -> None:
    value = _coerce(name, value, f'config file {path}: {where}')
    if name in values and values[name] != value:
      raise UserError(
          f'config file {path}: {where}={value!r} and {origin[name]}='
          f'{values[name]!r} both set {name}, differently; keep one of them')
    values.setdefault(name, value)
    origin.setdefault(name, where)

  for section, entries in raw.items():
    for key, value in (entries or {}).items():
      key = str(key)
      where = f'{section}.{key}'
      if where in translation.claimed:
        continue
      name = _option_for_key(section, key)
      if name is not None:
        set_option(name, value, where)
        continue
      replacement = fedml.machinery_replacement(key)
      if replacement is not None:
        ignored[where] = replacement
        continue
      field = OPTION_FIELDS.get(key)
      if field is not None:
        raise UserError(f'config file {path}: {where}: {key} belongs in '
                        f'section {field.metadata["section"]}; move it there')
      known = [n for n, f in OPTION_FIELDS.items()
               if f.metadata['section'] == section]
      known += [a.split('.', 1)[1] for f in OPTION_FIELDS.values()
                for a in f.metadata['fedml'] if a.startswith(section + '.')]
      hint = did_you_mean(key, known or list(OPTION_FIELDS))
      listing = (f'known keys in {section}: {", ".join(sorted(set(known)))}'
                 if known else f'{section} holds no key we use')
      raise UserError(f'config file {path}: {where}: unknown key{hint}; '
                      f'{listing}')
  for name, setting in translation.settings.items():
    set_option(name, setting.value, setting.origin)
  if translation.add_tracking:
    trackers = tracker_names(values.get('tracking', TrainConfig.tracking))
    values['tracking'] = ','.join(
        trackers + [t for t in translation.add_tracking if t not in trackers])
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
