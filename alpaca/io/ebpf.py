"""A size-steering eBPF program, loaded with the bpf(2) syscall (no libbpf, no compiler).

The TUN device's priority lane (:mod:`alpaca.io.tun`) needs one program: the queue of a
packet by its length. The kernel runs it on every packet the host sends into the device
(``TUNSETSTEERINGEBPF``, Linux 4.16+) and takes the returned number modulo the number of
queues. It is six instructions of type ``BPF_PROG_TYPE_SOCKET_FILTER`` reading
``__sk_buff.len`` (the whole IP packet; a TCP super-packet counts as large).

Loading usually needs ``CAP_BPF`` (Linux 5.8+) or ``CAP_SYS_ADMIN`` (root has both; the shipped
systemd unit grants ``CAP_BPF``; a container often has neither; without them only where
``kernel.unprivileged_bpf_disabled`` is 0 and no seccomp filter blocks bpf(2)):
:func:`load_socket_filter` raises OSError with the kernel's errno, and the caller runs without
the lane.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

#: bpf(2) syscall numbers by (uname machine, bits of this process's pointers): a 32-bit
#: userland on a 64-bit kernel uses the 32-bit table. Little-endian only (the instruction's
#: register nibbles are the other way round on big-endian), and only where the TUN ioctl
#: numbers (alpaca.io.tun) have the generic encoding.
_BPF_SYSCALL = {("x86_64", 64): 321, ("x86_64", 32): 357, ("i686", 32): 357,
                ("aarch64", 64): 280, ("aarch64", 32): 386, ("armv7l", 32): 386,
                ("armv6l", 32): 386, ("riscv64", 64): 280}
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
_LDX_W_MEM, _JGT_K, _MOV64_K, _EXIT = 0x61, 0x25, 0xB7, 0x95
_INSN = struct.Struct("=BBhi")
#: union bpf_attr for BPF_PROG_LOAD, up to log_buf (the rest zero): prog_type, insn_cnt,
#: insns, license, log_level, log_size, log_buf.
_PROG_LOAD = struct.Struct("=IIQQIIQ")
_ATTR_SIZE = 72
_SKB_LEN = 0  # offsetof(struct __sk_buff, len)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def size_steering(small_bytes: int, small_queue: int) -> bytes:
    """The program: ``small_queue`` for a packet of at most ``small_bytes``, else queue 0."""
    return b"".join((
        _insn(_LDX_W_MEM, dst=0, src=1, off=_SKB_LEN),  # r0 = skb->len
        _insn(_JGT_K, dst=0, off=2, imm=small_bytes),    # if r0 > small_bytes: skip 2
        _insn(_MOV64_K, dst=0, imm=small_queue),
        _insn(_EXIT),
        _insn(_MOV64_K, dst=0, imm=0),
        _insn(_EXIT),
    ))


def load_socket_filter(program: bytes) -> int:
    """Load ``program`` (eBPF instructions) as a socket filter; return its fd (the caller
    closes it once attached). Raises OSError (ENOSYS on an architecture not listed here)."""
    where = (platform.machine(), struct.calcsize("P") * 8)
    number = _BPF_SYSCALL.get(where) if sys.byteorder == "little" else None
    if number is None:
        raise OSError(errno.ENOSYS, f"no bpf syscall number known for {where[0]} ({where[1]}-bit)")
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _PROG_LOAD.pack_into(attr, 0, BPF_PROG_TYPE_SOCKET_FILTER, len(program) // _INSN.size,
                         ctypes.addressof(insns), ctypes.addressof(license_), 0, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(number), ctypes.c_int(BPF_PROG_LOAD), attr,
                      ctypes.c_uint(_ATTR_SIZE))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)
