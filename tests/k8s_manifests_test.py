"""The Kubernetes manifests (k8s/): they render, validate, and say what we mean.

Renders k8s/overlays/cluster and k8s/overlays/local with `kubectl kustomize`
(kubectl's built-in kustomize), validates them with kubernetes-validate
--strict against Kubernetes 1.32 (schemas bundled, no network) through
k8s/validate.sh, and checks their structure: tiers and replica counts,
headless Services, NetworkPolicies (who may reach whom, on which port),
resources, probes, security contexts, that overlays/local is exactly what
k8s/render.py generates from the cluster overlay, and that scaling to 20 edge
pods is one changed line which the topology steps follow.

Fails, saying why, where kubectl is missing or too old (Debian's
kubernetes-client lacks kustomize v5's `replicas` with `replacements`).
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Iterator

from absl.testing import absltest
import kubernetes_validate
import yaml

from tests import testutil
from tff_pipeline.core import config as config_lib
from workers import tls
from workers import topology_gen
from tff_pipeline import plan

# The source tree, not Bazel's runfiles: kustomize does not find a
# kustomization.yaml that is a symlink (runfiles are symlink trees).
K8S = os.path.dirname(os.path.realpath(
    os.path.join(testutil.REPO_ROOT, 'k8s', 'render.py')))
SOURCE_ROOT = os.path.dirname(K8S)
VERSION = '1.32.0'
PODMAN_KINDS = {'Pod', 'Deployment', 'PersistentVolumeClaim', 'ConfigMap'}
LABEL = 'app.kubernetes.io/component'
METRICS_PORT = 9090  # Prometheus /metrics of every tier (workers/metrics.py).


# setup.sh installs kubectl (with kustomize v5) into .venv/bin, beside the
# interpreter: found first, for this test and the scripts it runs.
os.environ['PATH'] = (os.path.dirname(sys.executable) + os.pathsep +
                      os.environ.get('PATH', ''))


def _kubectl_problem() -> str | None:
  kubectl = shutil.which('kubectl')
  if kubectl is None:
    return 'kubectl is not installed'
  result = subprocess.run([kubectl, 'version', '--client'], text=True,
                          capture_output=True, check=False)
  match = re.search(r'Kustomize Version: v(\d+)', result.stdout)
  if not match or int(match.group(1)) < 5:
    return f'kubectl has no kustomize v5 (replacements): {result.stdout!r}'
  return None


def _render(directory: str) -> list[dict[str, Any]]:
  result = subprocess.run(['kubectl', 'kustomize', directory], text=True,
                          capture_output=True, check=False)
  if result.returncode != 0:
    raise AssertionError(f'kubectl kustomize {directory}: {result.stderr}')
  return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(objects, kind: str, name: str) -> dict[str, Any]:
  found = [o for o in objects
           if o['kind'] == kind and o['metadata']['name'] == name]
  if len(found) != 1:
    raise AssertionError(f'{len(found)} {kind} named {name}')
  return found[0]


def _pod_specs(objects) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
  """(workload, pod labels, pod spec) of every workload."""
  for obj in objects:
    if obj['kind'] in ('StatefulSet', 'Deployment', 'Job'):
      template = obj['spec']['template']
      yield obj['metadata']['name'], template['metadata']['labels'], \
          template['spec']
    elif obj['kind'] == 'Pod':
      yield obj['metadata']['name'], obj['metadata']['labels'], obj['spec']


def _containers(spec) -> list[dict[str, Any]]:
  return spec.get('initContainers', []) + spec['containers']


def _env(container) -> dict[str, Any]:
  return {e['name']: e.get('value') for e in container.get('env', [])}


def _container(spec, name: str) -> dict[str, Any]:
  return next(c for c in _containers(spec) if c['name'] == name)


def _flag(container, flag: str) -> str:
  prefix = f'--{flag}='
  values = [a[len(prefix):] for a in container.get('command', [])
            + container.get('args', []) if a.startswith(prefix)]
  if len(values) != 1:
    raise AssertionError(f'{container["name"]}: {len(values)} --{flag}')
  return values[0]


def _selects(policy, labels) -> bool:
  wanted = policy['spec']['podSelector'].get('matchLabels', {})
  return all(labels.get(k) == v for k, v in wanted.items())


def _expand(value: str, env: dict[str, str]) -> str:
  return re.sub(r'\$\(([A-Za-z_][A-Za-z0-9_]*)\)',
                lambda m: env.get(m.group(1), m.group(0)), value)


class K8sManifestsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    problem = _kubectl_problem()
    if problem:  # Fail, not skip: CI must validate the manifests.
      raise AssertionError(f'{problem}; install kubectl >= 1.27 (kustomize '
                           'v5), e.g. from the Kubernetes apt repository')
    cls.cluster = _render(os.path.join(K8S, 'overlays', 'cluster'))
    cls.local = _render(os.path.join(K8S, 'overlays', 'local'))

  def _validate(self, objects, where: str) -> None:
    for obj in objects:
      try:
        kubernetes_validate.validate(obj, VERSION, strict=True)
      except kubernetes_validate.ValidationError as e:
        self.fail(f'{where}: {obj["kind"]} {obj["metadata"]["name"]}: '
                  f'{e.message} at {list(e.path)}')

  # Rendering and validation.

  def test_validate_script_renders_and_validates_every_overlay(self):
    result = subprocess.run(
        ['bash', os.path.join(K8S, 'validate.sh'), VERSION], text=True,
        capture_output=True, check=False, cwd=SOURCE_ROOT,
        env={**os.environ, 'PYTHON': sys.executable}, timeout=300)
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    for overlay in ('cluster', 'local'):
      self.assertIn(f'overlays/{overlay}: ', result.stdout)
    self.assertIn('2 Secrets and the CA ConfigMap valid', result.stdout)
    self.assertIn('csr_object.py: CertificateSigningRequest valid',
                  result.stdout)

  def test_schemas_of_1_32_are_bundled(self):
    self._validate(self.cluster, 'cluster')
    self._validate(self.local, 'local')
    bad = {'apiVersion': 'v1', 'kind': 'ConfigMap',
           'metadata': {'name': 'x'}, 'dataa': {}}
    with self.assertRaises(kubernetes_validate.ValidationError):
      kubernetes_validate.validate(bad, VERSION, strict=True)

  def test_local_overlay_is_what_render_generates(self):
    result = subprocess.run(
        [sys.executable, os.path.join(K8S, 'render.py'), '--check'],
        text=True, capture_output=True, check=False, timeout=120)
    self.assertEqual(result.returncode, 0, result.stderr)

  # The cluster overlay.

  def test_edge_pods_are_a_statefulset_with_their_own_volumes(self):
    edge = _one(self.cluster, 'StatefulSet', 'edge')
    self.assertGreaterEqual(edge['spec']['replicas'], 10)
    self.assertEqual(edge['spec']['serviceName'], 'edge')
    service = _one(self.cluster, 'Service', 'edge')
    self.assertEqual(service['spec']['clusterIP'], 'None')
    self.assertEqual([p['port'] for p in service['spec']['ports']], [8000])
    claims = [c['metadata']['name']
              for c in edge['spec']['volumeClaimTemplates']]
    self.assertEqual(claims, ['data'])
    spec = edge['spec']['template']['spec']
    shards = _container(spec, 'shards')
    self.assertEqual(shards['command'][:3],
                     ['python', '-m', 'workers.pod_data'])
    self.assertEqual(_flag(shards, 'pods'), '$(EDGE_PODS)')
    self.assertEqual(_env(shards)['EDGE_PODS'], str(edge['spec']['replicas']))
    self.assertIn({'name': 'data', 'mountPath': '/data'},
                  shards['volumeMounts'])
    pod = _container(spec, 'edge-pod')
    self.assertEqual(pod['command'][:3], ['python', '-m', 'workers.edge_pod'])
    for flag, value in (('port', '8000'), ('health_port', '8001'),
                        ('tls_dir', '/data/identity'), ('ca_dir', '/ca'),
                        ('secagg_identity_key',
                         '/data/identity/secagg-identity.key'),
                        ('secagg_state', '/data/identity/secagg-state.json'),
                        ('data_dir', '/data/shards'), ('run_dir', '/run/tls')):
      self.assertEqual(_flag(pod, flag), value)
    # Secrets born where they are used: no Secret reaches an edge pod; its
    # key, certificate and SecAgg secret live on its own volume, made there.
    self.assertEqual([v['name'] for v in spec['volumes'] if 'secret' in v],
                     [])
    identity = _container(spec, 'identity')
    self.assertEqual(identity['command'][:3],
                     ['python', '-m', 'workers.identity'])
    self.assertEqual(_flag(identity, 'dir'), '/data/identity')
    self.assertEqual(_flag(identity, 'role'), 'edge-pod')
    self.assertEqual(_flag(identity, 'ca'), '/ca/ca.crt')
    # The SecAgg identity rides on the same CSR: the certificate binds it.
    self.assertEqual(_flag(identity, 'secagg_key'),
                     _flag(pod, 'secagg_identity_key'))
    self.assertIn({'name': 'data', 'mountPath': '/data'},
                  identity['volumeMounts'])
    ca = next(v for v in spec['volumes'] if v['name'] == 'ca')
    self.assertEqual(ca['configMap']['name'], 'tff-edge-ca')

  def test_edge_servers_and_coordinator(self):
    servers = _one(self.cluster, 'StatefulSet', 'edge-server')
    self.assertGreaterEqual(servers['spec']['replicas'], 2)
    self.assertEqual(_one(self.cluster, 'Service', 'edge-server')['spec']
                     ['clusterIP'], 'None')
    main = _container(servers['spec']['template']['spec'], 'edge-server')
    self.assertEqual(main['command'][:3],
                     ['python', '-m', 'workers.edge_server'])
    self.assertEqual(_flag(main, 'topology'), '/work/topology.yaml')
    job = _one(self.cluster, 'Job', 'coordinator')
    spec = job['spec']['template']['spec']
    script = ' '.join(_container(spec, 'coordinator')['command'])
    for part in ('python -m tff_pipeline.train', '--executor=remote',
                 '--topology=/work/topology.yaml', '--tls_dir=/tls',
                 '--config=/config/train.yaml', '--output_dir='):
      self.assertIn(part, script)
    # Below the mount point: placement replaces the folder it writes.
    self.assertEqual(_flag(_container(spec, 'eval-data'), 'eval_out'),
                     '/eval/shards')
    self.assertEqual(_flag(_container(spec, 'topology'), 'eval_data'),
                     '/eval/shards')

  def test_topology_steps_follow_the_replica_counts(self):
    pods = _one(self.cluster, 'StatefulSet', 'edge')['spec']['replicas']
    servers = _one(self.cluster, 'StatefulSet',
                   'edge-server')['spec']['replicas']
    for workload in ('edge-server', 'coordinator'):
      kind = 'Job' if workload == 'coordinator' else 'StatefulSet'
      spec = _one(self.cluster, kind, workload)['spec']['template']['spec']
      step = _container(spec, 'topology')
      self.assertEqual(step['command'][:3],
                       ['python', '-m', 'workers.topology_gen'])
      env = _env(step)
      self.assertEqual((env['EDGE_PODS'], env['EDGE_SERVERS']),
                       (str(pods), str(servers)), workload)
      generated = topology_gen.generate(
          int(_expand(_flag(step, 'pods'), env)),
          int(_expand(_flag(step, 'edge_servers'), env)),
          pod_address=_flag(step, 'pod_address'),
          pod_health=_flag(step, 'pod_health'),
          server_address=_flag(step, 'server_address'),
          server_health=_flag(step, 'server_health'))
      self.assertLen(generated.pods, pods)
      self.assertEqual(generated.pods[0].address, 'edge-0.edge:8000')
      self.assertEqual(generated.edge_servers[-1].name,
                       f'edge-server-{servers - 1}')

  def test_training_config_is_fedml_yaml_that_resolves(self):
    config_map = next(o for o in self.cluster if o['kind'] == 'ConfigMap'
                      and o['metadata']['name'].startswith('tff-edge-config'))
    text = config_map['data']['train.yaml']
    raw = yaml.safe_load(text)
    self.assertLessEqual(set(raw), set(config_lib.SECTIONS))
    self.assertIn('train_args', raw)
    path = os.path.join(self.create_tempdir().full_path, 'train.yaml')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
    overrides = config_lib.parse_yaml(path)
    config = plan.resolve_config(overrides.values, {})
    self.assertEqual(config.task, 'fashion_mnist')
    pods = _one(self.cluster, 'StatefulSet', 'edge')['spec']['replicas']
    self.assertGreaterEqual(config.num_clients, pods)  # no empty pod
    # The pods mount this ConfigMap under the name kustomize gave it.
    # (and the CA's public ConfigMap from make_secrets.sh, by its own name).
    names = {v['configMap']['name'] for _, _, spec in _pod_specs(self.cluster)
             for v in spec['volumes'] if 'configMap' in v}
    self.assertEqual(names, {config_map['metadata']['name'], 'tff-edge-ca'})

  def test_network_policies(self):
    policies = [o for o in self.cluster if o['kind'] == 'NetworkPolicy']
    by_tier = {}
    for policy in policies:
      tier = policy['spec']['podSelector']['matchLabels'][LABEL]
      by_tier[tier] = policy
      self.assertEqual(sorted(policy['spec']['policyTypes']),
                       ['Egress', 'Ingress'])
    self.assertEqual(set(by_tier), {'edge', 'edge-server', 'coordinator'})

    def peer(rule_peer):
      if 'namespaceSelector' in rule_peer:  # Whole namespace, any pod.
        self.assertNotIn('podSelector', rule_peer)
        return 'namespace ' + rule_peer['namespaceSelector']['matchLabels'][
            'kubernetes.io/metadata.name']
      return rule_peer['podSelector']['matchLabels'][LABEL]

    def ingress(tier):
      rules = by_tier[tier]['spec'].get('ingress', [])
      return [([peer(p) for p in rule['from']],
               [(p['protocol'], p['port']) for p in rule['ports']])
              for rule in rules]

    # Every tier: Prometheus in the monitoring namespace, on /metrics only.
    scrape = (['namespace monitoring'], [('TCP', METRICS_PORT)])
    # Edge pods: only the edge-server tier, only the TLS port (not the
    # executor's 8002 nor the health port 8001, which the kubelet reaches
    # from the node, as NetworkPolicy always allows).
    self.assertEqual(ingress('edge'),
                     [(['edge-server'], [('TCP', 8000)]), scrape])
    self.assertEqual(ingress('edge-server'),
                     [(['coordinator'], [('TCP', 7000)]), scrape])
    self.assertEqual(ingress('coordinator'), [scrape])
    self.assertEqual(by_tier['edge']['spec']['egress'], [])
    # Every pod of every workload is isolated by one of them.
    for workload, labels, _ in _pod_specs(self.cluster):
      self.assertTrue(any(_selects(p, labels) for p in policies), workload)

  def test_every_tier_serves_metrics_for_prometheus(self):
    for kind, name, container in (('StatefulSet', 'edge', 'edge-pod'),
                                  ('StatefulSet', 'edge-server', 'edge-server'),
                                  ('Job', 'coordinator', 'coordinator')):
      template = _one(self.cluster, kind, name)['spec']['template']
      annotations = template['metadata']['annotations']
      self.assertEqual(annotations['prometheus.io/scrape'], 'true', name)
      self.assertEqual(annotations['prometheus.io/port'], str(METRICS_PORT))
      self.assertEqual(annotations['prometheus.io/path'], '/metrics')
      self.assertEqual(annotations['prometheus.io/scheme'], 'https')
      main = _container(template['spec'], container)
      ports = {p['name']: p['containerPort'] for p in main['ports']}
      self.assertEqual(ports['metrics'], METRICS_PORT, name)
      command = ' '.join(main['command'])
      self.assertIn(f'--metrics_port={METRICS_PORT}', command, name)
    # The local overlay runs the same commands (without annotations).
    for pod in (o for o in self.local if o['kind'] == 'Pod'):
      main = pod['spec']['containers'][0]
      self.assertIn(f'--metrics_port={METRICS_PORT}',
                    ' '.join(main['command']), pod['metadata']['name'])

  def test_probes_run_inside_the_pod_against_the_loopback_health_port(self):
    for kind, name, port in (('StatefulSet', 'edge', 8001),
                             ('StatefulSet', 'edge-server', 7001)):
      spec = _one(self.cluster, kind, name)['spec']['template']['spec']
      main = spec['containers'][0]
      # Only TLS ports are container ports: the service's, and /metrics
      # (mutual TLS, monitoring role only: workers.metrics).
      self.assertEqual([p['containerPort'] for p in main['ports']],
                       [8000 if name == 'edge' else 7000, METRICS_PORT])
      for probe in ('startupProbe', 'livenessProbe', 'readinessProbe'):
        command = main[probe]['exec']['command']
        self.assertEqual(command[:3], ['python', '-m', 'workers.health_probe'])
        self.assertRegex(command[3], rf'^--probe=127\.0\.0\.1:{port}/'
                         r'(healthz|readyz)$', f'{name} {probe}')

  def test_every_container_has_resources_and_a_locked_down_context(self):
    for workload, _, spec in _pod_specs(self.cluster):
      pod_context = spec['securityContext']
      self.assertTrue(pod_context['runAsNonRoot'], workload)
      self.assertNotEqual(pod_context.get('runAsUser'), 0)
      self.assertFalse(spec.get('automountServiceAccountToken', True))
      for container in _containers(spec):
        where = f'{workload}/{container["name"]}'
        for bound in ('requests', 'limits'):
          self.assertEqual(set(container['resources'][bound]),
                           {'cpu', 'memory'}, where)
        context = container['securityContext']
        self.assertTrue(context['runAsNonRoot'], where)
        self.assertTrue(context['readOnlyRootFilesystem'], where)
        self.assertFalse(context['allowPrivilegeEscalation'], where)
        self.assertIn('ALL', context['capabilities']['drop'], where)
        # A read-only root: /tmp (and nginx's run dir) are emptyDirs.
        mounts = {m['mountPath']: m['name']
                  for m in container.get('volumeMounts', [])}
        if container['command'][0] == 'python':
          self.assertIn('/tmp', mounts, where)
        volumes = {v['name']: v for v in spec['volumes']}
        for path in ('/tmp', '/run/tls'):
          if path in mounts:
            self.assertIn('emptyDir', volumes[mounts[path]], where)

  def test_long_running_containers_have_probes(self):
    for kind in ('StatefulSet', 'Deployment'):
      for obj in (o for o in self.cluster if o['kind'] == kind):
        for container in obj['spec']['template']['spec']['containers']:
          for probe in ('livenessProbe', 'readinessProbe'):
            self.assertIn(probe, container,
                          f'{obj["metadata"]["name"]}/{container["name"]}')

  def test_disruption_budgets_cover_both_long_running_tiers(self):
    budgets = {o['metadata']['name']: o for o in self.cluster
               if o['kind'] == 'PodDisruptionBudget'}
    for name in ('edge', 'edge-server'):
      labels = _one(self.cluster, 'StatefulSet',
                    name)['spec']['template']['metadata']['labels']
      selector = budgets[name]['spec']['selector']['matchLabels']
      self.assertTrue(all(labels.get(k) == v for k, v in selector.items()))
      self.assertEqual(budgets[name]['spec']['maxUnavailable'], 1)

  # The local (podman) overlay.

  def test_local_overlay_is_podman_playable_and_complete(self):
    kinds = {o['kind'] for o in self.local}
    self.assertLessEqual(kinds, PODMAN_KINDS)
    pods = {o['metadata']['name']: o for o in self.local if o['kind'] == 'Pod'}
    edge = sorted(n for n in pods if re.fullmatch(r'edge-\d+', n))
    self.assertGreaterEqual(len(edge), 10)
    self.assertEqual(sorted(n for n in pods if n.startswith('edge-server-')),
                     ['edge-server-0', 'edge-server-1'])
    self.assertIn('coordinator', pods)
    claims = {o['metadata']['name'] for o in self.local
              if o['kind'] == 'PersistentVolumeClaim'}
    self.assertLessEqual({f'data-{n}' for n in edge}, claims)
    for name, pod in pods.items():
      for container in _containers(pod['spec']):
        where = f'{name}/{container["name"]}'
        text = ' '.join(container['command'] + container.get('args', []))
        # podman 4.3 neither expands $(VAR) nor knows fieldRef: resolved.
        self.assertNotRegex(text, r'\$\([A-Z_]+\)', where)
        self.assertNotIn('.edge:', text, where)
        self.assertNotIn('.edge-server:', text, where)
        self.assertFalse(
            any('valueFrom' in e for e in container.get('env', [])), where)
        for probe in ('startupProbe', 'livenessProbe', 'readinessProbe'):
          self.assertNotIn(probe, container, where)
    self.assertEqual(_flag(_container(pods['edge-3']['spec'], 'shards'),
                           'pod_name'), 'edge-3')

  def test_local_containers_are_the_cluster_containers(self):
    # Same commands (after the kubelet's expansion), resources and security
    # contexts as the cluster's pod templates: one source, no drift.
    templates = {name: spec for name, _, spec in _pod_specs(self.cluster)}
    pods = {o['metadata']['name']: o['spec'] for o in self.local
            if o['kind'] == 'Pod'}
    for pod_name, spec in pods.items():
      workload = re.sub(r'-\d+$', '', pod_name)
      template = templates[workload]
      self.assertEqual([c['name'] for c in _containers(spec)],
                       [c['name'] for c in _containers(template)])
      for local, cluster in zip(_containers(spec), _containers(template)):
        env = {k: (pod_name if v is None else v)
               for k, v in _env(cluster).items()}
        expected = [_expand(a, env) for a in cluster['command']]
        expected = [re.sub(r'\}\.(edge|edge-server):', '}:', a)
                    for a in expected]
        self.assertEqual(local['command'], expected, pod_name)
        self.assertEqual(local['resources'], cluster['resources'])
        self.assertEqual(local['securityContext'], cluster['securityContext'])
        self.assertEqual(local['volumeMounts'], cluster['volumeMounts'])
      self.assertEqual(spec['securityContext'], template['securityContext'])

  # Scaling.

  def test_scaling_to_20_edge_pods_is_one_line(self):
    tmp = self.create_tempdir().full_path
    shutil.copytree(os.path.join(K8S, 'base'), os.path.join(tmp, 'base'))
    overlay = os.path.join(tmp, 'overlays', 'cluster')
    shutil.copytree(os.path.join(K8S, 'overlays', 'cluster'), overlay)
    path = os.path.join(overlay, 'kustomization.yaml')
    with open(path, encoding='utf-8') as f:
      before = f.read().splitlines()
    after = list(before)
    at = next(i for i, line in enumerate(before)
              if re.match(r'\s*- name: edge\s*(#.*)?$', line))
    self.assertRegex(after[at + 1], r'^\s*count: \d+$')
    after[at + 1] = re.sub(r'\d+', '20', after[at + 1])
    changed = [line for line in difflib.unified_diff(before, after, n=0)
               if line.startswith(('+', '-')) and
               not line.startswith(('+++', '---'))]
    self.assertLen(changed, 2)  # one line out, one line in
    with open(path, 'w', encoding='utf-8') as f:
      f.write('\n'.join(after) + '\n')

    scaled = _render(overlay)
    self._validate(scaled, 'scaled')
    edge = _one(scaled, 'StatefulSet', 'edge')
    self.assertEqual(edge['spec']['replicas'], 20)
    self.assertEqual(
        _env(_container(edge['spec']['template']['spec'], 'shards'))
        ['EDGE_PODS'], '20')
    for kind, name in (('StatefulSet', 'edge-server'), ('Job', 'coordinator')):
      step = _container(_one(scaled, kind, name)['spec']['template']['spec'],
                        'topology')
      env = _env(step)
      self.assertEqual(env['EDGE_PODS'], '20', name)
      generated = topology_gen.generate(int(env['EDGE_PODS']),
                                        int(env['EDGE_SERVERS']))
      self.assertEqual([p.name for p in generated.pods],
                       [f'edge-{i}' for i in range(20)])

    # The podman overlay takes the same one line (render.py --pods).
    out = os.path.join(tmp, 'local20')
    result = subprocess.run(
        [sys.executable, os.path.join(K8S, 'render.py'), '--pods=20',
         f'--out_dir={out}'], text=True, capture_output=True, check=False,
        timeout=120)
    self.assertEqual(result.returncode, 0, result.stderr)
    local = _render(out)
    pods = [o for o in local if o['kind'] == 'Pod']
    self.assertLen([p for p in pods
                    if re.fullmatch(r'edge-\d+', p['metadata']['name'])], 20)
    for pod in pods:
      for container in _containers(pod['spec']):
        if container['name'] == 'topology':
          self.assertEqual(_flag(container, 'pods'), '20')

  # Secrets.

  def test_make_secrets_gives_every_node_its_own_entry_and_no_ca_key(self):
    tmp = self.create_tempdir().full_path
    result = subprocess.run(
        ['bash', os.path.join(K8S, 'make_secrets.sh'), f'--dir={tmp}/s',
         '--pods=3', '--edge-servers=2'], text=True, capture_output=True,
        check=False, cwd=SOURCE_ROOT, timeout=120,
        env={**os.environ, 'PYTHON': sys.executable})
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(os.path.join(tmp, 's', 'secrets.yaml'), encoding='utf-8') as f:
      secrets = {d['metadata']['name']: d for d in yaml.safe_load_all(f) if d}
    self._validate(list(secrets.values()), 'secrets')
    keys = {name: set(s['data']) for name, s in secrets.items()}
    # No edge pod key or SecAgg secret: pods make their own.
    self.assertEqual(set(secrets), {'tff-edge-server-tls',
                                    'tff-coordinator-tls', 'tff-edge-ca'})
    self.assertFalse(any(name.startswith('edge-') and name.endswith('.key')
                         and not name.startswith('edge-server')
                         for k in keys.values() for name in k))
    self.assertFalse(os.path.exists(os.path.join(tmp, 's', 'secagg')))
    self.assertEqual(sorted(f for f in os.listdir(os.path.join(tmp, 's',
                                                              'certs'))
                            if f.endswith('.key')),
                     ['ca.key', 'coordinator.key', 'edge-server-0.key',
                      'edge-server-1.key'])
    self.assertEqual(keys['tff-edge-server-tls'], {'ca.crt'} | {
        f'edge-server-{j}.{ext}' for j in range(2) for ext in ('crt', 'key')})
    self.assertEqual(keys['tff-coordinator-tls'],
                     {'ca.crt', 'coordinator.crt', 'coordinator.key'})
    self.assertEqual(secrets['tff-edge-ca']['kind'], 'ConfigMap')
    self.assertEqual(keys['tff-edge-ca'], {'ca.crt'})
    self.assertFalse(any('ca.key' in k for k in keys.values()))
    # The names the manifests mount.
    mounted = {v['secret']['secretName'] for _, _, spec in
               _pod_specs(self.cluster) for v in spec['volumes']
               if 'secret' in v}
    self.assertEqual(mounted, set(secrets) - {'tff-edge-ca'})

  def test_a_pod_csr_becomes_a_valid_kubernetes_object_and_certificate(self):
    tmp = self.create_tempdir().full_path
    subprocess.run([sys.executable, '-m', 'workers.certs', 'csr',
                    f'--dir={tmp}/pod', '--name=edge-3', '--role=edge-pod'],
                   check=True, cwd=SOURCE_ROOT, capture_output=True)
    ca_dir = f'{tmp}/ca'
    subprocess.run([sys.executable, '-m', 'workers.certs', f'--out_dir={ca_dir}',
                    '--nodes=coordinator'], check=True, cwd=SOURCE_ROOT,
                   capture_output=True)
    request = json.loads(subprocess.run(
        [sys.executable, os.path.join(K8S, 'csr_object.py'), 'request',
         f'--csr={tmp}/pod/edge-3.csr', '--node=edge-3'], check=True,
        capture_output=True, text=True).stdout)
    self._validate([request], 'csr')
    self.assertEqual(request['spec']['signerName'], 'tff-edge.io/node')
    self.assertNotIn(b'PRIVATE', base64.b64decode(request['spec']['request']))
    # As the API returns it once `kubectl certificate approve` ran.
    request['status'] = {'conditions': [{
        'type': 'Approved', 'status': 'True', 'reason': 'OperatorApproved',
        'message': 'checked', 'lastUpdateTime': '2026-01-01T00:00:00Z'}]}
    with open(f'{tmp}/edge-3.csr', 'wb') as f:
      f.write(base64.b64decode(request['spec']['request']))
    subprocess.run([sys.executable, '-m', 'workers.certs', 'sign',
                    f'--ca_dir={ca_dir}', f'--csr={tmp}/edge-3.csr',
                    '--name=edge-3', '--role=edge-pod', f'--out={tmp}/edge-3.crt'],
                   check=True, cwd=SOURCE_ROOT, capture_output=True)
    signed = json.loads(subprocess.run(
        [sys.executable, os.path.join(K8S, 'csr_object.py'), 'status',
         f'--cert={tmp}/edge-3.crt'], input=json.dumps(request), check=True,
        capture_output=True, text=True).stdout)
    self._validate([signed], 'csr-status')
    cert = base64.b64decode(signed['status']['certificate'])
    with open(f'{tmp}/pod/edge-3.crt', 'wb') as f:
      f.write(cert)
    files = tls.TlsFiles.from_dir(f'{tmp}/pod', 'edge-3', ca_dir=ca_dir)
    self.assertEqual(files.identity(), ('edge-pod', 'edge-3'))
    # Not approved: no certificate.
    del request['status']
    refused = subprocess.run(
        [sys.executable, os.path.join(K8S, 'csr_object.py'), 'status',
         f'--cert={tmp}/edge-3.crt'], input=json.dumps(request),
        capture_output=True, text=True)
    self.assertEqual(refused.returncode, 2)
    self.assertIn('kubectl certificate approve', refused.stderr)

if __name__ == '__main__':
  absltest.main()
