"""SecAgg+ secure aggregation: the protocol core the pods and servers run.

Bell, Bonawitz, Gascon, Lepoint, Raykova (CCS 2020) over Bonawitz et al.'s
(CCS 2017) double masking, with signed per-round keys, a committed graph
seed, a consistency quorum and per-party replay records. The party is a pod.
See docs/secagg.md for the threat model, the stages and the guarantees.

  messages    strict wire decoding, round ids and tags, errors
  shamir      t-of-k Shamir sharing over GF(2^521 - 1)
  prg         ChaCha20 mask expansion mod 2^b, b-bit packing (numpy)
  graph       Harary graph H(k, n) with seeded random labels
  keys        Ed25519 identities, X25519 round keys, rosters (static or CA)
  policy      the parameters every party derives for itself (k, t, q, m)
  crypto      transcript hashes, HKDF, share AEAD
  state       served-rounds record on the pod's disk
  maskfile    the pod's mask file for the TF computation
  party       a party's state machine
  server      edge-server sums and the coordinator's round
  simulation  honest in-process relay with dropouts (tests, benchmark)
"""
