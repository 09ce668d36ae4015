"""Host integration: everything alpaca-tunnel changes on the host, idempotent and reversible.

Modules (one netlink/OS concept each; every function takes ``netns: str | None``):
    netlink   errors, idempotence, PROTO_ALPACA (97), raw bulk route messages
    link      TUN mtu/address/up, the check that no other device has its name
    routes    uplink discovery, default route move/restore, host routes
    chnroute  bulk CIDR list load/remove
    nft       our nftables table (NAT, forward, MSS) and Docker's FORWARD DROP
    sysctl    ip_forward with the previous value journaled
    journal   write-ahead undo journal, crash recovery
    plan      HostPlanInput -> list[Op] (pure) and apply()
    monitor   RouteMonitor (gevent) and reconcile()
    instance  the lock that keeps a second daemon of the same node off the first one's host
    sched     SCHED_RR for the daemon process (config's realtime_priority; no netns: the
              policy belongs to the process, nothing on the host to undo)
    sdnotify  READY / RELOADING / STOPPING for systemd's Type=notify

Only the control greenlet calls into this package (set-up, teardown, reconcile).
"""
