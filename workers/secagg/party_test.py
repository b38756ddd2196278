"""A lying server against real parties: every attack must be refused.

The server here is an honest `RoundServer` whose requests the test alters
before delivering them, plus (where stated) colluding parties: real Party
objects whose identity keys and received shares the adversary also holds.
Reading a colluder's session (its received shares) is the adversary's right,
hence the protected accesses.
"""
# pylint: disable=protected-access

import copy
import os

from absl.testing import absltest
from cryptography.hazmat.primitives.asymmetric import x25519
import numpy as np

from workers.secagg import crypto
from workers.secagg import keys
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import server as server_lib
from workers.secagg import shamir
from workers.secagg import testing

_BITS, _LENGTH = 16, 32
# 7 parties: complete graph (k = 6), t = 4 of 6, quorum q = 5 of 7.
_POLICY = policy_lib.Policy(min_parties=3)


class _Round:
  """Seven real parties, their inputs and a fresh run nonce."""

  def __init__(self, test, n=7, policy=_POLICY, state_dir=None):
    self.policy = policy
    self.parties, self.identities, self.roster = testing.make_parties(
        n, policy, state_dir=state_dir)
    self.names = sorted(self.parties)
    self.inputs = testing.random_inputs(self.names, _BITS, _LENGTH)
    self.rid = messages.RoundId(messages.new_run_nonce(), 1, 1)
    self.test = test

  def stages(self, rid=None):
    return testing.Stages(self.parties, rid or self.rid, _BITS, _LENGTH,
                          self.policy, self.roster)

  def sign_as(self, name, salt, survivors):
    """A colluding party's signature on any list the server likes."""
    return messages.b64encode(self.identities[name].sign(
        crypto.consistency_message(salt, survivors)))


def _recover_input(stages, target, b_points, s_points, t):
  """What the adversary computes once it holds t shares of both kinds."""
  srv = stages.server
  header, payload = stages.masked[target]
  y = prg.unpack(payload, header['bits'], header['length'])
  b_seed = shamir.combine(b_points, t).to_bytes(32, 'big')
  s_secret = x25519.X25519PrivateKey.from_private_bytes(
      shamir.combine(s_points, t).to_bytes(32, 'big'))
  acc = y.copy()
  prg.add_stream(acc, crypto.self_mask_key(b_seed, srv.salt, target), -1)
  for v in srv.neighbors(target):
    public = x25519.X25519PublicKey.from_public_bytes(
        srv._adverts[v].s_public)
    key = crypto.pair_key(s_secret, public, srv.salt, target, v)
    prg.add_stream(acc, key, -1 if srv.index(target) < srv.index(v) else +1)
  return prg.reduce(acc, _BITS)


class SplitViewTest(absltest.TestCase):
  """(a) Claim a party dropped after its masked input arrived, to get both
  its self-mask seed (b-shares) and its mask key (s-shares)."""

  def _split(self, corrupt):
    r = _Round(self)
    stages = r.stages().through_masked_input(r.inputs)
    srv = stages.server
    target = r.names[0]
    honest = [p for p in r.names[1:] if p not in corrupt]
    # Half the honest parties are told the target survived, half that it
    # dropped. Corrupt parties sign both lists.
    with_target = r.names
    without = [p for p in r.names if p != target]
    group_a = [target] + honest[:len(honest) // 2]
    group_b = honest[len(honest) // 2:]
    sigs = {}
    for group, survivors in ((group_a, with_target), (group_b, without)):
      request = {'stage': 'survivors', **r.rid.to_json(),
                 'survivors': survivors}
      sigs[tuple(survivors)] = {
          p: r.parties[p].consistency(request)['signature'] for p in group}
      for p in corrupt:
        sigs[tuple(survivors)][p] = r.sign_as(p, srv.salt, survivors)
    b_points, s_points, refused = [], [], []
    for group, survivors in ((group_a, with_target), (group_b, without)):
      request = {'stage': 'signatures', **r.rid.to_json(),
                 # Every signature the server has, on either list.
                 'signatures': {**sigs[tuple(with_target)],
                                **sigs[tuple(survivors)]}}
      for p in group:
        if p == target:
          continue
        try:
          reply = r.parties[p].unmask(request)
        except messages.Refused as e:
          self.assertIn('quorum', str(e))
          refused.append(p)
          continue
        x = srv.index(p) + 1
        if target in reply['b_shares']:
          b_points.append((x, shamir.decode(messages.b64decode(
              reply['b_shares'][target], 'b', 66))))
        if target in reply['s_shares']:
          s_points.append((x, shamir.decode(messages.b64decode(
              reply['s_shares'][target], 's', 66))))
        self.assertFalse(target in reply['b_shares'] and
                         target in reply['s_shares'])
    for p in corrupt:  # Colluders hand over both shares they hold.
      b, s = r.parties[p]._session.received[target]
      b_points.append((srv.index(p) + 1, b))
      s_points.append((srv.index(p) + 1, s))
    return r, stages, target, b_points, s_points, refused

  def test_refused_without_colluders(self):
    r, _, target, b_points, s_points, refused = self._split(corrupt=[])
    # Neither list reaches the quorum of 5: every party refuses, nothing
    # of the target's secrets leaves any party, nothing is recorded.
    self.assertLen(refused, 6)
    self.assertEqual((b_points, s_points), ([], []))
    for name in r.names:
      if name != target:
        self.assertIsNone(r.parties[name]._state.served(
            r.rid.run, 1)['unmask'])

  def test_refused_with_colluders_below_the_bound(self):
    # 2 colluders < 2q - n = 3: at most one list reaches the quorum, so the
    # server gets only one kind of share from honest parties.
    r, _, _, b_points, s_points, refused = self._split(corrupt=['edge-5',
                                                                'edge-6'])
    self.assertTrue(refused)
    t = 4
    self.assertFalse(len(b_points) >= t and len(s_points) >= t)
    with self.assertRaises(shamir.ShareError):
      shamir.combine(s_points, t)
    del r

  def test_the_bound_is_tight(self):
    # 3 colluders = 2q - n: both lists reach the quorum and the target's
    # input falls out. This is why the quorum is > (n + colluders) / 2.
    r, stages, target, b_points, s_points, refused = self._split(
        corrupt=['edge-4', 'edge-5', 'edge-6'])
    self.assertEqual(refused, [])
    np.testing.assert_array_equal(
        _recover_input(stages, target, b_points, s_points, 4),
        r.inputs[target])

  def test_one_party_never_reveals_both_kinds(self):
    r = _Round(self)
    stages = r.stages().through_masked_input(r.inputs).sign()
    request = stages.server.signatures_request()
    p = r.names[1]
    reply = r.parties[p].unmask(request)
    self.assertEqual(set(reply['b_shares']), set(r.names) - {p})
    self.assertEqual(reply['s_shares'], {})
    # Asking again, or with another survivor list, is refused.
    with self.assertRaisesRegex(messages.Refused, 'no live session'):
      r.parties[p].unmask(request)
    with self.assertRaisesRegex(messages.Refused, 'no live session'):
      r.parties[p].consistency({'stage': 'survivors', **r.rid.to_json(),
                                'survivors': r.names[1:]})

  def test_own_seed_only_with_t_listed_neighbours(self):
    # t = 5 of k = 6: on a list of 5 survivors a party has 4 listed
    # neighbours, too few to hide behind: it keeps its seed to itself.
    policy = policy_lib.Policy(min_parties=3, threshold=5)
    for survivors, revealed in ((5, False), (7, True)):
      r = _Round(self, policy=policy)
      stages = r.stages().advertise().reveal().share()
      stages.mask(r.inputs, r.names[:survivors]).sign(r.names[:survivors])
      reply = r.parties['edge-1'].unmask(stages.server.signatures_request())
      self.assertEqual(bool(reply['self_seed']), revealed)

  def test_second_survivor_list_is_refused(self):
    r = _Round(self)
    stages = r.stages().through_masked_input(r.inputs).sign()
    with self.assertRaisesRegex(messages.Refused, "stage 'signed'"):
      r.parties['edge-1'].consistency({'stage': 'survivors',
                                       **r.rid.to_json(),
                                       'survivors': r.names[1:]})
    del stages

  def test_survivor_lists_the_party_must_not_sign(self):
    for why, pick in [('omits me', lambda n: [p for p in n if p != 'edge-1']),
                      ('fewer than the quorum 5', lambda n: n[:4]),
                      ('stranger', lambda n: n + ['zz-9'])]:
      r = _Round(self)
      stages = r.stages().through_masked_input(r.inputs)
      request = dict(stages.server.survivors_request(),
                     survivors=pick(r.names))
      with self.assertRaises(messages.ProtocolError, msg=why):
        r.parties['edge-1'].consistency(request)

  def test_forged_signatures_do_not_count(self):
    r = _Round(self)
    stages = r.stages().through_masked_input(r.inputs).sign(r.names[:4])
    salt = stages.server.salt
    sigs = {p: r.sign_as(p, salt, r.names) for p in r.names[:4]}
    # edge-4 and edge-5 "signed" with edge-0's key; edge-6 over another list.
    for p in r.names[4:6]:
      sigs[p] = r.sign_as('edge-0', salt, r.names)
    sigs['edge-6'] = r.sign_as('edge-6', salt, r.names[:6])
    request = {'stage': 'signatures', **r.rid.to_json(), 'signatures': sigs}
    with self.assertRaisesRegex(messages.Refused, '4 valid signatures'):
      r.parties['edge-1'].unmask(request)


class ReplayTest(absltest.TestCase):
  """(b) Replays and re-requests, including across a party restart."""

  def test_second_participant_set_is_refused(self):
    r = _Round(self)
    stages = r.stages().advertise().reveal()
    smaller = copy.deepcopy(stages.requests['participants'])
    smaller['adverts'] = smaller['adverts'][:-1]
    with self.assertRaisesRegex(messages.Refused, "stage 'revealed'"):
      r.parties['edge-1'].reveal(smaller)
    with self.assertRaisesRegex(messages.Refused, "stage 'revealed'"):
      r.parties['edge-1'].reveal(stages.requests['participants'])

  def test_replayed_round_is_refused_even_after_restart(self):
    state_dir = self.create_tempdir().full_path
    r = _Round(self, state_dir=state_dir)
    stages = r.stages().through_masked_input(r.inputs).sign().unmask()
    np.testing.assert_array_equal(
        stages.server.result(),
        sum(r.inputs.values()) % 2**_BITS)
    name = 'edge-2'
    with self.assertRaisesRegex(messages.Refused, 'already sent'):
      r.parties[name].advertise(stages.requests['advertise'])
    next_attempt = dict(stages.requests['advertise'], attempt=2)
    with self.assertRaisesRegex(messages.Refused, 'already sent'):
      r.parties[name].advertise(next_attempt)
    # The pod restarts: a new Party over the same state file.
    reborn = party_lib.Party(name, r.identities[name], r.roster, r.policy,
                             party_lib.state_lib.ServedRounds(
                                 os.path.join(state_dir, name + '.json')))
    for request in (stages.requests['advertise'], next_attempt):
      with self.assertRaisesRegex(messages.Refused, 'already sent'):
        reborn.advertise(request)
    for request in (stages.requests['participants'],
                    stages.requests['reveals'], stages.forward[name],
                    stages.requests['survivors'],
                    stages.requests['signatures']):
      with self.assertRaisesRegex(messages.Refused, 'no live session'):
        getattr(reborn, {'participants': 'reveal', 'reveals': 'share_keys',
                         'forwarded_shares': 'mask_vector',
                         'survivors': 'consistency',
                         'signatures': 'unmask'}[request['stage']])(request)

  def test_restart_before_input_allows_only_a_later_attempt(self):
    state_dir = self.create_tempdir().full_path
    r = _Round(self, state_dir=state_dir)
    stages = r.stages().advertise().reveal().share()
    name = 'edge-3'
    reborn = party_lib.Party(name, r.identities[name], r.roster, r.policy,
                             party_lib.state_lib.ServedRounds(
                                 os.path.join(state_dir, name + '.json')))
    with self.assertRaisesRegex(messages.Refused, 'not after'):
      reborn.advertise(stages.requests['advertise'])
    reborn.advertise(dict(stages.requests['advertise'], attempt=2))
    with self.assertRaisesRegex(messages.Refused, 'exceeds the limit'):
      reborn.advertise(dict(stages.requests['advertise'], attempt=4))

  def test_messages_of_another_round_are_refused(self):
    r = _Round(self)
    stages = r.stages().advertise()
    other = messages.RoundId(r.rid.run, 2, 1)
    request = dict(stages.server.participants_request(), **other.to_json())
    with self.assertRaisesRegex(messages.Refused, 'no live session'):
      r.parties['edge-1'].reveal(request)
    # Adverts from another attempt inside this round's list.
    r2 = _Round(self)
    s2 = r2.stages().advertise()
    request = s2.server.participants_request()
    request['adverts'][3] = dict(request['adverts'][3], attempt=2)
    with self.assertRaisesRegex(messages.ProtocolError, 'another round'):
      r2.parties['edge-1'].reveal(request)


class KeySubstitutionTest(absltest.TestCase):
  """(c) A relay that swaps keys is detected."""

  def _reveal_with(self, mutate, victim='edge-1'):
    """The victim gets an altered participant list, everyone else the true
    one; returns the (honest) reveals request the victim then receives."""
    r = _Round(self)
    stages = r.stages().advertise()
    request = stages.server.participants_request()
    altered = copy.deepcopy(request)
    mutate(r, altered)
    for name in r.names:
      stages.server.add_reveal(r.parties[name].reveal(
          altered if name == victim else request))
    return r, stages, stages.server.reveals_request()

  def test_substituted_neighbour_key_is_detected(self):
    def swap(r, request):
      request['adverts'][4]['c_pk'] = messages.b64encode(
          keys.RoundKeys.generate().c_public)
    r, _, reveals = self._reveal_with(swap)
    with self.assertRaisesRegex(messages.Refused, 'not signed by its identity'):
      r.parties['edge-1'].share_keys(reveals)

  def test_substituted_own_key_is_detected(self):
    def swap(r, request):
      request['adverts'][1]['s_pk'] = messages.b64encode(
          keys.RoundKeys.generate().s_public)
    r = _Round(self)
    stages = r.stages().advertise()
    request = stages.server.participants_request()
    swap(r, request)
    with self.assertRaisesRegex(messages.Refused, 'different advert'):
      r.parties['edge-1'].reveal(request)

  def test_keys_signed_by_another_identity_are_refused(self):
    def resign(r, request):
      advert = party_lib.Advert.parse(request['adverts'][4], r.rid)
      signature = r.identities['edge-5'].sign(crypto.advert_message(
          r.rid, advert.party, advert.c_public, advert.s_public,
          advert.commit))
      request['adverts'][4]['signature'] = messages.b64encode(signature)
    r, _, reveals = self._reveal_with(resign)
    with self.assertRaisesRegex(messages.Refused, 'not signed by its identity'):
      r.parties['edge-1'].share_keys(reveals)

  def test_party_off_the_roster_is_refused(self):
    # A complete graph (k = n - 1), so the impostor neighbours everyone.
    r = _Round(self, policy=policy_lib.Policy(min_parties=3, neighbors=99))
    stages = r.stages().advertise()
    request = stages.server.participants_request()
    round_keys = keys.RoundKeys.generate()
    reveal = os.urandom(32)
    commit = crypto.commitment(r.rid, 'zz-fake', reveal)
    fake = party_lib.Advert(
        'zz-fake', round_keys.c_public, round_keys.s_public, commit,
        keys.generate_identity().sign(crypto.advert_message(
            r.rid, 'zz-fake', round_keys.c_public, round_keys.s_public,
            commit)), None)
    request['adverts'].append(fake.to_json(r.rid))
    r.parties['edge-1'].reveal(request)
    reveals = {'stage': 'reveals', **r.rid.to_json(),
               'reveals': {p: messages.b64encode(
                   r.parties[p]._session.reveal)
                           for p in r.names}}
    reveals['reveals']['zz-fake'] = messages.b64encode(reveal)
    with self.assertRaisesRegex(messages.Refused, 'not on the roster'):
      r.parties['edge-1'].share_keys(reveals)

  def test_low_order_key_from_a_colluder_is_refused(self):
    low = bytes(32)
    def poison(r, request):
      name = 'edge-4'
      session = r.parties[name]._session
      signature = r.identities[name].sign(crypto.advert_message(
          r.rid, name, low, session.advert.s_public, session.advert.commit))
      request['adverts'][4]['c_pk'] = messages.b64encode(low)
      request['adverts'][4]['signature'] = messages.b64encode(signature)
    r, _, reveals = self._reveal_with(poison)
    with self.assertRaisesRegex(messages.ProtocolError, 'low-order'):
      r.parties['edge-1'].share_keys(reveals)

  def test_swapped_or_tampered_share_ciphertexts_are_refused(self):
    r = _Round(self)
    stages = r.stages().advertise().reveal().share()
    forward = stages.server.forwarded_shares_requests()
    request = copy.deepcopy(forward['edge-1'])
    shares = request['shares']
    shares['edge-2'], shares['edge-3'] = shares['edge-3'], shares['edge-2']
    with self.assertRaisesRegex(messages.ProtocolError, 'authenticate'):
      r.parties['edge-1'].masked_input(request, r.inputs['edge-1'])
    # A share meant for edge-5, replayed to edge-2.
    request = copy.deepcopy(forward['edge-2'])
    request['shares']['edge-3'] = forward['edge-5']['shares']['edge-3']
    with self.assertRaisesRegex(messages.ProtocolError, 'authenticate'):
      r.parties['edge-2'].masked_input(request, r.inputs['edge-2'])

  def test_certificate_roster_end_to_end(self):
    # Identities certified by the cluster CA; adverts carry certificates.
    ca_key, ca = testing.make_ca()
    roster = keys.CertificateRoster(ca)
    names = [f'edge-{i}' for i in range(5)]
    identities = {p: keys.generate_identity() for p in names}
    certs = {p: keys.certificate_der(keys.issue_identity_certificate(
        ca_key, ca, p, identities[p].public_key())) for p in names}
    parties = {p: party_lib.Party(p, identities[p], roster, _POLICY,
                                  certificate=certs[p]) for p in names}
    # edge-4 presents edge-3's certificate: its neighbours refuse.
    parties['edge-4'] = party_lib.Party('edge-4', identities['edge-4'],
                                        roster, _POLICY,
                                        certificate=certs['edge-3'])
    inputs = testing.random_inputs(names, _BITS, _LENGTH)
    rid = messages.RoundId(messages.new_run_nonce(), 1, 1)
    stages = testing.Stages(parties, rid, _BITS, _LENGTH, _POLICY, None)
    stages.advertise().reveal()
    with self.assertRaisesRegex(messages.Refused, 'names edge-3'):
      stages.share()


class SmallSetTest(absltest.TestCase):
  """(d) Rounds too small to hide anyone."""

  def test_participant_set_below_minimum_is_refused(self):
    r = _Round(self, policy=policy_lib.Policy(min_parties=4))
    stages = r.stages().advertise()
    request = stages.server.participants_request()
    own = [a for a in request['adverts'] if a['party'] in ('edge-1', 'edge-2',
                                                           'edge-3')]
    with self.assertRaisesRegex(messages.Refused, 'fewer than the minimum 4'):
      r.parties['edge-1'].reveal(dict(request, adverts=own))

  def test_server_stops_below_minimum(self):
    r = _Round(self, policy=policy_lib.Policy(min_parties=4))
    stages = r.stages().advertise(r.names[:3])
    with self.assertRaisesRegex(messages.RoundFailed, 'fewer than the minimum'):
      stages.server.participants_request()

  def test_fewer_than_t_forwarded_shares_are_refused(self):
    r = _Round(self)
    stages = r.stages().advertise().reveal().share()
    request = stages.server.forwarded_shares_requests()['edge-1']
    keep = sorted(request['shares'])[:3]  # t = 4
    request['shares'] = {p: request['shares'][p] for p in keep}
    with self.assertRaisesRegex(messages.Refused, 'fewer than the threshold'):
      r.parties['edge-1'].masked_input(request, r.inputs['edge-1'])
    self.assertIsNone(r.parties['edge-1']._state.served(
        r.rid.run, 1)['input'])


class TagTest(absltest.TestCase):
  """(e) Tags and ids that could become paths."""

  def test_hostile_round_fields_are_refused(self):
    r = _Round(self)
    for run in ['..', '../../etc', 'a/b', '0' * 31 + '/', '0' * 32 + '\n']:
      with self.assertRaises(messages.ProtocolError, msg=run):
        r.parties['edge-1'].advertise({'stage': 'advertise', 'run': run,
                                       'round': 1, 'attempt': 1})
    for party in ['..', 'a/b', '.x']:
      stages = r.stages().advertise()
      request = stages.server.participants_request()
      request['adverts'][0]['party'] = party
      with self.assertRaises(messages.ProtocolError, msg=party):
        r.parties['edge-1'].reveal(request)
      r = _Round(self)


def _mutations(message):
  """Hostile variants of a valid message: each must be refused cleanly."""
  yield 'not an object', [message]
  yield 'extra field', dict(message, extra=1)
  for key in message:
    yield f'no {key}', {k: v for k, v in message.items() if k != key}
    for bad in (None, True, 1.5, [], {}, 'x' * 10, -1, 2**70):
      yield f'{key}={bad!r}', dict(message, **{key: bad})


def _b64_mutations(value):
  raw = messages.b64decode(value, 'v')
  yield 'truncated', messages.b64encode(raw[:-1])
  yield 'extended', messages.b64encode(raw + b'\x00')
  yield 'not base64', '!' + value[1:]
  yield 'empty', ''
  yield 'huge', 'A' * (1 << 20)


class DispatchTest(absltest.TestCase):

  def test_handle_dispatches_json_stages_only(self):
    r = _Round(self)
    stages = r.stages()
    advert = r.parties['edge-1'].handle(stages.server.advertise_request())
    self.assertEqual(advert['stage'], 'advert')
    for bad in [{'stage': 'forwarded_shares'}, {'stage': 'x'}, [], None]:
      with self.assertRaises(messages.ProtocolError, msg=repr(bad)):
        r.parties['edge-1'].handle(bad)


class HostileMessageTest(absltest.TestCase):
  """(f) Hostile lengths, encodings and counts give clean ProtocolErrors."""

  _POLICY = policy_lib.Policy(min_parties=3, max_parties=50)

  def _fresh(self, stage):
    """A 4-party round with party edge-1 waiting for `stage`'s request."""
    r = _Round(self, n=4, policy=self._POLICY)
    stages = r.stages().advertise()
    if stage == 'participants':
      return r, stages.server.participants_request(), 'reveal'
    stages.reveal()
    if stage == 'reveals':
      return r, stages.server.reveals_request(), 'share_keys'
    stages.share()
    forward = stages.server.forwarded_shares_requests()
    if stage == 'forwarded_shares':
      return r, forward['edge-1'], 'mask_vector'
    for name in r.names:
      stages.server.add_masked_input(*r.parties[name].masked_input(
          forward[name], r.inputs[name]))
    stages.sign()
    return r, stages.server.signatures_request(), 'unmask'

  def _expect_clean_error(self, r, method, request, why):
    try:
      getattr(r.parties['edge-1'], method)(request)
    except messages.ProtocolError:
      return
    except Exception as e:  # pylint: disable=broad-except
      self.fail(f'{why}: {type(e).__name__}: {e}')
    self.fail(f'{why}: accepted')

  def test_top_level_mutations(self):
    for stage in ('participants', 'reveals', 'forwarded_shares',
                  'signatures'):
      _, template, _ = self._fresh(stage)
      for why, request in _mutations(template):
        r, _, method = self._fresh(stage)
        self._expect_clean_error(r, method, request, f'{stage}: {why}')

  def test_nested_encodings_and_counts(self):
    cases = []
    _, participants, _ = self._fresh('participants')
    for field in ('c_pk', 's_pk', 'commit', 'signature'):
      for why, bad in _b64_mutations(participants['adverts'][2][field]):
        cases.append(('participants', f'advert {field} {why}',
                      lambda m, f=field, b=bad: m['adverts'][2].update({f: b})))
    cases.append(('participants', '51 adverts',
                  lambda m: m.update(adverts=m['adverts'] * 13)))
    cases.append(('participants', 'advert not an object',
                  lambda m: m['adverts'].__setitem__(2, 'x')))
    cases.append(('participants', 'duplicate advert',
                  lambda m: m['adverts'].__setitem__(2, m['adverts'][1])))
    cases.append(('participants', 'length 2^40',
                  lambda m: m.update(length=2**40)))
    cases.append(('participants', 'bits 63', lambda m: m.update(bits=63)))
    _, reveals, _ = self._fresh('reveals')
    for why, bad in _b64_mutations(reveals['reveals']['edge-2']):
      cases.append(('reveals', f'reveal {why}',
                    lambda m, b=bad: m['reveals'].update({'edge-2': b})))
    cases.append(('reveals', '100k reveals', lambda m: m['reveals'].update(
        {f'p{i}': 'AA==' for i in range(100_000)})))
    _, forward, _ = self._fresh('forwarded_shares')
    sender = sorted(forward['shares'])[0]
    for why, bad in _b64_mutations(forward['shares'][sender]):
      cases.append(('forwarded_shares', f'ciphertext {why}',
                    lambda m, s=sender, b=bad: m['shares'].update({s: b})))
    cases.append(('forwarded_shares', 'random ciphertext',
                  lambda m, s=sender: m['shares'].update({s: messages.b64encode(
                      os.urandom(crypto.SHARE_CIPHERTEXT_BYTES))})))
    cases.append(('forwarded_shares', 'share from self',
                  lambda m, s=sender: m['shares'].update(
                      {'edge-1': m['shares'][s]})))
    _, signatures, _ = self._fresh('signatures')
    for why, bad in _b64_mutations(signatures['signatures']['edge-2']):
      cases.append(('signatures', f'signature {why}',
                    lambda m, b=bad: m['signatures'].update({'edge-2': b})))
    for stage, why, mutate in cases:
      r, request, method = self._fresh(stage)
      request = copy.deepcopy(request)
      mutate(request)
      self._expect_clean_error(r, method, request, f'{stage}: {why}')

  def test_hostile_replies_to_the_server(self):
    r = _Round(self, n=4, policy=self._POLICY)
    stages = r.stages()
    srv = stages.server
    advert = r.parties['edge-1'].advertise(srv.advertise_request())
    for why, bad in _mutations(advert):
      with self.assertRaises(messages.ProtocolError, msg=why):
        srv.add_advert(bad)
    for why, value in _b64_mutations(advert['c_pk']):
      with self.assertRaises(messages.ProtocolError, msg=why):
        srv.add_advert(dict(advert, c_pk=value))
    srv.add_advert(advert)
    with self.assertRaisesRegex(messages.ProtocolError, 'second advert'):
      srv.add_advert(advert)
    masked = server_lib.MaskedSum(_BITS, _LENGTH)
    masked.add(['edge-1'], r.inputs['edge-1'])
    header, payload = masked.to_wire(r.rid)
    for why, bad in [('truncated', payload[:-1]), ('extended', payload + b'1'),
                     ('not bytes', 'abc')]:
      with self.assertRaises(messages.ProtocolError, msg=why):
        server_lib.MaskedSum.from_wire(header, bad, r.rid, 50, 1000)
    for why, bad in _mutations(header):
      with self.assertRaises(messages.ProtocolError, msg=why):
        server_lib.MaskedSum.from_wire(bad, payload, r.rid, 50, 1000)
    with self.assertRaises(messages.ProtocolError):
      server_lib.MaskedSum.from_wire(dict(header, length=2**40), payload,
                                     r.rid, 50, 1000)


if __name__ == '__main__':
  absltest.main()
