"""What every party enforces: the round parameters it derives by itself.

The aggregation side proposes only the participant list, the bit width and
the vector length. The degree k, the Shamir threshold t, the consistency
quorum q and the minimum number of parties m follow from the participant
count n by this policy, which each pod holds locally (its flags), so a lying
server cannot lower them. All honest parties must run the same policy; if
they do not, their transcripts differ and the round fails before anything
is revealed.

Parameters (n = number of parties that advertised keys and revealed):

* k = `neighbors` or min(n - 1, 2 * ceil(log2 n)): SecAgg+'s degree.
* t = `threshold` or floor(`threshold_ratio` * k) + 1 (default > k/2): a
  party's secrets are shared t-of-k among its neighbours. Fewer than t
  colluding neighbours learn nothing of them; t surviving neighbours are
  needed to recover a party that drops.
* q = floor(`quorum_ratio` * n) + 1 (default > 2n/3): a party reveals shares
  only after q valid signatures on the same survivor list. Two conflicting
  lists cannot both gather q signatures unless at least 2q - n parties sign
  both, i.e. collude (Bonawitz et al. 2017, section 4.2, with the quorum
  separated from t because SecAgg+'s t counts neighbours, not parties).
* m = `min_parties`: fewer parties than m in the participant list or among
  the survivors whose inputs are summed, and the party refuses.
"""

from __future__ import annotations

import dataclasses

from workers.secagg import graph
from workers.secagg import messages
from workers.secagg import prg

DEFAULT_MIN_PARTIES = 3


@dataclasses.dataclass(frozen=True)
class RoundParams:
  parties: int
  neighbors: int
  threshold: int
  quorum: int
  min_parties: int

  def to_json(self) -> dict[str, int]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A party's local rules for every round it joins."""
  min_parties: int = DEFAULT_MIN_PARTIES
  threshold_ratio: float = 0.5
  threshold: int | None = None
  neighbors: int | None = None
  quorum_ratio: float = 2 / 3
  max_attempts: int = 3
  max_parties: int = 100_000
  max_length: int = 1 << 25

  def __post_init__(self):
    if self.min_parties < 2:
      raise ValueError('min_parties must be at least 2: a sum over one party '
                       'is that party\'s input')
    if not 0 <= self.threshold_ratio < 1:
      raise ValueError('threshold_ratio must be in [0, 1)')
    if not 0.5 <= self.quorum_ratio < 1:
      raise ValueError('quorum_ratio must be in [0.5, 1): a quorum of half '
                       'or less lets two survivor lists both pass')
    if self.threshold is not None and self.threshold < 2:
      raise ValueError('threshold must be at least 2')
    if not 1 <= self.max_attempts <= messages.MAX_ATTEMPT:
      raise ValueError(f'max_attempts must be in [1, {messages.MAX_ATTEMPT}]')
    if not 1 <= self.max_length <= prg.MAX_LENGTH:
      raise ValueError('max_length out of range')

  def derive(self, parties: int) -> RoundParams:
    """The parameters for a round of `parties` parties, else Refused."""
    if parties < self.min_parties:
      raise messages.Refused(f'{parties} parties, fewer than the minimum '
                             f'{self.min_parties}')
    if parties > self.max_parties:
      raise messages.Refused(f'{parties} parties, more than the maximum '
                             f'{self.max_parties}')
    if self.neighbors is None:
      k = graph.default_degree(parties)
    else:
      k = min(self.neighbors, parties - 1)
      if k < parties - 1 and k % 2 and parties % 2:
        k -= 1  # H(k, n) is regular only for even k when n is odd.
    if self.threshold is None:
      t = int(self.threshold_ratio * k) + 1
    else:
      t = self.threshold
    t = max(t, 2) if k >= 2 else t
    if t > k:
      raise messages.Refused(f'threshold {t} exceeds the {k} neighbours of a '
                             f'{parties}-party round')
    q = max(int(self.quorum_ratio * parties) + 1, self.min_parties)
    return RoundParams(parties, graph.check_degree(k, parties), t, q,
                       self.min_parties)
