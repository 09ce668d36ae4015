"""The size-steering eBPF program and its loader (alpaca.io.ebpf); TUN steering itself is
tested in tests/io/test_tun.py."""

from __future__ import annotations

import errno
import os

import pytest

from alpaca.io import ebpf


def test_ebpf_loader_on_an_architecture_without_a_syscall_number_raises_enosys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ebpf.platform, "machine", lambda: "pdp11")
    with pytest.raises(OSError) as err:
        ebpf.load_socket_filter(ebpf.size_steering(256, 1))
    assert err.value.errno == errno.ENOSYS and "pdp11" in str(err.value)


@pytest.mark.netns
def test_ebpf_the_kernel_loads_the_steering_program_and_refuses_a_broken_one() -> None:
    fd = ebpf.load_socket_filter(ebpf.size_steering(256, 1))
    try:
        assert fd >= 0 and os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog"
    finally:
        os.close(fd)
    with pytest.raises(OSError) as err:  # no exit instruction: the verifier says no
        ebpf.load_socket_filter(ebpf.size_steering(256, 1)[:-8])
    assert err.value.errno == errno.EINVAL
