"""The coordinator of the layered runtime: route, fan out, merge, finish.

A round computation (`process.next`) is compiled once into TFF's mergeable
form. Per round, each sampled client is routed to the pod that holds it; each
edge server with sampled clients gets the shared arguments once plus its
pods' client lists, runs `up_to_merge` on those pods and returns one merged
partial. The coordinator folds `merge` over the edge servers' partials (in
topology order) and runs `after_merge` on its own executor. Pods and edge
servers that fail or pass `--round_timeout` are left out of the round and
reported; if none succeeds, the round is retried.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import time
from typing import Any, Optional, Sequence

from absl import logging
import grpc
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.executors import value_serialization
from tensorflow_federated.python.core.impl.types import computation_types
from tensorflow_federated.python.core.impl.types import placements
from tensorflow_federated.python.core.impl.types import type_conversions

from data_prep import shards
from data_prep.errors import UserError
from workers import executor_client
from workers import limits
from workers import liveness
from workers import tls as tls_lib
from workers import topology as topology_lib
from workers import wire

_SERVICE = '/tff_edge.EdgeServer/'
# Slack on top of --round_timeout for the edge server's merge and reply.
_REPLY_SLACK_SECONDS = 30.0


class ClusterError(UserError):
  """The cluster cannot run the round (unreachable, misrouted, no data)."""


@dataclasses.dataclass
class RoundReport:
  """What happened in one distributed call, for the metrics row."""
  failures: list[dict[str, Any]]
  bytes_sent: int = 0  # Coordinator -> edge servers.
  bytes_received: int = 0
  pod_bytes_sent: int = 0  # Edge servers -> pods (summed over servers).
  pod_bytes_received: int = 0
  attempts: int = 1
  # Secure rounds: the clients whose updates the sum holds (survivors).
  participants: Optional[list[str]] = None
  pod_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  # Pods whose partials the edge servers merged (what fan_out returned).
  merged_pods: list[str] = dataclasses.field(default_factory=list)
  # Secure rounds: why the round was skipped (nothing released), if it was.
  skipped: str = ''
  secagg: Optional[dict[str, Any]] = None  # SecAgg+ attempts and stages.

  def causes(self) -> str:
    """Each distinct failure once, for an error message."""
    return '; '.join(dict.fromkeys(
        f'{f.get("pod") or f["edge_server"]}: {f["error"]}'
        for f in self.failures))

  def network(self) -> dict[str, int]:
    return {'coordinator_bytes_sent': self.bytes_sent,
            'coordinator_bytes_received': self.bytes_received,
            'edge_server_bytes_sent': self.pod_bytes_sent,
            'edge_server_bytes_received': self.pod_bytes_received,
            'attempts': self.attempts}


class EdgeServerClient:
  """Calls one edge server; counts bytes on the wire.

  While a call waits, the edge server is pinged: a call ends at most
  `liveness_timeout` seconds after the server's last answer (0: only the
  call's deadline bounds it; see workers/liveness.py).
  """

  def __init__(self, spec: topology_lib.EdgeServer,
               tls: Optional[tls_lib.TlsFiles] = None,
               liveness_timeout: float = (
                   liveness.DEFAULT_SILENCE_TIMEOUT_SECONDS)):
    self.spec = spec
    # The edge server's certificate names it, not its address.
    self._channel = tls_lib.grpc_channel(spec.address, tls,
                                         server_name=spec.name)
    self._liveness_timeout = liveness_timeout
    self._prepared: set[str] = set()

  def call(self, method: str, header: dict[str, Any],
           blobs: Optional[dict[str, bytes]] = None,
           timeout: Optional[float] = None
           ) -> tuple[dict[str, Any], dict[str, bytes], int, int]:
    request = wire.pack(header, blobs)
    limits.check_message_size(len(request), f'{method} to edge server '
                              f'{self.spec.name}')
    rpc = self._channel.unary_unary(_SERVICE + method)
    if self._liveness_timeout:
      reply = liveness.await_call(
          rpc.future(request, timeout=timeout), self.ping,
          self._liveness_timeout, f'{method} on edge server {self.spec.name}')
    else:
      reply = rpc(request, timeout=timeout)
    header, reply_blobs = wire.unpack(reply)
    return header, reply_blobs, len(request), len(reply)

  def ping(self, timeout: float) -> None:
    """One round trip to the edge server; raises grpc.RpcError."""
    self._channel.unary_unary(_SERVICE + 'Ping')(wire.pack({}),
                                                timeout=timeout)

  def prepare(self, functions: dict[str, bytes],
              timeout: Optional[float]) -> int:
    """Sends the computations it lacks; returns the bytes sent."""
    if set(functions) <= self._prepared:
      return 0
    _, _, sent, _ = self.call('Prepare', {}, functions, timeout=timeout)
    self._prepared.update(functions)
    return sent

  def forget_prepared(self) -> None:
    self._prepared.clear()

  def close(self) -> None:
    self._channel.close()


@dataclasses.dataclass(frozen=True)
class ClusterView:
  """Where every client lives, from the pods' own manifests."""
  manifest: shards.Manifest  # All clients; shard_dir '.' (pod-relative).
  pod_of: dict[str, str]  # client id -> pod
  server_of: dict[str, str]  # pod -> edge server
  # pod -> its SecAgg+ party ({party, policy, ready, problem}), if any.
  secagg: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  # Clients whose pod holds their held-out data (held_out/), sorted.
  held_out_clients: tuple[str, ...] = ()


def _same_dataset(a: dict[str, Any], b: dict[str, Any]) -> bool:
  keys = ('task', 'features', 'num_classes', 'partition', 'format_version')
  return all(a.get(k) == b.get(k) for k in keys)


class Cluster:
  """The coordinator's view of the edge servers of a topology."""

  def __init__(self, topology: topology_lib.Topology,
               tls: Optional[tls_lib.TlsFiles] = None,
               liveness_timeout: float = (
                   liveness.DEFAULT_SILENCE_TIMEOUT_SECONDS)):
    self.topology = topology
    self.tls = tls
    self.servers = [EdgeServerClient(s, tls, liveness_timeout)
                    for s in topology.edge_servers]
    self._relay_pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, len(self.servers)), thread_name_prefix='secagg')

  def describe(self, timeout: float = 60.0) -> ClusterView:
    """Asks every edge server which clients its pods hold.

    Raises:
      ClusterError: an edge server or pod is unreachable, two pods claim a
        client, or pods hold different datasets.
    """
    pod_of: dict[str, str] = {}
    server_of: dict[str, str] = {}
    secagg: dict[str, dict[str, Any]] = {}
    held_out: list[str] = []
    clients: list[shards.ShardInfo] = []
    reference = None
    for server in self.servers:
      try:
        header, _, _, _ = server.call('Describe', {}, timeout=timeout)
      except (grpc.RpcError, liveness.Unresponsive) as e:
        raise ClusterError(
            f'edge server {server.spec.name} at {server.spec.address} is not '
            f'reachable ({limits.failure_of(e)[1]}); start it or fix its '
            'address in the topology') from None
      for pod in header['pods']:
        if 'error' in pod:
          raise ClusterError(f'cannot read the manifest of pod {pod["name"]}: '
                             f'{pod["error"]}; is the pod running?')
        manifest = shards.manifest_from_json(pod['manifest'], '.',
                                             f'pod {pod["name"]}')
        raw = pod['manifest']
        if reference is None:
          reference = (pod['name'], raw, manifest)
        elif not _same_dataset(reference[1], raw):
          raise ClusterError(
              f'pods {reference[0]} and {pod["name"]} hold different datasets '
              '(task, features or partition differ); prepare every pod from '
              'the same data_prep run')
        server_of[pod['name']] = server.spec.name
        for info in manifest.clients:
          if info.client_id in pod_of:
            raise ClusterError(
                f'client {info.client_id} is on both pod '
                f'{pod_of[info.client_id]} and pod {pod["name"]}; each client '
                'must live on exactly one pod')
          pod_of[info.client_id] = pod['name']
          clients.append(info)
        if isinstance(pod.get('secagg'), dict):
          secagg[pod['name']] = pod['secagg']
        for client_id in pod.get('held_out_clients') or []:
          if pod_of.get(client_id) != pod['name']:
            raise ClusterError(
                f'pod {pod["name"]} holds held-out data of client {client_id} '
                'but not its training data; place the pods\' data again')
          held_out.append(client_id)
    if reference is None or not clients:
      raise ClusterError('the pods of the topology hold no clients')
    # Manifest order is client-id order, the same as a local run's manifest.
    clients.sort(key=lambda info: info.client_id)
    manifest = dataclasses.replace(reference[2], clients=tuple(clients),
                                   eval=None)
    return ClusterView(manifest, pod_of, server_of, secagg,
                       tuple(sorted(held_out)))

  def secagg_relay(self, view: ClusterView, requests: dict[str, Any],
                   timeout: Optional[float] = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sends each pod its SecAgg+ request through its edge server.

    Returns:
      ({pod: reply} of the pods that answered, failures of the others);
      a failed edge server fails all its pods of the call.
    """
    by_server: dict[str, dict[str, Any]] = {}
    for pod, request in requests.items():
      by_server.setdefault(view.server_of[pod], {})[pod] = request
    header_timeout = timeout
    calls = {}
    for server in self.servers:
      pods = by_server.get(server.spec.name)
      if pods:
        calls[server.spec.name] = (pods, self._relay_pool.submit(
            server.call, 'SecAgg', {'requests': pods,
                                    'timeout': header_timeout},
            None, (timeout + _REPLY_SLACK_SECONDS) if timeout else None))
    replies: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for name, (pods, future) in calls.items():
      try:
        header, _, _, _ = future.result()
        limits.check_secagg_reply(header, pods)
      except (grpc.RpcError, liveness.Unresponsive, wire.WireError,
              limits.BadReply) as e:
        kind, detail = limits.failure_of(e)
        logging.warning('edge server %s failed to relay SecAgg (%s): %s',
                        name, kind, detail)
        failures.extend({'pod': pod, 'edge_server': name, 'kind': kind,
                         'error': detail} for pod in sorted(pods))
        continue
      replies.update(header['replies'])
      failures.extend(header['failures'])
    return replies, failures

  def close(self) -> None:
    self._relay_pool.shutdown(wait=False, cancel_futures=True)
    for server in self.servers:
      server.close()


def _function_key(value: executor_pb2.Value) -> str:
  return hashlib.sha256(value.SerializeToString(deterministic=True)
                        ).hexdigest()[:24]


def _is_per_client(type_spec: computation_types.Type) -> bool:
  return (isinstance(type_spec, computation_types.FederatedType) and
          type_spec.placement is placements.CLIENTS and not type_spec.all_equal)


class DistributedRound:
  """Runs one round computation over the cluster; a drop-in for `next`."""

  def __init__(self, cluster: Cluster, view: ClusterView, comp,
               merge_executor: executor_client.ExecutorClient,
               round_timeout: Optional[float] = None, retries: int = 3,
               retry_wait: float = 5.0, stages=None):
    """Compiles `comp` for the cluster.

    Args:
      cluster: The edge servers.
      view: Where each client lives.
      comp: The round computation.
      merge_executor: Where partials from edge servers are merged.
      round_timeout: Seconds per pod call (None: no limit).
      retries: Attempts after one where no edge server succeeded.
      retry_wait: Seconds between attempts.
      stages: Optional `(up_to_merge, merge)` to run instead of `comp`'s
        mergeable form (`merged()` then returns the merged partial; `comp`
        is not called).
    """
    self._cluster = cluster
    self._view = view
    self._comp = comp
    self._merge_executor = merge_executor
    self._timeout = round_timeout or None
    self._retries = retries
    self._retry_wait = retry_wait
    if stages is None:
      form = mergeable_comp_compiler.compile_to_mergeable_comp_form(comp)
      self._after_merge = form.after_merge
      up_to_merge_comp, merge_comp = form.up_to_merge, form.merge
    else:
      self._after_merge = None
      up_to_merge_comp, merge_comp = stages
    up_to_merge = compiler.desugar_and_transform_to_native(up_to_merge_comp)
    merge = compiler.desugar_and_transform_to_native(merge_comp)
    self._up_to_merge, _ = value_serialization.serialize_value(
        up_to_merge, up_to_merge.type_signature)
    self._merge, _ = value_serialization.serialize_value(
        merge, merge.type_signature)
    self._up_key = _function_key(self._up_to_merge)
    self._merge_key = _function_key(self._merge)
    self._functions = {self._up_key: self._up_to_merge.SerializeToString(),
                       self._merge_key: self._merge.SerializeToString()}
    self._partial_type = merge_comp.type_signature.result
    parameter = up_to_merge_comp.type_signature.parameter
    if not isinstance(parameter, computation_types.StructType):
      raise ValueError(f'expected a struct parameter, got {parameter}')
    self._elements = [(name or '', type_spec)
                      for name, type_spec in structure.iter_elements(parameter)]
    if not any(_is_per_client(t) for _, t in self._elements):
      raise ValueError(f'{parameter} has no per-client argument to route')
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, len(cluster.servers)))

  def __call__(self, args: Sequence[Any], client_ids: Sequence[str]
               ) -> tuple[Any, RoundReport]:
    """Runs the round on `args` (the computation's positional arguments).

    Args:
      args: One value per parameter element; per-client elements are lists
        aligned with `client_ids`.
      client_ids: The client of each position in the per-client lists.

    Returns:
      The computation's result and the round's report.

    Raises:
      ClusterError: a client is not in the cluster or was misrouted, or no
        edge server succeeded after all retries.
    """
    if self._after_merge is None:
      raise TypeError('a DistributedRound built from stages has no `next`; '
                      'use fan_out() and merge()')
    self.check_routable(client_ids)
    report = RoundReport(failures=[])
    failed_pods: set[str] = set()
    for attempt in range(1, self._retries + 2):
      report.attempts = attempt
      partials = self.fan_out(args, client_ids, failed_pods, report)
      if partials:
        break
      if attempt <= self._retries:
        logging.warning('no edge server returned a partial; retrying the '
                        'round in %.0fs (attempt %d of %d)', self._retry_wait,
                        attempt + 1, self._retries + 1)
        time.sleep(self._retry_wait)
        failed_pods.clear()  # Restarted pods may be back.
    else:
      raise ClusterError(
          f'round failed on every edge server after {self._retries + 1} '
          f'attempts: {report.causes()}; check that the pods are running')
    merged_value = self.merge(partials)
    arg = structure.Struct([(name, value) for (name, _), value
                            in zip(self._elements, args)])
    context = context_stack_impl.context_stack.current
    result = context.invoke(self._after_merge,
                            structure.Struct.unnamed(arg, merged_value))
    return (type_conversions.type_to_py_container(
        result, self._comp.type_signature.result), report)

  def merge(self, partials: list[executor_pb2.Value]) -> Any:
    """Folds `merge` over edge-server partials; returns the Python value."""
    merged = executor_client.merge_all(self._merge_executor, self._merge_key,
                                       self._merge, partials)
    value, _ = value_serialization.deserialize_value(merged, self._partial_type)
    return value

  def check_routable(self, client_ids: Sequence[str]) -> None:
    missing = [c for c in client_ids if c not in self._view.pod_of]
    if missing:
      raise ClusterError(f'clients {missing[:5]} are on no pod of the cluster')

  def fan_out(self, args: Sequence[Any], client_ids: Sequence[str],
              skip_pods: set[str], report: RoundReport,
              secagg: Optional[dict[str, Any]] = None
              ) -> list[executor_pb2.Value]:
    """One attempt: every edge server with clients; returns the partials.

    Pods that fail (or all pods of a failed edge server) are added to
    `skip_pods` and to `report.failures`; the pods in the returned partials
    are added to `report.merged_pods`. With `secagg` ({'tag', 'masks': {pod:
    forwarded SecAgg+ shares}}), each pod first writes its mask.
    """
    positions: dict[str, list[int]] = {}
    for i, client in enumerate(client_ids):
      pod = self._view.pod_of[client]
      if pod not in skip_pods:
        positions.setdefault(pod, []).append(i)
    shared_blobs = {}
    for i, ((_, type_spec), value) in enumerate(zip(self._elements, args)):
      if not _is_per_client(type_spec):
        proto, _ = value_serialization.serialize_value(value, type_spec)
        shared_blobs[f'shared/{i}'] = proto.SerializeToString()
    calls = {}
    for server in self._cluster.servers:
      pods = {p.name: positions[p.name] for p in server.spec.pods
              if p.name in positions}
      if not pods:
        continue  # No sampled client under this edge server.
      blobs = dict(shared_blobs)
      for pod, indices in pods.items():
        for i, ((_, type_spec), value) in enumerate(zip(self._elements, args)):
          if _is_per_client(type_spec):
            proto, _ = value_serialization.serialize_value(
                [value[j] for j in indices], type_spec)
            blobs[f'{pod}/{i}'] = proto.SerializeToString()
      header = {'up_to_merge': self._up_key, 'merge': self._merge_key,
                'elements': [[name, not _is_per_client(t)]
                             for name, t in self._elements],
                'pods': {pod: len(indices) for pod, indices in pods.items()},
                # Each pod checks these clients' shards before training.
                'pod_clients': {pod: [client_ids[j] for j in indices]
                                for pod, indices in pods.items()},
                'timeout': self._timeout}
      if secagg is not None:
        header['secagg'] = {'tag': secagg['tag'],
                            'masks': {pod: secagg['masks'][pod]
                                      for pod in pods}}
      calls[server.spec.name] = self._pool.submit(self._run_on, server,
                                                  header, blobs)
    partials = []
    for server in self._cluster.servers:  # Topology order: reproducible.
      if server.spec.name not in calls:
        continue
      try:
        reply, blobs, sent, received = calls[server.spec.name].result()
        limits.check_reply(reply, blobs)
      except (grpc.RpcError, liveness.Unresponsive, wire.WireError,
              limits.BadReply) as e:
        # Whatever one edge server does is its failure, never the run's.
        kind, detail = limits.failure_of(e)
        logging.warning('edge server %s failed (%s): %s', server.spec.name,
                        kind, detail)
        report.failures.append({
            'edge_server': server.spec.name, 'kind': kind,
            'error': detail,
            'clients': [client_ids[j] for p in server.spec.pods
                        for j in positions.get(p.name, [])]})
        skip_pods.update(p.name for p in server.spec.pods
                         if p.name in positions)
        continue
      report.bytes_sent += sent
      report.bytes_received += received
      report.pod_bytes_sent += reply['pod_bytes_sent']
      report.pod_bytes_received += reply['pod_bytes_received']
      report.pod_seconds.update(reply['pod_seconds'])
      for failure in reply['failures']:
        failure['clients'] = [client_ids[j]
                              for j in positions.get(failure['pod'], [])]
        if failure['kind'] == 'not_held':
          raise ClusterError(
              f'pod {failure["pod"]} was asked for clients '
              f'{failure["clients"]} it does not hold: {failure["error"]}; '
              'the pods changed since the coordinator read their manifests '
              '- restart the run')
        skip_pods.add(failure['pod'])
        report.failures.append(failure)
      if 'partial' in blobs:
        partials.append(executor_pb2.Value.FromString(blobs['partial']))
        merged = reply.get('merged')
        asked = [p.name for p in server.spec.pods if p.name in positions]
        if not (isinstance(merged, list) and set(merged) <= set(asked)):
          merged = [p for p in asked if p not in skip_pods]
        report.merged_pods.extend(merged)
    return partials

  def _run_on(self, server: EdgeServerClient, header: dict[str, Any],
              blobs: dict[str, bytes], resent: bool = False):
    # The edge server times each pod; it may run its pods a few at a time.
    timeout = (self._timeout * len(header['pods']) + _REPLY_SLACK_SECONDS
               if self._timeout else None)
    sent = server.prepare(self._functions, timeout)
    try:
      reply, reply_blobs, request_bytes, reply_bytes = server.call(
          'Run', header, blobs, timeout=timeout)
    except grpc.RpcError as e:
      server.forget_prepared()
      if e.code() != grpc.StatusCode.FAILED_PRECONDITION or resent:
        raise
      # It restarted and lost its cache: send the computations again.
      return self._run_on(server, header, blobs, resent=True)
    return reply, reply_blobs, sent + request_bytes, reply_bytes
