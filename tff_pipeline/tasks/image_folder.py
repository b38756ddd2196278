"""Image classification on your own folders of images: `--task=image_folder`.

The shards are `data_prep.image_folder`'s: `<dir>/<client>/<label>/<image>`
(natural clients) or `<dir>/<label>/<image>` split by `--partition`. Pixels
are scaled to [0, 1]. Models: the image tasks' `cnn` (TFF's EMNIST
conv-dropout model), `2nn` and `lr`, built for the images' shape, or your
own (`--model=package.module:function`, given (height, width, channels)
and the number of classes). Large images make the CNN's dense layer large:
resize them with `--image_size` (e.g. 32).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import tensorflow as tf

from data_prep import image_folder as image_folder_prep
from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline.tasks import base
from tff_pipeline.tasks import images


def image_shape(manifest: shards.Manifest) -> tuple[int, int, int]:
  return tuple(manifest.features['pixels']['shape'])


def _preprocess(batch: base.Batch):
  return tf.cast(batch['pixels'], tf.float32) / 255.0, batch['label']


class ImageFolder(base.ClassifierFamily):
  """Labelled image folders, per client or pooled."""

  name = 'image_folder'
  model_names = tuple(images.IMAGE_MODELS)
  custom_models = True
  data_option_names = ('eval_fraction', 'eval_data', 'image_size')
  defaults = dict(model='cnn', num_clients=10, clients_per_round=5,
                  rounds=20, eval_every=5)

  def defaults_for(self, requested: Mapping[str, Any]) -> Mapping[str, Any]:
    asked = str(requested.get('partition', 'natural')).lower()
    data_dir = requested.get('data_dir')
    if asked != 'natural' or not data_dir:
      return self.defaults
    try:
      layout = image_folder_prep.detect_layout(os.path.expanduser(data_dir))
    except UserError:
      return self.defaults  # prepare() says what is wrong.
    if layout == image_folder_prep.CLIENTS_LAYOUT:
      # Client folders are the clients: all of them, unless --num_clients.
      return {**self.defaults, 'partition': 'natural', 'num_clients': 0}
    return self.defaults

  def data_key(self, data: base.DataOptions) -> str:
    request = {
        'data_dir': os.path.abspath(data.data_dir) if data.data_dir else '',
        'eval_data': (os.path.abspath(data.extras['eval_data'])
                      if data.extras.get('eval_data') else ''),
        'eval_fraction': data.extras.get('eval_fraction'),
        'image_size': data.extras.get('image_size'),
        'partition': data.partition, 'num_clients': data.num_clients,
        'seed': data.seed,
        'alpha': data.partition_alpha if data.partition == 'dirichlet' else 0,
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    return f'{self.name}-{data.partition}-{digest.hexdigest()[:12]}'

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    base.require_data_dir(data, self.name, 'DIR/<label>/<image> or '
                          'DIR/<client>/<label>/<image>')
    return image_folder_prep.find_or_prepare(
        data.data_dir, data.shard_dir, num_clients=data.num_clients,
        partition=data.partition, partition_alpha=data.partition_alpha,
        seed=data.seed,
        eval_fraction=data.extras.get(
            'eval_fraction', image_folder_prep.DEFAULT_EVAL_FRACTION),
        eval_data=data.extras.get('eval_data', ''),
        image_size=data.extras.get('image_size', 0))

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    del manifest
    return _preprocess

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    if model_name in images.IMAGE_MODELS:
      return images.IMAGE_MODELS[model_name](
          manifest.num_classes, seed=seed, weight_decay=weight_decay,
          input_shape=image_shape(manifest))
    return base.build_classifier(model_name, image_shape(manifest),
                                 manifest.num_classes)


IMAGE_FOLDER = ImageFolder()
