"""Realtime scheduling of the daemon process (config's ``realtime_priority``).

Why: the fair scheduler gives the daemon one share of the CPU among everything runnable. On a
gateway whose cores are also busy with other work (in the bench: the iperf3 sender and
receiver on the same two cores), a packet waits for the daemon's next turn: a few
milliseconds under load. Under SCHED_RR the daemon runs as soon as a packet wakes it, as the
kernel's own forwarding (softirq) does. Measured (docs/performance.md, "Realtime
scheduling"): single-stream throughput 1.8-1.9x, loaded ping p50 2.9 -> 2.0 ms; the p99 falls
below 5 ms only together with a small UDP receive buffer (a tunnel that now saturates its CPU
queues in its own buffer). The reference forwarder and wireguard-go gain alike.

Safety: SCHED_RESET_ON_FORK, so hooks and any other child start with normal scheduling. The
kernel's RT throttling (``kernel.sched_rt_runtime_us``, 95 % by default) leaves every CPU some
time for normal tasks even if the daemon were to spin. The policy belongs to the process and
ends with it: nothing to undo on the host.

Callers: the control greenlet (start-up and reload).
"""

from __future__ import annotations

import os

#: Highest priority accepted in the config (the kernel's SCHED_RR range is 1-99; its own
#: watchdog and migration threads run at 99).
MAX_PRIORITY = 99


def current_priority(pid: int = 0) -> int:
    """The process's SCHED_RR/SCHED_FIFO priority, or 0 under normal scheduling."""
    policy = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
    if policy in (os.SCHED_RR, os.SCHED_FIFO):
        return os.sched_getparam(pid).sched_priority
    return 0


def set_realtime(priority: int, pid: int = 0) -> str | None:
    """Run the process under SCHED_RR at ``priority`` (1-99), or normal scheduling for 0.

    Returns None on success, else the kernel's refusal as text (the process keeps the
    scheduling it had). Idempotent.
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"realtime priority {priority} is outside 0-{MAX_PRIORITY}")
    policy = (os.SCHED_RR | os.SCHED_RESET_ON_FORK) if priority else os.SCHED_OTHER
    try:
        os.sched_setscheduler(pid, policy, os.sched_param(priority))
    except OSError as exc:
        return f"{exc.strerror or exc} (needs root or CAP_SYS_NICE, or RLIMIT_RTPRIO >= {priority})"
    return None
