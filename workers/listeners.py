"""Which sockets a process listens on, read from /proc (Linux).

A socket a process holds appears as `socket:[inode]` among /proc/<pid>/fd;
the kernel's tables /proc/<pid>/net/{tcp,tcp6,udp,udp6} (of that process's
network namespace) give each inode's local address and state. A TCP socket
in state LISTEN, or a UDP socket with no peer, accepts traffic from whoever
can route to its address: loopback addresses only from the same namespace.

Used to fail closed (workers.worker_process refuses an executor that listens
beyond loopback) and by the tests that enumerate every listener the project
starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct
from typing import Iterable, Union

_TCP_LISTEN = '0A'
_UDP_UNCONNECTED = '07'

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclasses.dataclass(frozen=True)
class Listener:
  """One listening socket of one process."""
  pid: int
  protocol: str  # tcp, tcp6, udp or udp6
  address: Address
  port: int
  inode: int

  @property
  def loopback(self) -> bool:
    """Reachable only from the same network namespace."""
    address = self.address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
      address = address.ipv4_mapped
    return address.is_loopback

  @property
  def wildcard(self) -> bool:
    return self.address.is_unspecified

  def __str__(self) -> str:
    host = (f'[{self.address}]' if self.address.version == 6
            else str(self.address))
    return f'{self.protocol} {host}:{self.port} (pid {self.pid})'


def _decode(hex_address: str) -> tuple[Address, int]:
  # The kernel prints each 32-bit word of the address in native byte order.
  host, port = hex_address.split(':')
  words = [int(host[i:i + 8], 16) for i in range(0, len(host), 8)]
  raw = b''.join(struct.pack('=I', word) for word in words)
  return ipaddress.ip_address(raw), int(port, 16)


def socket_inodes(pid: int) -> set[int]:
  """Inodes of the sockets `pid` holds (empty if it is gone)."""
  inodes = set()
  try:
    fds = os.listdir(f'/proc/{pid}/fd')
  except OSError:
    return inodes
  for fd in fds:
    try:
      target = os.readlink(f'/proc/{pid}/fd/{fd}')
    except OSError:
      continue  # Closed meanwhile.
    if target.startswith('socket:['):
      inodes.add(int(target[8:-1]))
  return inodes


def listening(pid: int) -> list[Listener]:
  """The listening TCP and unconnected UDP sockets of process `pid`."""
  inodes = socket_inodes(pid)
  found = []
  if not inodes:
    return found
  for protocol in ('tcp', 'tcp6', 'udp', 'udp6'):
    try:
      with open(f'/proc/{pid}/net/{protocol}', encoding='ascii') as f:
        lines = f.read().splitlines()[1:]
    except OSError:
      continue
    for line in lines:
      fields = line.split()
      local, remote, state, inode = fields[1], fields[2], fields[3], int(
          fields[9])
      if inode not in inodes:
        continue
      if protocol.startswith('tcp') and state != _TCP_LISTEN:
        continue
      if protocol.startswith('udp') and (
          state != _UDP_UNCONNECTED or _decode(remote)[1] != 0):
        continue
      address, port = _decode(local)
      found.append(Listener(pid, protocol, address, port, inode))
  return found


def process_tree(pid: int) -> list[int]:
  """`pid` and all its live descendants (children of every thread)."""
  found, todo = [], [pid]
  while todo:
    current = todo.pop()
    found.append(current)
    try:
      tasks = os.listdir(f'/proc/{current}/task')
    except OSError:
      continue
    for task in tasks:
      try:
        with open(f'/proc/{current}/task/{task}/children',
                  encoding='ascii') as f:
          todo.extend(int(child) for child in f.read().split())
      except OSError:
        pass
  return found


def of_tree(pid: int) -> list[Listener]:
  """Every listener of `pid` and its descendants."""
  return [listener for p in process_tree(pid) for listener in listening(p)]


def beyond_loopback(found: Iterable[Listener]) -> list[Listener]:
  return [listener for listener in found if not listener.loopback]
