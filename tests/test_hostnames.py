"""alpaca.hostnames: when a peer's hostname is looked up again, and what an answer means."""

from __future__ import annotations

import pytest

from alpaca.hostnames import (
    REFRESH,
    RETRY_MAX,
    RETRY_MIN,
    Lookup,
    NameBook,
    after_lookup,
    due_at,
    is_failure_news,
    moved_to,
    one_host,
)

NAME = "gw.example.test"
ADDR = ("192.0.2.1",)


def test_hostnames_healthy_name_is_looked_up_every_refresh() -> None:
    last = Lookup(NAME, 100.0, ADDR, 0.0)
    assert due_at(last, is_up=True) == 100.0 + REFRESH


def test_hostnames_peer_without_a_path_up_is_looked_up_soon() -> None:
    last = Lookup(NAME, 100.0, ADDR, 0.0)  # healthy then, its paths went down since
    assert due_at(last, is_up=False) == 100.0 + RETRY_MIN


def test_hostnames_failing_name_is_looked_up_on_its_back_off_step_even_if_up() -> None:
    assert due_at(Lookup(NAME, 100.0, (), 20.0), is_up=True) == 120.0


def test_hostnames_back_off_doubles_from_retry_min_up_to_retry_max() -> None:
    last, now, steps = Lookup(NAME, 0.0, ADDR, 0.0), 0.0, []
    for _ in range(7):
        now = due_at(last, is_up=False)
        last = after_lookup(last, now, (), is_up=False)
        steps.append(last.retry)
    assert steps == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert (RETRY_MIN, RETRY_MAX) == (5.0, 60.0)
    assert now == 0.0 + 5 + 5 + 10 + 20 + 40 + 60 + 60  # the first lookup: RETRY_MIN after


@pytest.mark.parametrize(("addresses", "is_up"), [((), True), (ADDR, False), ((), False)])
def test_hostnames_unhealthy_lookup_takes_the_next_step(addresses: tuple[str, ...], is_up: bool) -> None:
    new = after_lookup(Lookup(NAME, 0.0, (), 10.0), 30.0, addresses, is_up)
    assert new == Lookup(NAME, 30.0, addresses, 20.0)


def test_hostnames_healthy_lookup_resets_the_back_off() -> None:
    new = after_lookup(Lookup(NAME, 0.0, (), 60.0), 70.0, ADDR, is_up=True)
    assert new == Lookup(NAME, 70.0, ADDR, 0.0)
    assert due_at(new, is_up=True) == 70.0 + REFRESH
    assert after_lookup(new, 400.0, (), is_up=True).retry == RETRY_MIN


def test_hostnames_moved_when_the_address_in_use_is_not_listed() -> None:
    assert moved_to("192.0.2.1", ("192.0.2.9",)) == "192.0.2.9"
    assert moved_to(None, ("192.0.2.9", "192.0.2.1")) == "192.0.2.9"


def test_hostnames_not_moved_while_listed_or_without_an_answer() -> None:
    assert moved_to("192.0.2.1", ("192.0.2.9", "192.0.2.1")) is None  # several: no flapping
    assert moved_to("192.0.2.1", ()) is None  # keeps its last address, as a reload does
    assert moved_to(None, ()) is None


def test_hostnames_failure_is_news_once_per_back_off_step() -> None:
    last, news = Lookup(NAME, 0.0, ADDR, 0.0), []
    for i in range(8):
        new = after_lookup(last, float(i), (), is_up=True)
        news.append(is_failure_news(last, new))
        last = new
    assert news == [True, True, True, True, True, False, False, False]  # 5, 10, 20, 40, 60
    assert not is_failure_news(last, after_lookup(last, 9.0, ADDR, is_up=True))


def test_hostnames_book_records_new_names_as_the_load_found_them() -> None:
    book = NameBook()
    book.follow({1: (NAME, "192.0.2.1"), 2: ("other.test", None)}, 10.0)
    assert book.lookups == {1: Lookup(NAME, 10.0, ADDR, 0.0),
                            2: Lookup("other.test", 10.0, (), RETRY_MIN)}
    assert book.due(14.9, lambda p: True) == []
    assert book.due(15.0, lambda p: True) == [2]
    assert book.due(15.0, lambda p: False) == [1, 2]
    assert book.next_due_at(lambda p: True) == 15.0


def test_hostnames_book_starts_a_renamed_peer_over_and_forgets_a_removed_one() -> None:
    book = NameBook()
    book.follow({1: (NAME, "192.0.2.1"), 2: ("other.test", None)}, 10.0)
    book.lookups[1] = Lookup(NAME, 20.0, ADDR, 40.0)
    book.follow({1: (NAME, "192.0.2.1")}, 30.0)  # same name: its schedule goes on
    assert book.lookups == {1: Lookup(NAME, 20.0, ADDR, 40.0)}
    book.follow({1: ("renamed.test", None)}, 31.0)
    assert book.lookups == {1: Lookup("renamed.test", 31.0, (), RETRY_MIN)}
    assert NameBook().next_due_at(lambda p: True) is None


def test_answers_that_are_no_host_address_are_left_out() -> None:
    assert one_host(("0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1", "127.0.0.1")) == (
        "192.0.2.1", "127.0.0.1")
