"""Console scripts of `pip install .` for the runtime's entry points."""

from data_prep.console import script

certs = script("workers.certs")
edge_pod = script("workers.edge_pod")
edge_server = script("workers.edge_server")
local_cluster = script("workers.local_cluster")
pod_data = script("workers.pod_data")
topology_gen = script("workers.topology_gen")
