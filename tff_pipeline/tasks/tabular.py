"""Tabular classification from your own CSV files: `--task=csv`.

The shards are `data_prep.tabular`'s: each row's numeric columns as a
feature vector and its class. Features are standardized with the training
rows' mean and standard deviation (recorded in the manifest) before they
reach the model. Models: `mlp` (one hidden layer of 64 ReLU units, softmax)
and `lr` (multinomial logistic regression), or your own
(`--model=package.module:function`, given the input shape (num_features,)
and the number of classes).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from data_prep import shards
from data_prep import tabular as tabular_prep
from tff_pipeline.tasks import base
from tff_pipeline.tasks import images

HIDDEN_UNITS = 64


def create_mlp(num_features: int, num_classes: int, seed: int = 0,
               weight_decay: float = 0.0) -> tf.keras.Model:
  """One hidden layer of HIDDEN_UNITS ReLU units, softmax over classes."""
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=(num_features,)),
      tf.keras.layers.Dense(HIDDEN_UNITS, activation='relu',
                            **images.dense_kwargs(seed, 0, weight_decay)),
      tf.keras.layers.Dense(num_classes, activation='softmax',
                            **images.dense_kwargs(seed, 1, weight_decay)),
  ], name='mlp')


def create_lr(num_features: int, num_classes: int, seed: int = 0,
              weight_decay: float = 0.0) -> tf.keras.Model:
  """Multinomial logistic regression on the features."""
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=(num_features,)),
      tf.keras.layers.Dense(num_classes, activation='softmax',
                            **images.dense_kwargs(seed, 0, weight_decay)),
  ], name='lr')


MODELS = {'mlp': create_mlp, 'lr': create_lr}


def num_features(manifest: shards.Manifest) -> int:
  return int(manifest.features['features']['shape'][0])


class Csv(base.ClassifierFamily):
  """Rows of CSV files, clients by a column or by a partition."""

  name = 'csv'
  model_names = tuple(MODELS)
  custom_models = True
  data_option_names = ('label_column', 'client_column', 'eval_fraction',
                       'eval_data')
  # Small data: 10 clients (without --client_column), 5 a round.
  defaults = dict(model='mlp', num_clients=10, clients_per_round=5,
                  rounds=20, eval_every=5)

  def defaults_for(self, requested: Mapping[str, Any]) -> Mapping[str, Any]:
    asked = str(requested.get('partition', 'natural')).lower()
    if requested.get('client_column') and asked == 'natural':
      # Its values are the clients: all of them, unless --num_clients.
      return {**self.defaults, 'partition': 'natural', 'num_clients': 0}
    return self.defaults  # Another --partition: prepare() says what to drop.

  def data_key(self, data: base.DataOptions) -> str:
    request = {
        'data_dir': os.path.abspath(data.data_dir) if data.data_dir else '',
        'eval_data': (os.path.abspath(data.extras.get('eval_data', ''))
                      if data.extras.get('eval_data') else ''),
        **{k: v for k, v in data.extras.items() if k != 'eval_data'},
        'partition': data.partition, 'num_clients': data.num_clients,
        'seed': data.seed,
        'alpha': data.partition_alpha if data.partition == 'dirichlet' else 0,
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    return f'{self.name}-{data.partition}-{digest.hexdigest()[:12]}'

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    base.require_data_dir(data, self.name, 'a CSV file or a folder of them')
    return tabular_prep.find_or_prepare(
        data.data_dir, data.shard_dir,
        label_column=data.extras.get('label_column', ''),
        client_column=data.extras.get('client_column', ''),
        num_clients=data.num_clients, partition=data.partition,
        partition_alpha=data.partition_alpha, seed=data.seed,
        eval_fraction=data.extras.get('eval_fraction',
                                      tabular_prep.DEFAULT_EVAL_FRACTION),
        eval_data=data.extras.get('eval_data', ''))

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    mean = np.asarray(manifest.source['feature_mean'], np.float32)
    std = np.asarray(manifest.source['feature_std'], np.float32)

    def preprocess(batch: base.Batch):
      return (batch['features'] - mean) / std, batch['label']

    return preprocess

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    if model_name in MODELS:
      return MODELS[model_name](num_features(manifest), manifest.num_classes,
                                seed=seed, weight_decay=weight_decay)
    return base.build_classifier(model_name, (num_features(manifest),),
                                 manifest.num_classes)


CSV = Csv()
