"""The cluster layout: edge servers, the edge pods under each, addresses.

    edge_servers:
      - name: es-0
        address: 10.77.2.1:7000     # gRPC, used by the coordinator
        health: 10.77.2.1:7001      # HTTP /healthz, /readyz
        pods:
          - name: edge-0
            address: 10.77.1.1:8000 # TFF executor service, used by es-0
            health: 10.77.1.1:8001  # HTTP /healthz, /readyz, /manifest
    eval_data: /path/to/shards      # optional: held-out data at the coordinator
    tls_dir: /path/to/certs         # optional: every channel is mutual TLS;
                                    # ca.crt + <node>.crt/.key (workers.certs)

Every pod sits under exactly one edge server; names are unique.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional

import yaml

from data_prep.errors import UserError

_NAME = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?')
_ADDRESS = re.compile(r'[^\s:]+:\d{1,5}')


@dataclasses.dataclass(frozen=True)
class Pod:
  name: str
  address: str
  health: str


@dataclasses.dataclass(frozen=True)
class EdgeServer:
  name: str
  address: str
  health: str
  pods: tuple[Pod, ...]


@dataclasses.dataclass(frozen=True)
class Topology:
  edge_servers: tuple[EdgeServer, ...]
  eval_data: Optional[str] = None
  # With it, pods and edge servers speak only mutual TLS; each process finds
  # its own <name>.crt/.key here unless its --tls_dir says otherwise.
  tls_dir: Optional[str] = None

  def edge_server(self, name: str) -> EdgeServer:
    for server in self.edge_servers:
      if server.name == name:
        return server
    raise UserError(f'edge server {name!r} is not in the topology (it has '
                    f'{", ".join(s.name for s in self.edge_servers)})')

  @property
  def pods(self) -> list[Pod]:
    return [pod for server in self.edge_servers for pod in server.pods]


def to_dict(topology: Topology) -> dict[str, Any]:
  raw: dict[str, Any] = {'edge_servers': [
      {'name': s.name, 'address': s.address, 'health': s.health,
       'pods': [dataclasses.asdict(p) for p in s.pods]}
      for s in topology.edge_servers]}
  if topology.eval_data:
    raw['eval_data'] = topology.eval_data
  if topology.tls_dir:
    raw['tls_dir'] = topology.tls_dir
  return raw


def save(topology: Topology, path: str) -> None:
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    yaml.safe_dump(to_dict(topology), f, sort_keys=False)
  os.replace(path + '.tmp', path)


def load(path: str) -> Topology:
  """Reads and checks a topology file; errors name the file and the entry."""
  try:
    with open(path, encoding='utf-8') as f:
      raw = yaml.safe_load(f)
  except FileNotFoundError:
    raise UserError(f'--topology={path}: no such file; write one (see '
                    'workers/topology.py) or start `python -m '
                    'workers.local_cluster --topology_out=...`') from None
  except yaml.YAMLError as e:
    raise UserError(f'--topology={path} is not valid YAML: {e}') from None
  return parse(raw, path)


def parse(raw: Any, where: str) -> Topology:
  """Builds a Topology from parsed YAML."""

  def fail(message: str) -> UserError:
    return UserError(f'topology {where}: {message}')

  if not isinstance(raw, dict) or not isinstance(raw.get('edge_servers'), list):
    raise fail('needs a top-level list "edge_servers"')
  unknown = set(raw) - {'edge_servers', 'eval_data', 'tls_dir'}
  if unknown:
    raise fail(f'unknown keys {sorted(unknown)}; allowed: edge_servers, '
               'eval_data, tls_dir')
  seen: set[str] = set()

  def entry(item: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
      raise fail(f'{what} must be a mapping, got {item!r}')
    missing = keys - set(item) - {'pods'}
    extra = set(item) - keys
    if missing or extra:
      raise fail(f'{what} {item.get("name", "")!r}: '
                 + (f'missing {sorted(missing)} ' if missing else '')
                 + (f'unknown {sorted(extra)} ' if extra else '')
                 + f'(keys: {", ".join(sorted(keys))})')
    name = item['name']
    if not isinstance(name, str) or not _NAME.fullmatch(name):
      raise fail(f'{what} name {name!r} must be a DNS label (a-z, 0-9, -)')
    if name in seen:
      raise fail(f'name {name!r} is used twice')
    seen.add(name)
    for key in ('address', 'health'):
      if not isinstance(item[key], str) or not _ADDRESS.fullmatch(item[key]):
        raise fail(f'{what} {name}: {key} {item[key]!r} is not host:port')
    return item

  servers = []
  for i, item in enumerate(raw['edge_servers']):
    item = entry(item, f'edge_servers[{i}]',
                 {'name', 'address', 'health', 'pods'})
    if not isinstance(item.get('pods'), list) or not item['pods']:
      raise fail(f'edge server {item["name"]} needs a non-empty list "pods"')
    pods = tuple(Pod(**entry(p, f'pod {j} of {item["name"]}',
                             {'name', 'address', 'health'}))
                 for j, p in enumerate(item['pods']))
    servers.append(EdgeServer(item['name'], item['address'], item['health'],
                              pods))
  if not servers:
    raise fail('"edge_servers" is empty')
  eval_data = raw.get('eval_data')
  if eval_data is not None and not isinstance(eval_data, str):
    raise fail(f'eval_data must be a path, got {eval_data!r}')
  tls_dir = raw.get('tls_dir')
  if tls_dir is not None and not isinstance(tls_dir, str):
    raise fail(f'tls_dir must be a path, got {tls_dir!r}')
  return Topology(tuple(servers), eval_data, tls_dir)
