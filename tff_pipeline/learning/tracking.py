"""Experiment tracking with MLflow and Weights & Biases, offline.

TensorBoard events come from `metrics_io.MetricsWriter`; this module adds
the trackers FedML users know. Both run with no server and no network:

- MLflow: a local file store, `<output_dir>/mlruns` (`mlflow ui
  --backend-store-uri <output_dir>/mlruns` shows it);
- W&B: an offline run under `<output_dir>/wandb` (`wandb sync
  <output_dir>/wandb/offline-run-*` uploads it, if you want).

Each gets the run's parameters, every round's metrics as
`metrics_io.flat_metrics` gives them (train and eval metrics, epsilon,
failures, bytes per tier, seconds) at step = round, and at the end the
exported model folder and summary.json as artifacts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol

from data_prep.errors import UserError
from tff_pipeline.learning import metrics_io

MLFLOW_DIR = 'mlruns'
WANDB_DIR = 'wandb'
_OUTPUT_DIR_TAG = 'tff_pipeline.output_dir'
_WANDB_RUN_ID = 'run_id'  # In <output_dir>/wandb: the run to resume.


class Tracker(Protocol):
  """Receives a run's rows; `close` logs the artifacts and ends the run."""

  def log_round(self, row: Mapping[str, Any]) -> None:
    ...

  def close(self, artifacts: Sequence[str], failed: bool) -> None:
    ...


def _param_value(value: Any) -> Any:
  return value if isinstance(value, (int, float, str, bool)) else json.dumps(
      value)


class MlflowTracker:
  """One MLflow run in a local file store (resumed with the run)."""

  def __init__(self, output_dir: str, experiment: str, run_name: str,
               params: Mapping[str, Any], resume: bool):
    from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
    from mlflow.entities import Param  # pylint: disable=g-import-not-at-top
    self.uri = 'file:' + os.path.abspath(os.path.join(output_dir, MLFLOW_DIR))
    self._client = MlflowClient(tracking_uri=self.uri)
    found = self._client.get_experiment_by_name(experiment)
    experiment_id = (found.experiment_id if found is not None else
                     self._client.create_experiment(experiment))
    previous = self._client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{_OUTPUT_DIR_TAG}` = "
        f"'{os.path.abspath(output_dir)}'",
        order_by=['attributes.start_time DESC'], max_results=1)
    if resume and previous:
      self.run_id = previous[0].info.run_id
      self._client.update_run(self.run_id, status='RUNNING')
      return
    run = self._client.create_run(
        experiment_id, run_name=run_name,
        tags={_OUTPUT_DIR_TAG: os.path.abspath(output_dir)})
    self.run_id = run.info.run_id
    self._client.log_batch(self.run_id, params=[
        Param(k, str(_param_value(v))) for k, v in sorted(params.items())])

  def log_round(self, row: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric  # pylint: disable=g-import-not-at-top
    now = int(time.time() * 1000)
    self._client.log_batch(self.run_id, metrics=[
        Metric(name, value, now, row['round'])
        for name, value in metrics_io.flat_metrics(row).items()])

  def close(self, artifacts: Sequence[str], failed: bool) -> None:
    for path in artifacts:
      if os.path.isdir(path):
        self._client.log_artifacts(self.run_id, path,
                                   artifact_path=os.path.basename(path))
      elif os.path.isfile(path):
        self._client.log_artifact(self.run_id, path)
    self._client.set_terminated(self.run_id,
                                status='FAILED' if failed else 'FINISHED')


class WandbTracker:
  """One W&B run in offline mode under <output_dir>/wandb."""

  def __init__(self, output_dir: str, project: str, run_name: str,
               params: Mapping[str, Any], resume: bool):
    root = os.path.abspath(os.path.join(output_dir, WANDB_DIR))
    os.makedirs(root, exist_ok=True)
    # W&B keeps caches under $HOME; a coordinator pod may have none writable.
    for variable, folder in (('WANDB_CACHE_DIR', '.cache'),
                             ('WANDB_DATA_DIR', '.data'),
                             ('WANDB_CONFIG_DIR', '.config')):
      os.environ.setdefault(variable, os.path.join(root, folder))
    os.environ.setdefault('WANDB_SILENT', 'true')  # No chatter on stderr.
    import wandb  # pylint: disable=g-import-not-at-top
    id_file = os.path.join(root, _WANDB_RUN_ID)
    run_id = None
    if resume and os.path.exists(id_file):
      with open(id_file, encoding='utf-8') as f:
        run_id = f.read().strip() or None
    self._wandb = wandb
    self.run = wandb.init(
        project=project, name=run_name, dir=os.path.abspath(output_dir),
        # Offline, W&B starts a new run with the same id; `wandb sync`
        # of both folders continues one run.
        mode='offline', config=dict(params), id=run_id,
        # Our stderr keeps its one-line errors: W&B captures no console
        # and samples no system metrics.
        settings=wandb.Settings(console='off', silent=True, disable_git=True,
                                x_disable_stats=True, x_disable_meta=True))
    with open(id_file, 'w', encoding='utf-8') as f:
      f.write(self.run.id)

  def log_round(self, row: Mapping[str, Any]) -> None:
    self.run.log(metrics_io.flat_metrics(row), step=row['round'])

  def close(self, artifacts: Sequence[str], failed: bool) -> None:
    for path in artifacts:
      if not os.path.exists(path):
        continue
      name = os.path.basename(path).replace('.', '_')
      artifact = self._wandb.Artifact(
          name, type='model' if os.path.isdir(path) else 'result')
      if os.path.isdir(path):
        artifact.add_dir(path)
      else:
        artifact.add_file(path)
      self.run.log_artifact(artifact)
    self.run.finish(exit_code=1 if failed else 0)
    # finish() returns before W&B's service has written the run file out;
    # teardown waits for it, so the offline run is complete on return.
    self._wandb.teardown()


class Trackers:
  """Every requested tracker; a hook for the round loop."""

  def __init__(self, trackers: Sequence[Tracker]):
    self.trackers = list(trackers)

  def log_round(self, row: Mapping[str, Any]) -> None:
    for tracker in self.trackers:
      tracker.log_round(row)

  def close(self, artifacts: Sequence[str] = (), failed: bool = False) -> None:
    """Logs the artifacts that exist and ends every run (once)."""
    trackers, self.trackers = self.trackers, []
    for tracker in trackers:
      tracker.close(artifacts, failed)


def build(names: Sequence[str], output_dir: str, params: Mapping[str, Any],
          project: str, run_name: str, resume: bool) -> Trackers:
  """The trackers in `names` ('mlflow', 'wandb'; others are not ours).

  Args:
    names: Requested trackers (--tracking); 'tensorboard' is
      metrics_io.MetricsWriter's and skipped here.
    output_dir: The run's folder; trackers write below it.
    params: The run's parameters (the flat config).
    project: The MLflow experiment and the W&B project.
    run_name: The run's name (empty: the output folder's name).
    resume: Continue the run's MLflow and W&B runs rather than start new ones.
  """
  run_name = run_name or os.path.basename(os.path.normpath(output_dir))
  trackers: list[Tracker] = []
  kinds = (('mlflow', MlflowTracker, 'mlflow-skinny'),
           ('wandb', WandbTracker, 'wandb'))
  for name, kind, package in kinds:
    if name not in names:
      continue
    try:
      trackers.append(kind(output_dir, project, run_name, params, resume))
    except ImportError as e:
      Trackers(trackers).close(failed=True)
      raise UserError(f'--tracking={name} needs the {package} package ({e}); '
                      'install requirements.txt (./setup.sh) or drop '
                      f'{name} from --tracking') from None
  return Trackers(trackers)


def read_mlflow_metrics(output_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{metric: [(step, value), ...]} of the run in <output_dir>/mlruns."""
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  client = MlflowClient(tracking_uri='file:' + os.path.abspath(
      os.path.join(output_dir, MLFLOW_DIR)))
  runs = client.search_runs(
      [e.experiment_id for e in client.search_experiments()],
      filter_string=f"tags.`{_OUTPUT_DIR_TAG}` = "
      f"'{os.path.abspath(output_dir)}'")
  if not runs:
    return {}
  run = runs[0]
  return {name: sorted((m.step, m.value)
                       for m in client.get_metric_history(run.info.run_id, name))
          for name in run.data.metrics}


def read_wandb_offline_run(run_file: str) -> dict[str, Any]:
  """The records of an offline W&B run file (run-<id>.wandb), by kind.

  Returns:
    {'run': the run record, 'history': [{key: value} per logged step],
     'artifacts': [(name, type, [file paths])], 'config': {key: value}}.
  """
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  from wandb.sdk.internal import datastore  # pylint: disable=g-import-not-at-top
  store = datastore.DataStore()
  store.open_for_scan(run_file)
  out: dict[str, Any] = {'run': None, 'history': [], 'artifacts': [],
                         'config': {}}
  while True:
    data = store.scan_data()
    if data is None:
      break
    record = wandb_internal_pb2.Record()
    record.ParseFromString(data)
    kind = record.WhichOneof('record_type')
    if kind == 'run':
      out['run'] = record.run
      out['config'].update({item.key: json.loads(item.value_json)
                            for item in record.run.config.update})
    elif kind == 'history':
      out['history'].append({
          item.key or '/'.join(item.nested_key): json.loads(item.value_json)
          for item in record.history.item})
    elif kind == 'artifact':
      out['artifacts'].append((record.artifact.name, record.artifact.type,
                               [e.path for e in
                                record.artifact.manifest.contents]))
  return out
