"""Linux network namespaces as separate hosts on one machine (needs root).

One bridge in the root namespace (the coordinator's host) and, per node, a
namespace joined to it by a veth pair, with its own 10.x address. Traffic
between nodes then crosses real interfaces, as between hosts.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import threading
from typing import Callable, TypeVar

_T = TypeVar('_T')
_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def available() -> bool:
  """Root and the `ip` tool: namespaces can be made here."""
  return os.geteuid() == 0 and shutil.which('ip') is not None


def _ip(*args: str, check: bool = True) -> str:
  try:
    return subprocess.run(['ip', *args], check=check, capture_output=True,
                          text=True).stdout
  except subprocess.CalledProcessError as e:
    raise OSError(f'`ip {" ".join(args)}` failed: {e.stderr.strip()}') from None


def free_net() -> int:
  """An octet X such that no interface here has an address in 10.X/16."""
  used = set()
  for line in _ip('-o', '-4', 'addr').splitlines():
    for word in line.split():
      if word.startswith('10.'):
        used.add(int(word.split('.')[1]))
  for net in range(64, 250):
    if net not in used:
      return net
  raise OSError('no free 10.X.0.0/16 network for the cluster bridge')


def remove_stale() -> list[str]:
  """Deletes namespaces and bridges left by clusters whose process died.

  Names carry the creating process id (Network's tag), so a `kill -9`ed
  cluster's leftovers are recognized and removed by the next one.
  """
  removed = []
  for line in _ip('netns', 'list').splitlines():
    match = re.fullmatch(r'tff(\d+)[nx]\d+', line.split()[0]) if line else None
    if match and not os.path.exists(f'/proc/{match.group(1)}'):
      _ip('netns', 'delete', match.group(0), check=False)
      removed.append(match.group(0))
  for line in _ip('-o', 'link', 'show', 'type', 'bridge').splitlines():
    name = line.split(': ')[1].split('@')[0] if ': ' in line else ''
    match = re.fullmatch(r'tb(\d+)', name)
    if match and not os.path.exists(f'/proc/{match.group(1)}'):
      _ip('link', 'delete', name, check=False)
      removed.append(name)
  return removed


def call_in(namespace: str, fn: Callable[[], _T]) -> _T:
  """Runs `fn()` in a new thread that has entered `namespace` (needs root).

  A network namespace belongs to a thread, so sockets `fn` opens live in
  `namespace` while the rest of this process stays where it is: a probe or a
  readiness check from inside a node without starting a process there.
  """
  outcome: dict[str, object] = {}

  def run() -> None:
    try:
      fd = os.open(f'/var/run/netns/{namespace}', os.O_RDONLY)
      try:
        if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
          error = ctypes.get_errno()
          raise OSError(error, f'setns into {namespace}: {os.strerror(error)}')
      finally:
        os.close(fd)
      outcome['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      outcome['error'] = e

  thread = threading.Thread(target=run, name=f'in-{namespace}')
  thread.start()
  thread.join()  # The thread ends here, and its namespace with it.
  if 'error' in outcome:
    raise outcome['error']
  return outcome['value']


def command(namespace: str, argv: list[str]) -> list[str]:
  """`argv` run inside `namespace` (ip execs it: no extra process)."""
  return ['ip', 'netns', 'exec', namespace, *argv]


class Network:
  """A bridge 10.<net>.0.1/16 and namespaces attached to it."""

  def __init__(self, tag: str, net: int):
    if not 0 < net < 256:
      raise ValueError(f'net {net} is not an octet')
    self.tag = tag  # Short: interface names are at most 15 characters.
    self.net = net
    self.bridge = f'tb{tag}'
    self.gateway = f'10.{net}.0.1'
    self.namespaces: list[str] = []
    self._veths: list[str] = []

  def create(self) -> 'Network':
    _ip('link', 'add', self.bridge, 'type', 'bridge')
    _ip('addr', 'add', f'{self.gateway}/16', 'dev', self.bridge)
    _ip('link', 'set', self.bridge, 'up')
    return self

  def add_host(self, index: int, subnet: int, host: int) -> tuple[str, str]:
    """Makes namespace number `index` with address 10.<net>.<subnet>.<host>.

    Returns:
      (namespace name, its address).
    """
    namespace = f'tff{self.tag}n{index}'
    outer, inner = f'v{self.tag}o{index}', f'v{self.tag}i{index}'
    address = f'10.{self.net}.{subnet}.{host}'
    _ip('netns', 'add', namespace)
    self.namespaces.append(namespace)
    _ip('link', 'add', outer, 'type', 'veth', 'peer', 'name', inner)
    self._veths.append(outer)
    _ip('link', 'set', inner, 'netns', namespace)
    _ip('link', 'set', outer, 'master', self.bridge)
    _ip('link', 'set', outer, 'up')
    _ip('-n', namespace, 'addr', 'add', f'{address}/16', 'dev', inner)
    _ip('-n', namespace, 'link', 'set', inner, 'up')
    _ip('-n', namespace, 'link', 'set', 'lo', 'up')
    return namespace, address

  def destroy(self) -> None:
    for namespace in self.namespaces:
      _ip('netns', 'delete', namespace, check=False)
    for veth in self._veths:  # Usually gone with their namespace.
      _ip('link', 'delete', veth, check=False)
    _ip('link', 'delete', self.bridge, check=False)
    self.namespaces.clear()
    self._veths.clear()
