"""PeerPaths: learned paths, their candidates, confirmation and expiry (sans-IO, no engine)."""

from __future__ import annotations

import pytest

from alpaca.core.paths import Generation, Path, PathKind, PeerPaths, port_label, rx_slot, rx_slots

A, B, C = ("192.0.2.1", 4000), ("192.0.2.2", 4000), ("192.0.2.3", 4000)


def paths() -> PeerPaths:
    return PeerPaths(0x1001, ("p0",), None, Generation())


def test_a_confirmed_slot_keeps_its_address_until_a_candidate_is_confirmed() -> None:
    pp = paths()
    a = pp.learn(0, 0, A, 0.0)
    assert not a.confirmed and pp.confirm(a) is a and a.confirmed
    b = pp.learn(0, 0, B, 1.0)
    assert b is not a and a.addr == A and pp.candidates == {(0, 0): b}
    assert pp.match(0, B) is b and b not in pp.links()
    b.rx_packets, b.probes_sent = 3, 2
    a.rx_packets, a.probes_sent = 10, 5
    assert pp.confirm(b) is a
    assert a.addr == B and a.confirmed and pp.match(0, B) is a and pp.match(0, A) is None
    assert (a.rx_packets, a.probes_sent) == (13, 7) and not pp.candidates


def test_a_candidate_outliving_its_slot_moves_the_relearned_path_confirmed() -> None:
    pp = paths()
    pp.confirm(pp.learn(0, 0, A, 0.0))
    b = pp.learn(0, 0, B, 30.0)
    assert [p.addr for p in pp.expire(61.0, 60.0)] == [A] and pp.candidates == {(0, 0): b}
    c = pp.learn(0, 0, C, 62.0)  # the slot is learned anew, unconfirmed
    assert not c.confirmed
    assert pp.confirm(b) is c and c.addr == B and c.confirmed


def test_an_answer_for_a_replaced_candidate_confirms_nothing() -> None:
    pp = paths()
    a = pp.learn(0, 0, A, 0.0)
    pp.confirm(a)
    b = pp.learn(0, 0, B, 1.0)
    c = pp.learn(0, 0, C, 2.0)  # replaces b as the slot's candidate
    assert pp.candidates == {(0, 0): c} and pp.match(0, B) is None
    assert pp.confirm(b) is None and a.addr == A


def test_candidates_expire_and_leave_their_counts_on_the_slot() -> None:
    pp = paths()
    a = pp.learn(0, 0, A, 0.0)
    pp.confirm(a)
    b = pp.learn(0, 0, B, 1.0)
    b.tx_packets = 4
    a.last_ok_at = 100.0
    assert pp.expire(70.0, 60.0) == [] and not pp.candidates and pp.match(0, B) is None
    assert a.tx_packets == 4


def _reports(*reports: tuple[int, ...]) -> list[int]:
    """data_lost of a fresh path after each (our data_sent when the probe left, the peer's
    count[, what we sent before the reply came: 10 if not given]) report."""
    path = Path(0x1001, PathKind.STATIC, 0, 0, A, "p0")
    lost = []
    for sent, peer_rx, *after in reports:
        path.on_data_report(peer_rx, sent, after[0] if after else 10)
        lost.append(path.data_lost)
    return lost


def test_data_loss_counts_a_shortfall_that_lasts_to_the_next_report() -> None:
    assert _reports((100, 95), (200, 195), (300, 300)) == [0, 5, 5]  # lost 5, counted one late
    assert _reports((100, 90), (200, 180), (300, 270)) == [0, 10, 20]  # 10 % lost, steadily
    assert _reports((100, 90), (100, 90)) == [0, 10]  # the traffic stopped: the next reply tells


def test_data_loss_forgives_data_reordered_across_a_probe() -> None:
    assert _reports((100, 98), (200, 200)) == [0, 0]  # 2 behind the probe, arrived after it
    assert _reports((100, 102), (200, 198), (300, 300)) == [0, 0, 0]  # 2 overtook the probe
    # traffic starting just after a probe left: 5 overtook it, though nothing was sent before
    assert _reports((0, 5, 50), (100, 100), (200, 200)) == [0, 0, 0]


def test_data_loss_surplus_is_carried_at_most_what_can_have_overtaken_the_probe() -> None:
    """Duplicates counted by the peer (a replay, say) cannot hide more loss than what we
    sent while the probe was out (10 here)."""
    assert _reports((100, 400), (200, 400), (300, 400), (400, 400)) == [0, 0, 90, 190]


def test_data_loss_restarts_with_the_peer_and_ignores_overtaken_replies() -> None:
    assert _reports((100, 90), (200, 5), (300, 100), (400, 200)) == [0, 0, 0, 5]
    assert _reports((100, 100), (50, 20), (200, 200)) == [0, 0, 0]
    # two probes that left with the same count (a slot's and its candidate's), answered in
    # reverse order: the older answer is no restart, and the 10 lost are counted
    assert _reports((100, 100), (200, 190), (200, 185), (300, 290), (400, 390)) == [0, 0, 0, 10, 10]


def test_an_unconfirmed_path_moves_with_its_source_and_keeps_its_challenge_time() -> None:
    """A slot not confirmed yet follows the newest source address (no candidate: it carries
    no traffic anyway); the old address no longer maps to it, and its last challenge time
    stays, so a source that keeps changing is probed at most once per challenge interval."""
    pp = paths()
    a = pp.learn(0, 0, A, 0.0)
    a.challenged_at = 0.5
    before = pp.generation.value
    assert pp.learn(0, 0, B, 1.0) is a
    assert (a.addr, a.confirmed, a.challenged_at, a.last_ok_at) == (B, False, 0.5, 1.0)
    assert pp.match(0, A) is None and pp.match(0, B) is a and not pp.candidates
    assert pp.generation.value > before


def test_a_candidate_whose_slot_expired_takes_the_slot_when_confirmed() -> None:
    pp = paths()
    pp.confirm(pp.learn(0, 0, A, 0.0))
    b = pp.learn(0, 0, B, 30.0)
    assert [p.addr for p in pp.expire(61.0, 60.0)] == [A] and pp.learned == {}
    before = pp.generation.value
    assert pp.confirm(b) is b
    assert pp.learned == {(0, 0): b} and b.confirmed and not pp.candidates
    assert pp.links() == [b] and pp.generation.value > before


def test_a_rebuilt_peer_keeps_its_learned_paths_but_one_at_its_new_static_address() -> None:
    """A reload moved the peer's static address to C: the paths learned at B and C carry
    over, but C's endpoint is now the static path's (one path per endpoint); the static
    path's counters carry over by name."""
    gen = Generation()
    old = PeerPaths(0x1001, ("p0", "p1"), A, gen)
    at_b, at_c = old.learn(1, 0, B, 0.0), old.learn(2, 1, C, 0.0)
    old.static[0].tx_packets = 7
    fresh = PeerPaths(0x1001, ("p0", "p1"), C, gen)
    fresh.take_over(old)
    assert fresh.learned == {(1, 0): at_b}
    assert fresh.match(0, B) is at_b and fresh.match(1, C) is fresh.static[1] is not at_c
    assert fresh.static[0].tx_packets == 7


def test_settled_only_when_time_alone_changes_nothing() -> None:
    """The prober evaluates a peer at each tick only while its paths are not settled: a path
    up (it goes down once silent), a probe waiting while the path still counts as answering,
    a learned path or a candidate (they expire). Settled otherwise, also with probes that
    went unanswered for good."""
    pp = PeerPaths(0x1001, ("p0",), ("192.0.2.9", 4000), Generation())
    static = pp.static[0]
    assert pp.settled()
    static.up = True
    assert not pp.settled()
    static.up = False
    static.on_probe_sent(1.0)
    assert not pp.settled()
    assert static.check_answers(5.0, 3.0) and not static.answering
    assert pp.settled()
    static.on_probe_answered()
    assert static.check_answers(6.0, 3.0) and pp.settled()
    via = Path(0x1001, PathKind.VIA, 4, 0, None, "via-1.2", via=0x0102)
    pp.via[1] = via
    via.up = True
    assert not pp.settled()
    via.up = False
    learned = pp.learn(0, 0, A, 10.0)
    assert not pp.settled()
    pp.confirm(learned)
    pp.learn(0, 0, B, 11.0)  # a candidate beside the confirmed slot
    assert not pp.settled()
    pp.expire(100.0, 60.0)
    assert not pp.learned and not pp.candidates and pp.settled()


def static_path() -> Path:
    return Path(0x1001, PathKind.STATIC, 0, 0, A, "direct/p0")


def test_rtt_is_smoothed_with_rfc_6298_weights() -> None:
    path = static_path()
    path.on_rtt(0.1)
    assert (path.srtt, path.rtt_last) == (0.1, 0.1)
    path.on_rtt(0.2)
    assert path.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2) and path.rtt_last == 0.2
    path.on_rtt(0.05)
    assert path.srtt == pytest.approx(0.875 * (0.875 * 0.1 + 0.125 * 0.2) + 0.125 * 0.05)
    assert list(path.rtt_samples) == [0.1, 0.2, 0.05]


def test_a_path_stops_answering_a_timeout_after_its_oldest_unanswered_probe() -> None:
    path = static_path()
    path.on_probe_sent(10.0)
    path.on_probe_sent(12.0)  # the silence counts from the oldest probe waiting
    assert not path.check_answers(14.9, 5.0) and path.answering
    assert path.check_answers(15.0, 5.0) and not path.answering
    assert not path.check_answers(16.0, 5.0)  # no change, no news
    path.on_probe_answered()
    assert path.check_answers(16.0, 5.0) and path.answering
    path.on_probe_sent(20.0)
    assert not path.check_answers(24.0, 5.0) and path.answering


def test_an_up_path_tells_why_it_is_or_is_not_answering() -> None:
    path = static_path()
    path.last_ok_at = 0.0
    assert path.evaluate(1.0, 5.0) and path.up and path.reason == "answering"
    path.on_probe_sent(1.0)
    assert path.check_answers(6.0, 5.0) and path.reason == "unanswered"
    other = static_path()
    other.on_probe_sent(0.0)
    assert other.check_answers(5.0, 5.0) and other.reason == "new"  # not up: reason kept


def test_a_path_is_up_until_a_timeout_of_silence_and_counts_its_changes() -> None:
    path = static_path()
    assert not path.evaluate(1.0, 5.0) and not path.up  # never heard from
    path.last_ok_at = 2.0
    assert path.evaluate(2.5, 5.0) and path.up and path.changes == 1
    assert not path.evaluate(6.9, 5.0) and path.up
    assert path.evaluate(7.0, 5.0) and not path.up and path.reason == "timeout"
    assert path.changes == 2
    path.last_ok_at = 8.0
    assert path.evaluate(8.0, 5.0) and path.up and path.changes == 3


def test_a_shortened_timeout_counts_an_up_paths_silence_from_the_reload() -> None:
    path = static_path()
    path.last_ok_at = 0.0
    path.evaluate(0.0, 30.0)
    assert not path.evaluate(12.0, 5.0, since=10.0) and path.up  # 2 s since the reload
    assert path.evaluate(15.0, 5.0, since=10.0) and not path.up
    assert not path.evaluate(16.0, 5.0, since=10.0)  # down: its silence counts from 0.0


def test_a_path_counts_its_silent_probes_until_it_answers_or_comes_up() -> None:
    path = static_path()
    for now in range(3):
        path.on_probe_sent(float(now))
    assert path.silent_probes == 3
    path.on_probe_answered()
    path.on_probe_sent(4.0)
    assert path.silent_probes == -1  # it has answered: never dormant
    quiet = static_path()
    quiet.on_probe_sent(0.0)
    quiet.last_ok_at = 1.0
    quiet.evaluate(1.0, 5.0)
    quiet.on_probe_sent(2.0)
    assert quiet.silent_probes == -1


def test_a_port_beyond_the_configured_ones_is_labelled_by_its_index() -> None:
    assert port_label(("p0", "p1"), 1) == "p1"
    assert port_label(("p0", "p1"), 2) == "2"


def test_a_candidate_is_filed_under_its_slots_index_and_port() -> None:
    pp = PeerPaths(0x1001, ("p0", "p1"), None, Generation())
    a = pp.learn(6, 1, A, 0.0)
    pp.confirm(a)
    b = pp.learn(6, 1, B, 1.0)
    assert (b.pi, b.port, b.name) == (6, 1, a.name) and pp.candidates == {(6, 1): b}
    assert pp.match(1, B) is b


def test_a_confirmed_candidate_leaves_the_later_challenge_time_on_the_slot() -> None:
    pp = paths()
    a = pp.learn(0, 0, A, 0.0)
    pp.confirm(a)
    a.challenged_at = 5.0
    b = pp.learn(0, 0, B, 6.0)
    b.challenged_at = 7.0
    assert pp.confirm(b) is a and a.challenged_at == 7.0
    c = pp.learn(0, 0, C, 8.0)
    c.challenged_at = 1.0
    assert c.challenged_at == 1.0 and pp.confirm(c) is a and a.challenged_at == 7.0


def test_an_expired_path_no_longer_receives_and_changes_the_generation() -> None:
    pp = paths()
    a = pp.learn(0, 0, A, 0.0)
    before = pp.generation.value
    assert pp.expire(59.0, 60.0) == [] and pp.generation.value == before
    assert pp.expire(60.0, 60.0) == [a]
    assert pp.match(0, A) is None and pp.learned == {}
    assert pp.generation.value > before


def test_a_rebuilt_peer_keeps_its_via_paths_and_receive_counts() -> None:
    gen = Generation()
    old = PeerPaths(0x1001, ("p0",), A, gen)
    via = Path(0x1001, PathKind.VIA, 4, 0, None, "via/1.2", via=0x0102)
    old.via[0x0102] = via
    old.rx_data[3] = 9
    retired = Path(0x1001, PathKind.VIA, 8, 0, None, "via/1.3", via=0x0103)
    old.via_retired = {0x0103: retired}
    fresh = PeerPaths(0x1001, ("p0",), B, gen)
    fresh.take_over(old)
    assert fresh.via == {0x0102: via} and fresh.all() == [*fresh.static, via]
    assert fresh.via_retired == {0x0103: retired}
    assert fresh.rx_data[3] == 9


def test_receive_counts_of_direct_indexes_are_kept_per_local_port() -> None:
    assert [rx_slot(pi, 0) for pi in (0, 3, 4, 15)] == [0, 3, 4, 15]
    assert rx_slot(1, 1) == 17 and rx_slot(2, 3) == 16 + 2 * 4 + 2
    assert rx_slot(5, 2) == 5  # a forwarder's index: counted alone, whatever the port
    slots = [rx_slot(pi, port) for port in range(4) for pi in range(16) if port == 0 or pi < 4]
    assert len(set(slots)) == len(slots) and max(slots) == rx_slots(4) - 1
