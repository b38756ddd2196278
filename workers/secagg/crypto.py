"""Transcript hashes, key derivation and share encryption of a SecAgg+ round.

Every derived value is bound to the round's transcript, so nothing from one
run, round, attempt or participant list can be replayed into another:

* `advert_message`: what a party signs when it advertises its round keys:
  run nonce, round, attempt, its id, both X25519 public keys and a
  commitment SHA-256(r) to 32 random bytes r.
* `context`: SHA-256 over the run nonce, round, attempt, bit width, vector
  length, derived parameters and every advert of the participant list.
* `graph_seed`: SHA-256(context, r of every participant). Each party reveals
  r only after the participant list (and so every commitment) is fixed, so
  the seed is uniform as long as one party in the list is honest: neither
  the server nor colluding parties can steer who neighbours whom
  (commit-then-reveal; see docs/secagg.md for the cost of that choice).
* `round_salt` = SHA-256(context, seed): the HKDF salt of every share key,
  pair mask and self mask, and the AEAD associated data with sender and
  receiver.

Keys are HKDF-SHA256 (RFC 5869) of X25519 outputs (RFC 7748). Share
ciphertexts are ChaCha20-Poly1305 (RFC 8439) under a key used once per
direction of one pair in one round, so its zero nonce never repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from workers.secagg import messages
from workers.secagg import shamir

VERSION = b'secagg+ v1'
_ZERO_NONCE = bytes(12)
# Share plaintext: x-coordinate (4) | b-share (66) | s-share (66).
SHARE_PLAINTEXT_BYTES = 4 + 2 * shamir.SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + 16


def lp(*fields: bytes | str | int) -> bytes:
  """Unambiguous encoding: each field length-prefixed (ints as 8 bytes)."""
  out = bytearray()
  for field in fields:
    if isinstance(field, int):
      field = field.to_bytes(8, 'big', signed=True)
    elif isinstance(field, str):
      field = field.encode('utf-8')
    out += len(field).to_bytes(4, 'big') + field
  return bytes(out)


def _rid(rid: messages.RoundId) -> bytes:
  return lp(rid.run, rid.round, rid.attempt)


def commitment(rid: messages.RoundId, party: str, reveal: bytes) -> bytes:
  return hashlib.sha256(lp(VERSION, b'commit', rid.run, rid.round,
                           rid.attempt, party, reveal)).digest()


def advert_message(rid: messages.RoundId, party: str, c_public: bytes,
                   s_public: bytes, commit: bytes) -> bytes:
  return lp(VERSION, b'advertise', _rid(rid), party, c_public, s_public,
            commit)


def context(rid: messages.RoundId, bits: int, length: int,
            params: Sequence[int],
            adverts: Sequence[tuple[str, bytes, bytes, bytes, bytes]]
            ) -> bytes:
  """Hash of the round's fixed part; adverts are (id, c, s, commit, sig)."""
  digest = hashlib.sha256(lp(VERSION, b'context', _rid(rid), bits, length,
                             *params, len(adverts)))
  for advert in adverts:
    digest.update(lp(*advert))
  return digest.digest()


def graph_seed(ctx: bytes, reveals: Sequence[bytes]) -> bytes:
  digest = hashlib.sha256(lp(VERSION, b'graph seed', ctx, len(reveals)))
  for reveal in reveals:
    digest.update(lp(reveal))
  return digest.digest()


def round_salt(ctx: bytes, seed: bytes) -> bytes:
  return hashlib.sha256(lp(VERSION, b'round salt', ctx, seed)).digest()


def consistency_message(salt: bytes, survivors: Sequence[str]) -> bytes:
  return lp(VERSION, b'survivors', salt, len(survivors), *survivors)


def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
  return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
              info=info).derive(secret)


def _exchange(secret: x25519.X25519PrivateKey,
              public: x25519.X25519PublicKey) -> bytes:
  try:
    return secret.exchange(public)
  except ValueError:  # All-zero output: a low-order key got through.
    raise messages.ProtocolError('X25519 agreement gave the zero point'
                                 ) from None


def share_key(secret: x25519.X25519PrivateKey,
              peer: x25519.X25519PublicKey, salt: bytes, sender: str,
              receiver: str) -> bytes:
  """AEAD key for shares from `sender` to `receiver` (one per direction)."""
  return hkdf(_exchange(secret, peer), salt,
               lp(VERSION, b'share key', sender, receiver))


def pair_key(secret: x25519.X25519PrivateKey, peer: x25519.X25519PublicKey,
             salt: bytes, party_a: str, party_b: str) -> bytes:
  """PRG key of the pairwise mask of {a, b}: the same at both ends."""
  low, high = sorted((party_a, party_b))
  return hkdf(_exchange(secret, peer), salt,
               lp(VERSION, b'pair mask', low, high))


def self_mask_key(seed: bytes, salt: bytes, party: str) -> bytes:
  return hkdf(seed, salt, lp(VERSION, b'self mask', party))


def share_ad(salt: bytes, sender: str, receiver: str) -> bytes:
  return lp(VERSION, b'share', salt, sender, receiver)


def seal_shares(key: bytes, ad: bytes, x: int, b_share: int, s_share: int
                ) -> bytes:
  plaintext = (x.to_bytes(4, 'big') + shamir.encode(b_share) +
               shamir.encode(s_share))
  return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, ad)


def open_shares(key: bytes, ad: bytes, ciphertext: bytes
                ) -> tuple[int, int, int]:
  """(x, b-share, s-share) from a share ciphertext, else ProtocolError."""
  if len(ciphertext) != SHARE_CIPHERTEXT_BYTES:
    raise messages.ProtocolError(
        f'share ciphertext is {len(ciphertext)} bytes, expected '
        f'{SHARE_CIPHERTEXT_BYTES}')
  try:
    plaintext = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, ad)
  except InvalidTag:
    raise messages.ProtocolError('share ciphertext does not authenticate '
                                 '(tampered, misrouted or replayed)') from None
  x = int.from_bytes(plaintext[:4], 'big')
  try:
    b_share = shamir.decode(plaintext[4:4 + shamir.SHARE_BYTES])
    s_share = shamir.decode(plaintext[4 + shamir.SHARE_BYTES:])
  except shamir.ShareError as e:
    raise messages.ProtocolError(f'share plaintext: {e}') from None
  return x, b_share, s_share
