"""FedML example configs, written here with the structure of FedML's own.

FedML-AI/FedML python/examples/federate/: cross_silo/
grpc_fedavg_mnist_lr_example, cross_silo/light_sec_agg_example,
privacy/mqtt_s3_fedavg_cdp_mnist_lr_example and cross_device/
mqtt_s3_fedavg_mnist_lr_example (an older tree's), key for key, with our own
paths and keys. Used by tff_pipeline/core/fedml_test.py (parsing) and
tests/fedml_configs_test.py (training).
"""

CROSS_SILO_MNIST_LR = """\
common_args:
  training_type: "cross_silo"
  scenario: "horizontal"
  using_mlops: false
  random_seed: 0

environment_args:
  bootstrap: config/bootstrap.sh

data_args:
  dataset: "mnist"
  data_cache_dir: "/data/mnist"
  partition_method: "hetero"
  partition_alpha: 0.5

model_args:
  model: "lr"
  model_file_cache_folder: "./model_file_cache" # filled by the server
  global_model_file_path: "./model_file_cache/global_model.pt"

train_args:
  federated_optimizer: "FedAvg"
  client_id_list:
  client_num_in_total: 1000
  client_num_per_round: 2
  comm_round: 50
  epochs: 1
  batch_size: 10
  client_optimizer: sgd
  learning_rate: 0.03
  weight_decay: 0.001

validation_args:
  frequency_of_the_test: 5

device_args:
  using_gpu: false
  gpu_mapping_file: config/gpu_mapping.yaml
  gpu_mapping_key: mapping_default

comm_args:
  backend: "GRPC"
  grpc_ipconfig_path: config/grpc_ipconfig.csv

tracking_args:
  local_log_output_path: ./log
  enable_wandb: false
  wandb_key: 0123456789abcdef
  wandb_project: fedml
  wandb_name: fedml_torch_fedavg_mnist_lr
"""

LIGHTSECAGG = """\
common_args:
  training_type: "cross_silo"
  scenario: "horizontal"
  using_mlops: false
  random_seed: 0
environment_args:
  bootstrap: config/bootstrap.sh
data_args:
  dataset: "mnist"
  data_cache_dir: ~/.cache/fedml_data
  partition_method: "hetero"
  partition_alpha: 0.5
model_args:
  model: "lr"
  model_file_cache_folder: "./model_file_cache"
  global_model_file_path: "./model_file_cache/global_model.pt"
train_args:
  federated_optimizer: "LSA"
  client_id_list:
  client_num_in_total: 1000
  client_num_per_round: 2
  comm_round: 2
  epochs: 1
  batch_size: 10
  client_optimizer: sgd
  learning_rate: 0.03
  weight_decay: 0.001
validation_args:
  frequency_of_the_test: 5
secure_aggregation_args:
  enable_sa: true
  sa_method: lightsecagg # secagg; secagg++
  prime_number: 1997
  precision_parameter: 10
device_args:
  worker_num: 2
  using_gpu: false
  gpu_mapping_file: config/gpu_mapping.yaml
  gpu_mapping_key: mapping_default
comm_args:
  backend: "MQTT_S3"
  mqtt_config_path: config/mqtt_config.yaml
  s3_config_path: config/s3_config.yaml
tracking_args:
  enable_wandb: false
  wandb_key: 0123456789abcdef
  wandb_project: fedml
  wandb_name: fedml_torch_fedavg_mnist_lr
"""

CENTRAL_DP = """\
common_args:
  training_type: "cross_silo"
  scenario: "horizontal"
  using_mlops: false
  random_seed: 0
environment_args:
  bootstrap: config/bootstrap.sh
data_args:
  dataset: "mnist"
  data_cache_dir: ~/.cache/fedml_data
  partition_method: "hetero"
  partition_alpha: 0.5
model_args:
  model: "lr"
  model_file_cache_folder: "./model_file_cache"
  global_model_file_path: "./model_file_cache/global_model.pt"
train_args:
  federated_optimizer: "FedAvg"
  client_id_list:
  client_num_in_total: 1000
  client_num_per_round: 2
  comm_round: 5
  epochs: 1
  batch_size: 10
  client_optimizer: sgd
  learning_rate: 0.03
  weight_decay: 0.001
validation_args:
  frequency_of_the_test: 5
device_args:
  using_gpu: false
  gpu_mapping_file: config/gpu_mapping.yaml
  gpu_mapping_key: mapping_default
comm_args:
  backend: "MQTT_S3"
  mqtt_config_path: config/mqtt_config.yaml
  s3_config_path: config/s3_config.yaml
tracking_args:
  enable_wandb: false
  wandb_key: 0123456789abcdef
  wandb_project: fedml
  wandb_name: fedml_torch_fedavg_mnist_lr
dp_args:
  enable_dp: true
  dp_solution_type: cdp
  epsilon: 0.5
  delta: 0.1
  sensitivity: 1
  mechanism_type: gaussian
  rdp_alpha: 5
  enable_rdp_accountant: False
"""

CROSS_DEVICE_MNIST_LR = """\
common_args:
  training_type: "cross_device"
  using_mlops: false
  random_seed: 0
data_args:
  dataset: "mnist"
  data_cache_dir: "../../../data/mnist"
  partition_method: "hetero"
  partition_alpha: 0.5
model_args:
  model: "lr"
  model_file_cache_folder: "./model_file_cache"
  global_model_file_path: "./model_file_cache/global_model.mnn"
train_args:
  federated_optimizer: "FedAvg"
  client_id_list: "[138]"
  client_num_in_total: 1
  client_num_per_round: 1
  comm_round: 3
  epochs: 1
  batch_size: 100
  batch_num: -1
  client_optimizer: sgd
  learning_rate: 0.03
  weight_decay: 0.001
validation_args:
  frequency_of_the_test: 5
device_args:
  worker_num: 1 # the client number, not including the server
  using_gpu: false
  gpu_mapping_file: config/gpu_mapping.yaml
  gpu_mapping_key: mapping_default
comm_args:
  backend: "MQTT_S3_MNN"
  mqtt_config_path: config/mqtt_config.yaml
  s3_config_path: config/s3_config.yaml
tracking_args:
  log_file_dir: ./log
  enable_wandb: false
  wandb_obj: ""
  wandb_key: 0123456789abcdef
  wandb_project: fedml
  wandb_name: fedml_torch_fedavg_mnist_lr
"""
