"""A deployable model out of every run: Keras SavedModel and TFLite.

`write_model` writes `<model_dir>/saved_model/` (the Keras model in TF's
SavedModel format, with a `serving_default` signature on a batch of inputs,
inference mode) and `<model_dir>/model.tflite` (converted from that
SavedModel with TFLite's builtin ops or, where those do not suffice (e.g.
LSTMs), with Select TF ops too, which need TFLite's Flex delegate). A model
TFLite cannot convert keeps its SavedModel and gets one line saying why, in
`<model_dir>/export.json` and in the returned `Exported`.
`tff_pipeline.api.run` calls it after the last round; `python -m
tff_pipeline.export` does the same from any round's checkpoint
(`tff_pipeline.api.export`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Optional

import tensorflow as tf

from tff_pipeline.tasks import base as task_base

MODEL_DIR = 'model'
SAVED_MODEL_DIR = 'saved_model'
TFLITE_FILE = 'model.tflite'
REPORT_FILE = 'export.json'
SIGNATURE = 'serving_default'
INPUT_NAME = 'inputs'
BUILTINS = 'builtins'
BUILTINS_AND_TF = 'builtins+select_tf_ops'
OUTPUT_NAME = 'outputs'


@dataclasses.dataclass(frozen=True)
class Exported:
  """What `write_model` wrote.

  Attributes:
    saved_model: The SavedModel folder.
    tflite: The .tflite file, or None when conversion failed.
    tflite_ops: BUILTINS, or BUILTINS_AND_TF when the file needs TFLite's
      Flex delegate (Select TF ops); None without a file.
    tflite_problem: Why there is no .tflite (one line), or None.
    round: The round whose global model this is (None if unknown).
    seconds: Wall time of the export.
  """
  saved_model: str
  tflite: Optional[str]
  tflite_ops: Optional[str]
  tflite_problem: Optional[str]
  round: Optional[int]
  seconds: float

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _one_line(error: BaseException) -> str:
  """The converter's first error, without MLIR's source locations."""
  for line in str(error).splitlines():
    if 'error:' in line:
      message = line.split('error:', 1)[1]
      # "loc(callsite(... at ...)): 'tf.Op' op ..." -> "'tf.Op' op ...".
      message = message.rsplit(')): ', 1)[-1]
      return ' '.join(message.split())[:300]
  return f'{type(error).__name__}: {" ".join(str(error).split())[:300]}'


def _convert(saved_model: str) -> tuple[Optional[bytes], Optional[str],
                                         Optional[str]]:
  """(flatbuffer, ops it needs, None) or (None, None, why not).

  TFLite's builtin ops first; failing that (e.g. LSTMs over a dynamic
  batch), builtins plus Select TF ops, which the device runs with TFLite's
  Flex delegate (Python's tf.lite.Interpreter has it).
  """
  problem = None
  for ops in (BUILTINS, BUILTINS_AND_TF):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model, signature_keys=[SIGNATURE])
    if ops == BUILTINS_AND_TF:
      converter.target_spec.supported_ops = [
          tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
      # Keeps TensorList ops (RNN loops) as TF ops instead of failing.
      converter._experimental_lower_tensor_list_ops = False  # pylint: disable=protected-access
    try:
      return converter.convert(), ops, None
    except Exception as e:  # pylint: disable=broad-except
      problem = problem or _one_line(e)
  return None, None, problem


def serving_function(model: tf.keras.Model, input_spec: tf.TensorSpec):
  """The model in inference mode on a batch of `input_spec` inputs."""
  spec = tf.TensorSpec([None, *input_spec.shape[1:]], input_spec.dtype,
                       name=INPUT_NAME)

  @tf.function(input_signature=[spec])
  def serve(inputs):
    return {OUTPUT_NAME: model(inputs, training=False)}

  return serve


def write_model(model: tf.keras.Model, input_spec: tf.TensorSpec,
                model_dir: str, round_num: Optional[int] = None) -> Exported:
  """Writes the SavedModel and the TFLite file of `model` into `model_dir`.

  The folder is built beside `model_dir` and renamed into place, replacing
  an earlier export.

  Args:
    model: The Keras model (global weights assigned).
    input_spec: The spec of a batch of model inputs (x of the task).
    model_dir: Output folder (e.g. `<output_dir>/model`).
    round_num: The round the weights are from, for the report.
  """
  start = time.monotonic()
  model_dir = os.path.abspath(model_dir)
  parent = os.path.dirname(model_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(model_dir)}.tmp-',
                             dir=parent)
  try:
    os.chmod(staging, 0o755)
    saved_model = os.path.join(staging, SAVED_MODEL_DIR)
    serve = serving_function(model, input_spec)
    logger = tf.get_logger()
    level = logger.level
    # Keras' save warns that an uncompiled model has no compiled metrics.
    logger.setLevel(logging.ERROR)
    try:
      model.save(saved_model, save_format='tf', include_optimizer=False,
                 signatures={SIGNATURE: serve.get_concrete_function()})
    finally:
      logger.setLevel(level)
    flatbuffer, tflite_ops, tflite_problem = _convert(saved_model)
    if flatbuffer is not None:
      with open(os.path.join(staging, TFLITE_FILE), 'wb') as f:
        f.write(flatbuffer)
    if os.path.lexists(model_dir):
      shutil.rmtree(model_dir)
    os.rename(staging, model_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  exported = Exported(
      saved_model=os.path.join(model_dir, SAVED_MODEL_DIR),
      tflite=(None if flatbuffer is None else
              os.path.join(model_dir, TFLITE_FILE)),
      tflite_ops=tflite_ops,
      tflite_problem=(f'no {TFLITE_FILE}: TFLite cannot convert this model '
                      f'({tflite_problem})' if flatbuffer is None else None),
      round=round_num, seconds=time.monotonic() - start)
  with open(os.path.join(model_dir, REPORT_FILE), 'w', encoding='utf-8') as f:
    json.dump(exported.to_json(), f, indent=2)
  return exported


def load_saved_model(model_dir: str):
  """The `serving_default` function of an export: inputs -> {'outputs'}."""
  loaded = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR))
  return loaded.signatures[SIGNATURE]


def tflite_predict(model_dir: str, inputs: Any) -> Any:
  """Runs the export's model.tflite on a batch with tf.lite.Interpreter."""
  interpreter = tf.lite.Interpreter(
      model_path=os.path.join(model_dir, TFLITE_FILE))
  runner = interpreter.get_signature_runner(SIGNATURE)
  return runner(**{INPUT_NAME: inputs})[OUTPUT_NAME]


def keras_model(task: task_base.Task, weights: Any) -> tf.keras.Model:
  """A fresh Keras model of `task` to serve, holding the global `weights`."""
  model = (task.serving_model_builder or task.model_builder)()
  if task.assign_weights is not None:
    task.assign_weights(model, weights)
  else:
    weights.assign_weights_to(model)
  return model


def export_model(task: task_base.Task, weights: Any, model_dir: str,
                 round_num: Optional[int] = None) -> Exported:
  """`write_model` of the task's Keras model holding `weights`."""
  return write_model(keras_model(task, weights), task.input_spec[0],
                     model_dir, round_num)
