"""Runs TFF's C++ executor service (`worker_binary`) as a child process.

TFF's own `local_cpp_executor_factory` kills its worker only in `__del__`, so
a parent that dies (crash, `kill -9`) leaks a 180 MB worker. Ours asks the
kernel to kill the worker when the parent dies (PR_SET_PDEATHSIG) and stops it
explicitly on exit.

The worker speaks plaintext gRPC and runs whatever graph it is sent, and it
binds `[::]:port` with no option to do otherwise. It is therefore started
with the loopback bind shim (workers/native/loopback_bind.c, built by
setup.sh into `<venv>/lib/tff_edge/`) in LD_PRELOAD, which turns that bind
into 127.0.0.1, and after start its sockets are read from /proc: a worker
that listens on anything but loopback is killed and start() fails (fail
closed, e.g. when the shim is missing or the binary stops using glibc's
bind). Only processes of its own network namespace (pod) can reach it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import grpc
import portpicker

from workers import listeners

# Found without importing TFF (and TF): an edge pod's own process stays small.
WORKER_BINARY = os.path.join(
    importlib.util.find_spec('tensorflow_federated')
    .submodule_search_locations[0], 'data', 'worker_binary')
# The largest message any channel, server or nginx of the runtime accepts.
# A round's largest messages are the model (weights, about 4 bytes per
# parameter, once per edge server) and the round computation (a serialized
# TF graph); the coordinator refuses a message over the cap before sending
# it (tff_pipeline.distributed), naming this setting. Every tier must use
# the same value: set TFF_EDGE_MAX_MESSAGE_MB in each one's environment.
GRPC_MAX_MESSAGE_MB = int(os.environ.get('TFF_EDGE_MAX_MESSAGE_MB', '512'))
MAX_MESSAGE_ENV = 'TFF_EDGE_MAX_MESSAGE_MB'
GRPC_CHANNEL_OPTIONS = [
    ('grpc.max_message_length', GRPC_MAX_MESSAGE_MB * 1000 * 1000),
    ('grpc.max_receive_message_length', GRPC_MAX_MESSAGE_MB * 1000 * 1000),
    ('grpc.max_send_message_length', GRPC_MAX_MESSAGE_MB * 1000 * 1000),
]
_PR_SET_PDEATHSIG = 1
# The LD_PRELOAD library that keeps the worker on loopback (setup.sh builds
# it; the image has it at the same place under /opt/venv).
BIND_SHIM_ENV = 'TFF_EDGE_BIND_SHIM'
_LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '::1', '[::1]')
# log_path meaning "write to our own stdout/stderr" (pod logs go to stdout).
INHERIT_OUTPUT = '-'


class WorkerStartError(RuntimeError):
  """The executor service did not come up (or not on loopback only)."""


def bind_shim_path() -> str:
  """Where the loopback bind shim is ($TFF_EDGE_BIND_SHIM overrides)."""
  return os.environ.get(BIND_SHIM_ENV) or os.path.join(
      sys.prefix, 'lib', 'tff_edge', 'loopback_bind.so')


def _bind_shim() -> str:
  path = bind_shim_path()
  if not os.path.isfile(path):
    raise WorkerStartError(
        f'the loopback bind shim {path} is missing, and without it TFF\'s '
        'executor would listen on every interface; run ./setup.sh (it builds '
        'workers/native/loopback_bind.c with gcc)')
  return path


# Resolved now, in the parent: the child must not dlopen between fork and
# exec (another thread may hold the loader or malloc lock; seen to deadlock).
_PRCTL = ctypes.CDLL('libc.so.6', use_errno=True).prctl


def die_with_parent() -> None:
  # Runs in the child between fork and exec. The signal fires when the thread
  # that forked us exits, so workers are started from the main thread.
  _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
  os.setpgrp()  # Ctrl-C in a terminal goes to the parent, which stops us.


def terminate(process: Optional[subprocess.Popen], grace: float) -> None:
  """SIGTERM `process` if it runs; SIGKILL it after `grace` seconds."""
  if process is not None and process.poll() is None:
    process.terminate()
    try:
      process.wait(grace)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


class WorkerProcess:
  """One TFF executor service on `host:port`, tied to this process's life."""

  def __init__(self, port: Optional[int] = None, host: str = '127.0.0.1',
               max_concurrent_computation_calls: int = -1,
               env: Optional[dict[str, str]] = None,
               log_path: Optional[str] = None,
               intra_op_threads: Optional[int] = None,
               inter_op_threads: Optional[int] = None,
               cwd: Optional[str] = None):
    if host not in _LOOPBACK_HOSTS:
      raise ValueError(f'the executor listens on loopback only; {host!r} is '
                       'not a loopback address')
    self.host = host
    self._cwd = cwd  # Relative shard paths in computations resolve here.
    self.port = port or portpicker.pick_unused_port()
    self._max_calls = max_concurrent_computation_calls
    self._env = dict(os.environ if env is None else env)
    # TF's runtime in the worker sizes its thread pools from these.
    if intra_op_threads:
      self._env['TF_NUM_INTRAOP_THREADS'] = str(intra_op_threads)
    if inter_op_threads:
      self._env['TF_NUM_INTEROP_THREADS'] = str(inter_op_threads)
    self._log_path = log_path
    self._process: Optional[subprocess.Popen] = None
    self._log = None
    self._stub = None  # TFF's RemoteExecutorGrpcStub, made on first use.
    self._ready_channel: Optional[grpc.Channel] = None

  @property
  def target(self) -> str:
    return f'{self.host}:{self.port}'

  @property
  def pid(self) -> Optional[int]:
    return self._process.pid if self._process else None

  def start(self, timeout: float = 60.0) -> 'WorkerProcess':
    """Starts the service and waits until it answers."""
    args = [
        WORKER_BINARY,
        f'--port={self.port}',
        f'--max_concurrent_computation_calls={self._max_calls}',
        f'--grpc_max_message_length_megabytes={GRPC_MAX_MESSAGE_MB}',
    ]
    env = dict(self._env)
    env['LD_PRELOAD'] = ' '.join(
        p for p in (_bind_shim(), env.get('LD_PRELOAD', '')) if p)
    output = subprocess.DEVNULL
    if self._log_path == INHERIT_OUTPUT:
      output = None
    elif self._log_path:
      self._log = open(self._log_path, 'ab')
      output = self._log
    self._process = subprocess.Popen(
        args, stdout=output, stderr=output,
        env=env, cwd=self._cwd, preexec_fn=die_with_parent)
    # Fresh channels: an old one that saw the previous process die stays
    # idle and never reports ready again.
    self._stub = None
    if self._ready_channel is not None:
      self._ready_channel.close()
    self._ready_channel = self.channel()
    deadline = time.monotonic() + timeout
    while not self.ready():
      if self._process.poll() is not None:
        raise WorkerStartError(
            f'TFF worker on port {self.port} exited with status '
            f'{self._process.returncode}; see {self._log_path or "its stderr"}')
      if time.monotonic() > deadline:
        self.stop()
        raise WorkerStartError(
            f'TFF worker on port {self.port} not ready after {timeout:.0f}s')
    self._check_loopback_only()
    return self

  def _check_loopback_only(self) -> None:
    exposed = listeners.beyond_loopback(listeners.listening(self.pid))
    if exposed:
      self.stop(grace=0)
      raise WorkerStartError(
          f'TFF worker listened on {", ".join(map(str, exposed))}, beyond '
          f'loopback, and was stopped; the bind shim {bind_shim_path()} did '
          'not take effect (rebuild it with ./setup.sh)')

  def channel(self) -> grpc.Channel:
    return grpc.insecure_channel(self.target, GRPC_CHANNEL_OPTIONS)

  def ready(self, timeout: float = 0.2) -> bool:
    """Whether the service accepts gRPC connections."""
    if self._ready_channel is None or not self.alive():
      return False
    try:
      grpc.channel_ready_future(self._ready_channel).result(timeout=timeout)
      return True
    except grpc.FutureTimeoutError:
      return False

  def stub(self):
    """TFF's RemoteExecutorGrpcStub for this worker (imports TFF)."""
    if self._stub is None:
      # pylint: disable=g-import-not-at-top
      from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
      self._stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(
          self.channel())
    return self._stub

  def alive(self) -> bool:
    return self._process is not None and self._process.poll() is None

  def stop(self, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    terminate(self._process, grace)
    if self._log is not None:
      self._log.close()
      self._log = None

  def __enter__(self) -> 'WorkerProcess':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
