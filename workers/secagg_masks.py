"""Pairwise SecAgg masks (Bonawitz et al. 2017), computed where the keys live.

Every client has an X25519 key pair derived from its pod's 32-byte secret
(HKDF, so one K8s Secret per pod serves all its clients). For a round with
participant set P, client i adds, for every other participant j, the
keystream of ChaCha20 (RFC 8439) keyed by HKDF(X25519(sk_i, pk_j)) — with
sign + if i < j and - otherwise — to its quantized update, modulo each
tensor's modulus. Over P the masks cancel; over any strict subset they do
not, so a pod's or an edge server's partial sum is uniformly random.

The HKDF salt binds each seed to the round tag and to the exact participant
set with its public keys: a redo among survivors draws fresh masks, and
masks of one round say nothing about another.

This module needs no TensorFlow: edge pods run it in their small Python.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import numpy as np

SECRET_BYTES = 32
MASK_DIR = 'secagg'  # Under the executor's working directory.
MASK_SUFFIX = '.mask'
# Masks are int64 and sums of two stay below 2**63.
MAX_MODULUS = 2**62
_TAG = re.compile(r'^[A-Za-z0-9_-]{1,128}$')


class SecAggError(ValueError):
  """A SecAgg request or key cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """The secure-summed tensors of a round, flattened: sizes and moduli."""
  sizes: tuple[int, ...]
  moduli: tuple[int, ...]

  def __post_init__(self):
    if len(self.sizes) != len(self.moduli):
      raise SecAggError('layout: sizes and moduli differ in length')
    for m in self.moduli:
      if not 2 <= m <= MAX_MODULUS:
        raise SecAggError(f'layout: modulus {m} outside [2, 2**62]')

  @property
  def total(self) -> int:
    return sum(self.sizes)

  def to_json(self) -> list[list[int]]:
    return [[s, m] for s, m in zip(self.sizes, self.moduli)]

  @classmethod
  def from_json(cls, raw) -> 'Layout':
    try:
      return cls(tuple(int(s) for s, _ in raw), tuple(int(m) for _, m in raw))
    except (TypeError, ValueError) as e:
      raise SecAggError(f'layout: expected [[size, modulus], ...]: {e}'
                        ) from None


def chacha20_keystream(key: bytes, num_bytes: int, nonce: bytes = bytes(12),
                       counter: int = 0) -> bytes:
  """RFC 8439 ChaCha20 keystream (OpenSSL's, via `cryptography`)."""
  if len(key) != 32 or len(nonce) != 12:
    raise SecAggError('ChaCha20 needs a 32-byte key and a 12-byte nonce')
  # cryptography's 16-byte nonce is the 32-bit block counter then the nonce.
  full_nonce = counter.to_bytes(4, 'little') + nonce
  encryptor = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
  return encryptor.update(bytes(num_bytes)) + encryptor.finalize()


def new_secret() -> bytes:
  return os.urandom(SECRET_BYTES)


def load_or_create_secret(path: str) -> bytes:
  """The pod secret in `path`, created (mode 0600) if missing."""
  if not os.path.exists(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
      f.write(new_secret())
  with open(path, 'rb') as f:
    secret = f.read()
  if len(secret) != SECRET_BYTES:
    raise SecAggError(f'SecAgg key file {path} holds {len(secret)} bytes, not '
                      f'{SECRET_BYTES}; delete it to make a new one or mount '
                      'the right secret')
  return secret


def client_private_key(pod_secret: bytes, client_id: str
                       ) -> x25519.X25519PrivateKey:
  raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
             info=b'tff-secagg client key\x00' + client_id.encode()
             ).derive(pod_secret)
  return x25519.X25519PrivateKey.from_private_bytes(raw)


def public_key_bytes(key: x25519.X25519PrivateKey) -> bytes:
  return key.public_key().public_bytes_raw()


def check_tag(tag: str) -> str:
  if not isinstance(tag, str) or not _TAG.match(tag):
    raise SecAggError(f'bad round tag {tag!r}: 1-128 of [A-Za-z0-9_-]')
  return tag


def _round_salt(tag: str, public_keys: Mapping[str, bytes]) -> bytes:
  digest = hashlib.sha256(b'tff-secagg round\x00' + tag.encode())
  for client in sorted(public_keys):
    digest.update(b'\x00' + client.encode() + b'\x00' + public_keys[client])
  return digest.digest()


def pair_seed(private_key: x25519.X25519PrivateKey, client_id: str,
              peer_id: str, peer_public: bytes, salt: bytes) -> bytes:
  """The 32-byte seed both ends of a pair derive, and only they."""
  shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(
      peer_public))
  low, high = sorted((client_id, peer_id))
  return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
              info=b'tff-secagg pair mask\x00' + low.encode() + b'\x00' +
              high.encode()).derive(shared)


def _expand(seed: bytes, layout: Layout) -> list[np.ndarray]:
  """Uniform values in [0, modulus) per tensor, from a seed."""
  stream = np.frombuffer(chacha20_keystream(seed, 8 * layout.total), np.uint64)
  out, offset = [], 0
  for size, modulus in zip(layout.sizes, layout.moduli):
    words = stream[offset:offset + size]
    offset += size
    if modulus & (modulus - 1) == 0:
      out.append(words & np.uint64(modulus - 1))
    else:  # Bias <= modulus / 2**64 <= 2**-2: moduli here are 2**k in practice.
      out.append(words % np.uint64(modulus))
  return out


def client_mask(private_key: x25519.X25519PrivateKey, client_id: str,
                public_keys: Mapping[str, bytes], tag: str,
                layout: Layout) -> np.ndarray:
  """Client `client_id`'s net mask for the round: int64, layout order."""
  if client_id not in public_keys:
    raise SecAggError(f'client {client_id} is not a participant of round '
                      f'{tag}')
  if public_keys[client_id] != public_key_bytes(private_key):
    raise SecAggError(
        f'the round lists a different public key for client {client_id} than '
        'the one this pod holds (the pod key changed since the coordinator '
        'read it); restart the run so it reads the current keys')
  salt = _round_salt(tag, public_keys)
  moduli = [np.uint64(m) for m in layout.moduli]
  total = [np.zeros(size, np.uint64) for size in layout.sizes]
  for peer in sorted(public_keys):
    if peer == client_id:
      continue
    seed = pair_seed(private_key, client_id, peer, public_keys[peer], salt)
    for i, words in enumerate(_expand(seed, layout)):
      if client_id < peer:
        total[i] = (total[i] + words) % moduli[i]
      else:
        total[i] = (total[i] + (moduli[i] - words)) % moduli[i]
  return np.concatenate(total).astype(np.int64) if total else np.zeros(
      0, np.int64)


def mask_path(root: str, tag: str, client_id: str) -> str:
  return os.path.join(root, MASK_DIR, tag, client_id + MASK_SUFFIX)


def write_masks(root: str, pod_secret: bytes, clients: Sequence[str],
                public_keys: Mapping[str, bytes], tag: str,
                layout: Layout) -> list[str]:
  """Writes the masks of `clients` (this pod's participants) under `root`.

  Masks of earlier rounds are deleted first: a round only ever reads its own.
  """
  check_tag(tag)
  mask_root = os.path.join(root, MASK_DIR)
  if os.path.isdir(mask_root):
    for old in os.listdir(mask_root):
      if old != tag:
        shutil.rmtree(os.path.join(mask_root, old), ignore_errors=True)
  os.makedirs(os.path.join(mask_root, tag), mode=0o700, exist_ok=True)
  paths = []
  for client in clients:
    mask = client_mask(client_private_key(pod_secret, client), client,
                       public_keys, tag, layout)
    path = mask_path(root, tag, client)
    with open(path + '.tmp', 'wb') as f:
      f.write(mask.astype('<i8').tobytes())
    os.replace(path + '.tmp', path)
    paths.append(path)
  return paths


def decode_public_keys(raw: Mapping[str, str]) -> dict[str, bytes]:
  """{client: hex} -> {client: 32 bytes}."""
  try:
    keys = {str(c): bytes.fromhex(k) for c, k in raw.items()}
  except (AttributeError, ValueError) as e:
    raise SecAggError(f'public keys must be hex strings: {e}') from None
  bad = [c for c, k in keys.items() if len(k) != 32]
  if bad:
    raise SecAggError(f'public keys of {bad[:3]} are not 32 bytes')
  return keys


class PodKeys:
  """A pod's SecAgg keys: one secret, a key pair per client it holds."""

  def __init__(self, secret: bytes, client_ids: Sequence[str]):
    self._secret = secret
    self.client_ids = tuple(client_ids)
    self.public_keys = {
        c: public_key_bytes(client_private_key(secret, c)).hex()
        for c in self.client_ids}

  def prepare_round(self, root: str, request: Mapping) -> dict:
    """Handles a mask request: {tag, clients, public_keys, layout}."""
    try:
      tag = check_tag(request['tag'])
      clients = [str(c) for c in request['clients']]
      public_keys = decode_public_keys(request['public_keys'])
      layout = Layout.from_json(request['layout'])
    except KeyError as e:
      raise SecAggError(f'mask request lacks {e}') from None
    foreign = sorted(set(clients) - set(self.client_ids))
    if foreign:
      raise SecAggError(f'asked for masks of clients {foreign[:5]} this pod '
                        'does not hold')
    write_masks(root, self._secret, clients, public_keys, tag, layout)
    return {'tag': tag, 'clients': len(clients)}
