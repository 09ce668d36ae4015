"""The demo's figures from two /metrics pages (pure: no lab needed)."""

from __future__ import annotations

from alpaca.lab.demo import counter_deltas

BEFORE = """# TYPE alpaca_path_data_lost_total counter
alpaca_path_data_lost_total{path="via-1.2",peer="1.1"} 39523.0
alpaca_path_data_lost_total{path="via-1.3",peer="1.1"} 47511.0
alpaca_dup_copies_sent_total{peer="1.1"} 10.0
"""
AFTER = """# TYPE alpaca_path_data_lost_total counter
alpaca_path_data_lost_total{path="via-1.2",peer="1.1"} 39540.0
alpaca_path_data_lost_total{path="via-1.3",peer="1.1"} 47511.0
alpaca_dup_copies_sent_total{peer="1.1"} 210.0
alpaca_peer_lost_packets_total{peer="1.1"} 2.0
"""


def test_demo_shows_what_grew_during_the_step_not_the_totals() -> None:
    assert counter_deltas(BEFORE, AFTER, ("lost", "dup_copies")) == [
        'alpaca_dup_copies_sent_total{peer="1.1"} +200',
        'alpaca_path_data_lost_total{path="via-1.2",peer="1.1"} +17',
        'alpaca_peer_lost_packets_total{peer="1.1"} +2',
    ]
