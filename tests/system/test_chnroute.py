"""chnroute: parsing (pure) and bulk load/remove in a namespace."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from alpaca.errors import ConfigError
from alpaca.system import chnroute, link, netlink, routes
from tests.helpers import netns, nsexec
from tests.system import client_ns, snapshot

COUNT = 6594  # the size of the original's bundled CN list


def test_chnroute_load_file_refuses_what_check_refuses(tmp_path: Path) -> None:
    """The start-up loads the file with check's parser: a prefix with host bits set is an
    error in both (``run`` used to mask it and go on)."""
    data = tmp_path / "cn.txt"
    data.write_text("# header\n1.0.1.0/24\n\n  1.0.2.0/23  # trailing\n0.0.0.0/0\n")
    assert chnroute.load_file(data) == [ipaddress.IPv4Network("1.0.1.0/24"),
                                        ipaddress.IPv4Network("1.0.2.0/23")]
    data.write_text("1.0.1.0/24\nnonsense\n1.2.3.4/24\n")
    with pytest.raises(ConfigError) as info:
        chnroute.load_file(data)
    assert [p.split(": ", 1)[0] for p in info.value.problems] == [f"{data}:2", f"{data}:3"]
    assert 'did you mean "1.2.3.0/24"' in info.value.problems[1]


def test_chnroute_load_file_missing_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        chnroute.load_file(tmp_path / "absent.txt")


def write_prefixes(path: Path, count: int) -> None:
    base = int(ipaddress.IPv4Address("1.0.0.0"))
    lines = [f"{ipaddress.IPv4Network((base + (i << 8), 24))}" for i in range(count)]
    path.write_text("# generated\n" + "\n".join(lines) + "\n")


@pytest.mark.netns
def test_chnroute_6594_prefixes_loaded_and_removed(tmp_path: Path) -> None:
    data = tmp_path / "cn.txt"
    write_prefixes(data, COUNT)
    with netns() as ns:
        client_ns(ns)
        before = snapshot(ns)
        oif = link.link_index("up0", ns)
        assert oif is not None
        nets = chnroute.load_file(data)
        up = routes.Uplink("192.0.2.254", oif, "up0")
        assert chnroute.add(nets, up, 253, ns) == nets
        assert chnroute.add(nets[:10], up, 253, ns) == []  # EEXIST is done
        shown = nsexec(ns, "ip", "route", "show", "table", "253", "proto", "97").stdout
        assert len(shown.splitlines()) == COUNT
        assert "1.0.0.0/24 via 192.0.2.254 dev up0" in shown
        assert chnroute.remove(253, ns) == COUNT  # (how long it takes: bench/chnroute.py)
        assert chnroute.remove(253, ns) == 0
        assert snapshot(ns) == before


@pytest.mark.netns
def test_chnroute_bulk_requests_fit_a_default_hosts_receive_buffer() -> None:
    """A host whose net.core.rmem_max is the kernel's default grants 416 KiB: batches are
    sized from what was granted, so no ack is dropped (ENOBUFS) and every request's outcome is
    known."""
    with netns() as ns:
        client_ns(ns)
        oif = link.link_index("up0", ns)
        assert oif is not None
        base = int(ipaddress.IPv4Address("1.0.0.0"))
        nets = [ipaddress.IPv4Network((base + (i << 8), 24)) for i in range(8000)]
        with netlink.RtnlSocket(ns, rcvbuf=212992) as rt:
            assert rt.batch_limit < 400, rt.batch_limit
            flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | netlink.NLM_F_CREATE
            messages = [netlink.encode_route(netlink.RTM_NEWROUTE, flags, rt.next_seq(), net, 100,
                                             gateway="192.0.2.254", oif=oif) for net in nets]
            results = rt.request_many(messages)
        assert len(results) == 8000 and not any(results.values())
        assert chnroute.remove(100, ns) == 8000


@pytest.mark.netns
def test_chnroute_via_an_uplink_without_gateway_is_removed() -> None:
    """Routes through a point-to-point uplink (PPPoE, LTE: ``default dev ppp0``) have scope
    link; the delete must match them too."""
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        oif = link.link_index("up0", ns)
        assert oif is not None
        nets = [ipaddress.IPv4Network(f"1.0.{i}.0/24") for i in range(50)]
        chnroute.add(nets, routes.Uplink(None, oif, "up0"), 253, ns)
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "1.0.0.0/24 dev up0 proto 97 scope link" in shown
        assert chnroute.remove(253, ns) == 50
        assert snapshot(ns) == before


@pytest.mark.netns
def test_chnroute_replace_moves_only_the_given_prefixes_to_the_new_gateway() -> None:
    """The uplink moved: the prefixes this run added are replaced in place (or added again
    where the kernel flushed them); a route another program had at start is not given."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "addr", "add", "192.0.3.1/24", "dev", "up0")
        oif = link.link_index("up0", ns)
        assert oif is not None
        nsexec(ns, "ip", "route", "add", "1.0.9.0/24", "via", "192.0.2.200", "table", "253")
        nets = [ipaddress.IPv4Network(f"1.0.{i}.0/24") for i in range(10)]
        ours = chnroute.add(nets, routes.Uplink("192.0.2.254", oif, "up0"), 253, ns)
        assert ours == nets[:9]
        nsexec(ns, "ip", "route", "del", "1.0.0.0/24", "table", "253")  # as the kernel flushes
        assert chnroute.add(ours, routes.Uplink("192.0.3.254", oif, "up0"), 253, ns, replace=True) == ours
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert shown.count("via 192.0.3.254 dev up0 proto 97") == 9, shown
        assert "1.0.0.0/24 via 192.0.3.254" in shown
        assert "1.0.9.0/24 via 192.0.2.200 dev up0" in shown
        assert "192.0.2.254" not in shown
        assert chnroute.remove(253, ns) == 9
