"""The daemon: set the host up, run the dataplane, serve metrics and control, tear down.

Start-up order (the original's, made reversible): recover a journal left by a crashed run (and
those of crashed runs of this namespace with another control socket) -> check that the UDP
ports are free, the metrics address is this host's and no other device has tun_name (a
refused start changes nothing and runs no hook; a metrics port in use is served once free)
-> take a new session epoch (persisted before any packet is sealed) ->
pre_up hooks -> open the TUN device -> host changes (plan/apply with a write-ahead undo
journal: ip_forward, TUN address and MTU, chnroute, host routes, default route or NAT) ->
post_up hooks -> bind the UDP ports -> start the engine's greenlets, the route monitor, the
secrets watcher, the metrics server and the control socket -> wait for a signal.

Stop (SIGTERM/SIGINT, or a fatal error in any greenlet): kill the greenlets, undo every host
change from the journal, pre_down hooks, close the TUN device (the kernel removes it),
post_down hooks (the down hooks only if the post_up hooks ran: a start that failed before
them must not undo what another instance's hooks made).
SIGHUP (and any change to the secrets file) reloads the secrets file and the config without
dropping learned paths, and moves a client's host routes to the peers'
new addresses, local_routes and gateway (journaled like the start's); a changed key that only a
restart applies is logged (RESTART_KEYS). Reloads run one at a time in their own greenlet and
look hostnames up on the hub, so traffic flows while one waits for a name server.
SIGUSR1 logs a state dump.

Greenlet contract: everything runs on the main thread's hub; no OS threads, no monkey-patching.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Group
from pyroute2.netlink.exceptions import NetlinkError

from alpaca import __version__, compat
from alpaca.config import Config, load_config, reach_warnings
from alpaca.configreader import shown_path
from alpaca.control import ControlServer, json_chunks
from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.stats import EngineStats
from alpaca.errors import AlpacaError, TunnelError
from alpaca.hooks import run_hooks
from alpaca.hostplan import host_plan, host_plan_input
from alpaca.io import hub_turns, preflight
from alpaca.io.clock import monotonic, wall
from alpaca.io.dataplane import Dataplane
from alpaca.io.epoch import next_epoch
from alpaca.io.rename import HostnameFollower
from alpaca.io.tun import TunDevice
from alpaca.io.udp import UdpPort, receive_drops
from alpaca.io.watch import FileWatch
from alpaca.metrics import Exporter, build_registry, listen_error, serve_metrics
from alpaca.paths import file_identity
from alpaca.secrets import Secrets, load_secrets
from alpaca.snapshot import snapshot
from alpaca.system import instance, link, sched
from alpaca.system import journal as journal_mod
from alpaca.system.monitor import RouteMonitor, reconcile
from alpaca.system.plan import (
    Applied,
    ConfigureTun,
    apply,
    follow_uplink,
    host_route_dsts,
    keep_default_moved,
    next_way,
    note_restored,
    note_ways,
    update_default_route,
    update_host_routes,
    ways_of,
)
from alpaca.system.resolver import KernelResolver
from alpaca.system.routes import ExpectedRoute, Uplink
from alpaca.system.sdnotify import Notifier

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0
#: Seconds between two log lines about default routes moved out of main again (counted).
MOVED_LOG_INTERVAL = 10.0
#: Seconds an uplink must have stopped working before the peers move to a backup link: a
#: DHCP client moving the uplink to another network deletes the old address first and adds
#: the new default a moment later (the peers would go over the backup and back).
FAIL_OVER_HOLD = 3.0
#: seconds before a reload whose host routes the kernel refused is run again
RELOAD_RETRY = 5.0
#: seconds between two tries of a metrics port another program holds
METRICS_RETRY = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartInterrupted(AlpacaError):
    """SIGTERM or SIGINT arrived while the daemon was starting."""


def _freeze_start_up_heap() -> None:
    """Collect once, then move every object alive after start-up (modules, pyroute2, the
    registry, the engine's tables) out of the cyclic GC's reach (``gc.freeze``). Otherwise the
    first full collection came with the first traffic and held the hub for 27-37 ms (measured
    with gc.callbacks in both bench daemons); later full collections only scan what came
    after. The packet path allocates almost no tracked containers: no collection at all ran
    during an 8 s saturating transfer. (Start-up objects that a reload later drops are never
    collected if they form cycles: a bounded, one-time cost.)"""
    gc.collect()
    gc.freeze()


class Daemon:
    """One running node. ``start()``, then ``wait()``; ``stop()`` is idempotent."""

    def __init__(self, config: Config, secrets: Secrets,
                 reload_asked: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.secrets = secrets
        #: whether a SIGHUP came before start() (entry.EarlySignals): it becomes a reload
        self._reload_asked_early = reload_asked
        #: realtime_priority of the config last applied (0 at start: the scheduling the process
        #: was started with, e.g. by chrt or a systemd unit, is left as it is)
        self.realtime_priority = 0
        self.group = Group()
        self.stopped = Event()
        #: set by reload() (SIGHUP, the secrets file changed); the reloader greenlet clears it
        self._reload_wanted = Event()
        #: the pending run of a reload the host's routes refused (RELOAD_RETRY)
        self._reload_retry: gevent.Greenlet | None = None
        #: the chnroute data file as the start read it (a reload names a changed one)
        self._chnroute_file = file_identity(config.chnroute.data) if config.chnroute else None
        #: names of the ports whose interface was missing at the last look
        self._ports_missing: set[str] = set()
        self.exit_code = 0
        self.engine: Engine | None = None
        self.mux: compat.ProtocolMux | None = None
        #: how start configured the TUN device (address, MTU), to set it up again if changed
        self._tun_op: ConfigureTun | None = None
        #: our routes whose place another program's route holds, each warned about once
        self._displaced: set[ExpectedRoute] = set()
        #: a new uplink that could not be followed yet (plan.follow_uplink failed)
        self._uplink_pending: Uplink | None = None
        #: when the uplink in use was first seen not working (monotonic s), None while it works
        self._uplink_dead_since: float | None = None
        #: the greenlet that looks again once FAIL_OVER_HOLD has passed, if one is waiting
        self._fail_over_check: Any = None
        self._moved_unlogged = 0
        self._moved_logged_at = float("-inf")
        self.plane: Dataplane | None = None
        self.tun: TunDevice | None = None
        self.ports: list[UdpPort] = []
        self.journal = journal_mod.Journal(journal_mod.journal_of(config.control_socket))
        self.started_at = wall()
        self.started_mono = monotonic()
        #: host changes in place (routes to keep, the uplink); set by start(), followed by reload()
        self.applied = Applied()
        self._closers: list[Any] = []
        self._stopping = False
        self._start_signals: list[Any] = []
        #: the instance lock's descriptor (alpaca.system.instance), held until stop() ends
        self._lock: int | None = None
        #: the post_up hooks ran: only then do the down hooks (a failed start runs none)
        self._hooks_up = False
        #: systemd's Type=notify (READY, RELOADING, STOPPING); sends nothing without systemd
        self.notify = Notifier.from_environment()

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        cfg = self.config
        self._catch_stop_during_start()
        # From the first instant: their default action would end the process with no undo
        # (a reload asked for now runs once the reloader is up; a dump before the engine is a no-op).
        gevent.signal_handler(signal.SIGHUP, self.reload)
        gevent.signal_handler(signal.SIGUSR1, self.dump_state)
        if self._reload_asked_early():  # checked once ours are in place: none is missed
            self.reload()
        self._lock = instance.hold(instance.lock_path(cfg.control_socket),
                                   f"{cfg.path}: control_socket {cfg.control_socket}")
        failures = journal_mod.recover(self.journal.path)
        if failures is not None:
            log.warning("undid host changes of a previous run journal=%s failed=%d",
                        self.journal.path, len(failures))
        if failures:  # the steps that failed again stay: this run's stop tries them once more
            self.journal = journal_mod.resume(self.journal.path)
        journal_mod.recover_orphans(self.journal.path)
        self._check_ports_free()
        link.check_name_free(cfg.tun_name)  # before the hooks: a refused start runs none
        epoch = next_epoch(cfg.state_file, wall())
        run_hooks("pre_up", cfg.pre_up_cmds, strict=cfg.strict_hooks, before_each=self._hook_time)
        self.tun = TunDevice.open(cfg.tun_name, offload=cfg.tun_offload, priority_lane=cfg.tun_priority_lane)
        if cfg.tun_offload and not self.tun.offload:
            log.warning("the kernel refused TUN offload; running without it tun=%s", self.tun.name)
        if self.tun.lane_problem:
            log.info("no priority lane on the TUN device (small packets share its queue): %s;"
                     " set tun_priority_lane false to silence this tun=%s", self.tun.lane_problem,
                     self.tun.name)
        ops = host_plan(cfg, self.secrets)
        self._tun_op = next((op for op in ops if isinstance(op, ConfigureTun)), None)
        self.applied = apply(ops, self.journal)
        # From now on no change is missed: those made during the rest of the start (a post_up
        # hook, a DHCP client's default) wait in its socket until the monitor runs.
        monitor = RouteMonitor().open()
        self._closers.append(monitor.close)
        run_hooks("post_up", cfg.post_up_cmds, strict=cfg.strict_hooks, before_each=self._hook_time)
        self._hooks_up = True
        rcvbuf = cfg.udp_rcvbuf_kib << 9  # the kernel doubles what it is asked for
        ports = [UdpPort.open(p.name, p.address, p.port, p.interface, rcvbuf=rcvbuf,
                              priority_lane=cfg.udp_priority_lane) for p in cfg.ports]
        self._closers.extend(port.close for port in ports)
        self.ports = ports
        resolver = KernelResolver()
        self._closers.append(resolver.close)
        self.plane = Dataplane(self.tun, ports, read_ahead=cfg.tun_read_ahead_kib << 10)
        settings, legacy = compat.split_settings(cfg, self.secrets, wall() - monotonic())
        self.engine = Engine(settings, self.plane, epoch=epoch,
                             random_bytes=os.urandom, resolver=resolver)
        self.mux = compat.attach(self.plane, self.engine, legacy, cfg, self.secrets, os.urandom)
        self._apply_scheduling(cfg)
        hub = gevent.get_hub()  # an AlpacaError is an expected failure with a clear message
        if AlpacaError not in hub.NOT_ERROR:  # once per hub, however many starts
            hub.NOT_ERROR = (*hub.NOT_ERROR, AlpacaError)
        for greenlet in self.plane.start(self.group):
            greenlet.link_exception(self._on_fatal)
        self._start_monitors(monitor)
        self._start_observability()
        for signum in STOP_SIGNALS:  # before the start-up ones go: no instant of default action
            gevent.signal_handler(signum, self.stop_soon)
        self._cancel_start_signals()
        _freeze_start_up_heap()
        log.info("started node=%s tun=%s epoch=%d ports=%s version=%s", format_peer_id(cfg.id),
                 self.tun.name, epoch, ",".join(f"{p.name}={p.local_addr[0]}:{p.local_addr[1]}"
                                                for p in ports), __version__)
        self.notify.send("READY=1", f"STATUS=node {format_peer_id(cfg.id)} up on {self.tun.name}")

    def _check_ports_free(self) -> None:
        """Stop before the host is touched if a port this node will listen on is taken."""
        cfg = self.config
        for p in cfg.ports:
            preflight.check_udp_port(p.name, p.address, p.port, p.interface)
        if cfg.metrics.enabled:
            host, port = cfg.metrics.host, cfg.metrics.port
            exc = preflight.tcp_port_taken(host, port)
            if exc is not None and exc.errno != errno.EADDRINUSE:  # in use: served once free
                raise TunnelError(f"{cfg.path}: {listen_error(host, port, exc)}")

    def _catch_stop_during_start(self) -> None:
        """Until start() is done, SIGTERM/SIGINT raise StartInterrupted in the starting
        greenlet (at its next wait, e.g. for the uplink), so run() undoes what was done."""
        starter = gevent.getcurrent()

        def deliver() -> None:  # decided when it lands: not inside stop(), whose undo it would cut
            if not self._stopping and not starter.dead:
                starter.throw(StartInterrupted(
                    "stopped by a signal during start-up; the host changes made so far are undone"))

        def interrupt() -> None:
            gevent.get_hub().loop.run_callback(deliver)

        self._start_signals = [gevent.signal_handler(s, interrupt) for s in STOP_SIGNALS]

    def _cancel_start_signals(self) -> None:
        for watcher in self._start_signals:
            watcher.cancel()
        self._start_signals = []

    def _spawn(self, name: str, func: Any, *args: Any) -> None:
        greenlet = self.group.spawn(func, *args)
        greenlet.name = name
        greenlet.link_exception(self._on_fatal)

    def _start_monitors(self, monitor: RouteMonitor) -> None:
        """Start the reloader, the hostname lookups, ``monitor`` (open since the host plan was
        applied) and the secrets file's watch."""
        self._spawn("the reloader", self._reloader)
        self._spawn("the hostname lookups", HostnameFollower.of(self).run)
        self._spawn("the route monitor", monitor.run, self._on_routes_changed)
        try:
            watch = FileWatch(self.secrets.path).open(seen=self.secrets.identity)
        except OSError as exc:
            log.warning("not watching the secrets file path=%s error=%s", self.secrets.path, exc)
            return
        self._closers.append(watch.close)
        if watch.catch_up():  # written while we started (hooks, the uplink, name lookups)
            log.info("the secrets file changed during start-up; reloading path=%s", self.secrets.path)
            self.reload()
        self._spawn("the secrets file watch", watch.run, self.reload)

    def _start_observability(self) -> None:
        cfg = self.config
        if cfg.metrics.enabled:
            registry = build_registry(lambda: self.engine, monotonic, version=__version__,
                                      start_time=self.started_at, node=format_peer_id(cfg.id),
                                      stats_ref=self._node_stats,
                                      port_drops=lambda: receive_drops(self.ports))
            self._serve_metrics(registry)
        control = ControlServer(cfg.control_socket, self.snapshot)
        control.start()
        self._closers.append(control.stop)

    def _serve_metrics(self, registry: Exporter) -> None:
        """Serve ``registry`` on metrics.listen. A port another program holds does not stop
        the tunnel (any local user may take an unprivileged port first): the error is logged
        and the port tried again every METRICS_RETRY seconds until it is free."""
        cfg = self.config
        try:
            server = serve_metrics(registry, cfg.metrics.host, cfg.metrics.port)
        except TunnelError as exc:
            cause = exc.__cause__
            if not isinstance(cause, OSError) or cause.errno != errno.EADDRINUSE:
                raise TunnelError(f"{cfg.path}: {exc}") from exc
            log.error("%s: %s; the tunnel runs without it, trying again every %.0f s",
                      cfg.path, exc, METRICS_RETRY)
            self._spawn("the metrics port retry", self._serve_metrics_when_free, registry)
            return
        self._closers.append(server.stop)

    def _serve_metrics_when_free(self, registry: Exporter) -> None:
        while True:
            gevent.sleep(METRICS_RETRY)
            try:
                server = serve_metrics(registry, self.config.metrics.host, self.config.metrics.port)
            except TunnelError:
                continue
            self._closers.append(server.stop)
            return

    def snapshot(self) -> dict[str, Any]:
        """The state ``alpaca-tunnel show`` prints (the same numbers as /metrics), built with
        turns for the hub (call it from a greenlet, not the hub)."""
        assert self.engine is not None
        with hub_turns() as turn:
            return snapshot(self.engine, monotonic(), started_at=self.started_mono,
                            version=__version__, pause=turn, stats=self._node_stats())

    def _node_stats(self) -> EngineStats:
        """Node-wide counters: the default engine's, plus the legacy engine's when one runs."""
        assert self.engine is not None
        return self.engine.stats if self.mux is None else self.mux.stats

    # ------------------------------------------------------------------ events
    def _on_routes_changed(self) -> None:
        """Routes, rules, addresses or links changed: forget cached answers, leave an uplink
        that stopped working, put back our routes, move a default route that reappeared in
        main out of the way again, and follow the way out it names if that is a new one."""
        if self.engine is not None:
            self.engine.flush_routes()
        self._follow_port_devices()
        self._keep_tun_address()
        if self.applied.expected and not self._stopping:
            self._fail_over()
            try:
                restored = reconcile(self.applied.expected, displaced=self._displaced)
                self.applied = note_restored(self.applied, restored)
            except (AlpacaError, OSError, NetlinkError) as exc:  # the monitor must go on
                log.warning("could not restore a route: %s", exc)
            try:  # whatever reconcile managed: a default back in main must not take the traffic
                moved = keep_default_moved(self.applied, self.journal)
            except (AlpacaError, OSError, NetlinkError) as exc:
                log.warning("could not move a default route out of table main again: %s", exc)
                return
            if moved:
                self._report_moved(len(moved))
                self.applied = note_ways(self.applied, moved, self.config.tun_name)
            ways = ways_of(moved, self.config.tun_name)
            self._follow_uplink(min(ways, key=lambda u: u.metric, default=self._uplink_pending))

    def _report_moved(self, count: int) -> None:
        """Log default routes moved out of main again, at most once per MOVED_LOG_INTERVAL
        seconds (a DHCP client re-adding one in a loop must not flood the log)."""
        self._moved_unlogged += count
        now = monotonic()
        if now - self._moved_logged_at < MOVED_LOG_INTERVAL:
            return
        log.warning("a default route reappeared in table main; moved it again (back on exit) "
                    "count=%d", self._moved_unlogged)
        self._moved_logged_at, self._moved_unlogged = now, 0

    def _keep_tun_address(self) -> None:
        """Someone flushed the TUN device's address (the kernel then dropped every route
        through it, the tunnel's default included), set it down, or changed its MTU: set it
        up again as at start, so that reconcile can restore the routes."""
        op = self._tun_op
        if op is None or self._stopping:
            return
        try:
            change = link.differs_from(op.tun, op.address_cidr, op.mtu)
            if change is None:
                return
            link.configure_tun(op.tun, op.address_cidr, op.mtu, txqueuelen=op.txqueuelen)
        except (AlpacaError, OSError, NetlinkError) as exc:
            log.warning("could not set the tunnel device up again: %s", exc)
            return
        log.warning("the tunnel device was changed (%s); set it up again dev=%s addr=%s mtu=%d",
                    change, op.tun, op.address_cidr, op.mtu)

    def _fail_over(self) -> None:
        """A client whose uplink stopped working for FAIL_OVER_HOLD seconds: the peers are
        routed via the best saved way out that works (plan.next_way); a better one that
        works again takes them at once. Logged like a new uplink; a failure is logged and
        tried again at the next route event."""
        if self._stopping:
            return
        before = self.applied.uplink
        try:
            way, dead = next_way(self.applied)
            if not dead:
                self._uplink_dead_since = None
            if way is None or (dead and self._hold_fail_over()):
                return
            self.applied = follow_uplink(self.applied, way)
        except (AlpacaError, OSError, NetlinkError) as exc:
            log.warning("could not route the peers via another uplink (tried again at the next "
                        "route change): %s", exc)
            return
        self._uplink_dead_since = None
        self._log_uplink_change(before)

    def _hold_fail_over(self) -> bool:
        """True while the uplink in use has not been dead for FAIL_OVER_HOLD seconds yet (a
        check is then due when they have passed)."""
        now = monotonic()
        if self._uplink_dead_since is None:
            self._uplink_dead_since = now
        wait = self._uplink_dead_since + FAIL_OVER_HOLD - now
        if wait <= 0:
            return False
        if self._fail_over_check is None:
            self._fail_over_check = gevent.spawn_later(wait, self._check_fail_over)
            self._fail_over_check.name = "the uplink check"
            self.group.add(self._fail_over_check)
        return True

    def _check_fail_over(self) -> None:
        self._fail_over_check = None
        self._fail_over()

    def _log_uplink_change(self, before: Uplink | None) -> None:
        after = self.applied.uplink
        if after is not before and after is not None and before is not None:
            log.warning("the uplink changed; peers are routed via the new one gateway=%s dev=%s "
                        "(was gateway=%s dev=%s)", after.gateway or "-", after.dev,
                        before.gateway or "-", before.dev)

    def _follow_uplink(self, uplink: Uplink | None) -> None:
        """A client: ``uplink`` is the way out a default route that reappeared in table main
        named (a DHCP lease, maybe on another network): the host routes to the peers go via
        it from now on if plan.follow_uplink says so, or the tunnel's own UDP would find no
        way out. One that could not be followed is tried again at the next route event."""
        before = self.applied.uplink
        if uplink is None or before is None:
            return
        try:
            self.applied = follow_uplink(self.applied, uplink)
        except (AlpacaError, OSError, NetlinkError) as exc:
            self._uplink_pending = uplink
            log.warning("could not route the peers via the new uplink (tried again at the next "
                        "route change): %s", exc)
            return
        self._uplink_pending = None
        self._log_uplink_change(before)

    def _follow_port_devices(self) -> None:
        """Ports bound to an interface that was deleted and created again bind to the new one
        (UdpPort.rebind_device); a port whose interface is gone is logged once."""
        for port in self.ports:
            state = port.rebind_device()
            if state == "rebound":
                log.warning("port bound again to its interface, which was re-created port=%s "
                            "interface=%s", port.name, port.interface)
            elif state == "missing" and port.name not in self._ports_missing:
                log.warning("the interface of a port is gone; its sends fail until it is back "
                            "port=%s interface=%s", port.name, port.interface)
            if state == "missing":
                self._ports_missing.add(port.name)
            else:
                self._ports_missing.discard(port.name)

    def _on_fatal(self, greenlet: Any) -> None:
        """A task ended with an exception: stop. An AlpacaError says what happened in its
        message (the hub prints no traceback for it, see start()); anything else is a bug,
        whose traceback the hub has printed."""
        exc = greenlet.exception
        detail = str(exc) if isinstance(exc, AlpacaError) else repr(exc)
        log.error("stopping after a fatal error in %s: %s", getattr(greenlet, "name", "a task"), detail)
        self.exit_code = 1
        self.stop_soon()

    def stop_soon(self) -> None:
        """Signal-safe: ask the main greenlet to stop."""
        self.stopped.set()

    def reload(self) -> None:
        """Signal-safe: ask for a reload (SIGHUP, the secrets file changed). The reloader
        greenlet runs one at a time; asking during one gives one more after it."""
        self._reload_wanted.set()

    def _reloader(self) -> None:
        """Forever: wait for a reload request, then run it. It runs in the daemon's group, so
        stop() kills one that is waiting for a name server instead of letting it go on."""
        while True:
            self._reload_wanted.wait()
            self._reload_wanted.clear()
            self.reload_now()

    def reload_now(self) -> None:
        """Re-read the secrets file and the config; keep the old state on error. RESTART_KEYS
        keep their running values everywhere (a changed one is logged), so a reload never
        half-applies one. Hostnames are looked up on the hub (alpaca.io.dns): traffic flows
        meanwhile. The service manager hears RELOADING before and READY after, either way."""
        self.notify.reloading(time.monotonic_ns() // 1000)
        try:
            self._reload()
        finally:
            self.notify.send("READY=1")

    def _reload(self) -> None:
        try:
            loaded = load_config(self.config.path)
            changed = restart_keys_changed(self.config, loaded)
            for key in changed:  # first: they explain what follows
                log.warning("config key changed but needs a restart key=%s", CONFIG_KEY.get(key, key))
            chnroute = self.config.chnroute
            edited = chnroute.data if chnroute is not None else None
            if edited is not None and file_identity(edited) == self._chnroute_file:
                edited = None
            if edited is not None:
                log.warning("chnroute data file changed but needs a restart file=%s", shown_path(edited))
            if self.engine is not None:
                self.engine.stats.restart_pending = int(bool(changed) or edited is not None)
            other_node = [key for key in ("mode", "id") if key in changed]
            if other_node:  # the gateway, forwarders and secrets of that file are another node's
                log.error("reload refused: %s changed, the config describes another node; restart "
                          "to apply it (the running configuration is kept)", " and ".join(other_node))
                self._reload_done(ok=False)
                return
            config = replace(loaded, **{key: getattr(self.config, key) for key in RESTART_KEYS})
            with hub_turns() as turn:  # 10,000 peers: 0.2 s of parsing
                secrets = load_secrets(config.secret_file, config.id, self.secrets, turn)
            settings, legacy = compat.split_settings(config, secrets, wall() - monotonic())
            for warning in reach_warnings(config, secrets):
                log.warning("%s", warning)
        except AlpacaError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self._reload_done(ok=False)
            return
        except Exception as exc:  # a bug in reading must not stop the tunnel
            log.error("reload failed, keeping the running configuration (this is a bug): %r", exc)
            self._reload_done(ok=False)
            return
        if self.engine is None or self.plane is None:
            return
        peers_routed, complete = self._update_host_routes(config, secrets)
        self._reload_done(ok=complete)
        if not peers_routed:  # kept whole: the scheduling too
            return
        self._apply_scheduling(config)
        self.engine.reload(settings)
        self.mux = compat.reload_legacy(self.plane, self.engine, self.mux, legacy, config, secrets,
                                        os.urandom)
        self.plane.rearm()  # new peers are probed now, not at the old deadline
        self.secrets = secrets
        log.info("reloaded peers=%d forwarders=%s", len(secrets.peers),
                 ",".join(format_peer_id(f) for f in settings.forwarders) or "none")

    def _reload_done(self, *, ok: bool) -> None:
        """Count a reload that kept the running configuration, for the metrics (the log says
        why); one that applies clears the mark."""
        if self.engine is None:
            return
        stats = self.engine.stats
        stats.reload_failures += not ok
        stats.reload_failed = int(not ok)

    def _update_host_routes(self, config: Config, secrets: Secrets) -> tuple[bool, bool]:
        """Client: route the reloaded peers' addresses and local_routes via the uplink (the new
        ones first), then point the default route at the reloaded gateway. Each step is all or
        nothing; a netlink failure is logged and the reload runs again in RELOAD_RETRY
        seconds. Returns (the peers' routes are the new ones, both steps done): without the
        first the engine must keep the old addresses (a new one would be routed into the
        tunnel itself); without the second the reload has not fully applied."""
        inp = host_plan_input(config, secrets)
        try:
            applied = update_host_routes(self.applied, host_route_dsts(inp), self.journal)
            if applied is not self.applied:
                old, new = set(self.applied.host_dsts), set(applied.host_dsts)
                log.info("host routes updated added=%s removed=%s",
                         ",".join(sorted(new - old)) or "-", ",".join(sorted(old - new)) or "-")
                self.applied = applied
            self.applied = update_default_route(self.applied, inp.gateway_ip)
        except AlpacaError as exc:
            routes_done = self.applied.host_dsts == host_route_dsts(inp)
            which = ("the default route stays on the old gateway" if routes_done
                     else "the running configuration is kept")
            log.warning("reload could not update the host's routes (%s), trying again in %.0f s: %s",
                        which, RELOAD_RETRY, exc)
            self._retry_reload()
            return routes_done, False
        return True, True

    def _retry_reload(self) -> None:
        """Ask for a reload in RELOAD_RETRY seconds (once: one pending retry at a time)."""
        if self._reload_retry is None or self._reload_retry.dead:
            self._reload_retry = gevent.spawn_later(RELOAD_RETRY, self.reload)
            self.group.add(self._reload_retry)

    def _apply_scheduling(self, config: Config) -> None:
        """Put the process under ``config``'s realtime_priority when it differs from the one
        applied last (so a default 0 never touches inherited scheduling); a refusal is logged,
        not fatal (the daemon runs on with the scheduling it had)."""
        priority = config.realtime_priority
        if priority == self.realtime_priority:
            return
        problem = sched.set_realtime(priority)
        if problem is not None:
            log.warning("%s: realtime_priority: the kernel refused SCHED_RR priority %d: %s; "
                        "running with the scheduling it had (set it to 0 to silence this)",
                        config.path, priority, problem)
            return
        self.realtime_priority = priority
        log.info("scheduling policy=%s priority=%d", "SCHED_RR" if priority else "normal", priority)

    def dump_state(self) -> None:
        """SIGUSR1: log the snapshot as one line, encoded with turns for the hub."""
        if self.engine is not None:
            state = self.snapshot()
            with hub_turns() as turn:
                parts = []
                for chunk in json_chunks(state):
                    parts.append(chunk)
                    turn()
            log.info("state %s", b"".join(parts).decode().rstrip("\n"))

    # ------------------------------------------------------------------ stop
    def wait(self) -> int:
        self.stopped.wait()
        self.stop()
        return self.exit_code

    def stop(self) -> None:
        """Tear everything down in reverse order. Safe to call more than once."""
        if self._stopping:
            return
        self._stopping = True
        self.notify.send("STOPPING=1")
        if self._start_signals:  # stopped during start: a second signal must not cut the undo short
            stop_soon = [gevent.signal_handler(s, self.stop_soon) for s in STOP_SIGNALS]
            self._cancel_start_signals()  # after: no instant of the default action (death)
            self._start_signals = stop_soon
        if self._lock is None:  # start() failed before the lock: the host is another's to undo
            self._cancel_start_signals()
            return
        try:
            self._stop_greenlets()
        finally:  # whatever went wrong above, the host gets its state back
            try:
                self._undo_host()
            finally:
                self._cancel_start_signals()
                os.close(self._lock)
                self._lock = None
        log.info("stopped node=%s", format_peer_id(self.config.id))

    def _stop_greenlets(self) -> None:
        """Kill the daemon's greenlets, then close its sockets, server and watchers; a closer
        that fails is logged and the next one runs."""
        self.group.kill(timeout=STOP_TIMEOUT)
        for close in reversed(self._closers):
            try:
                close()
            except (OSError, AlpacaError) as exc:
                log.warning("error while closing: %s", exc)
            except Exception as exc:  # a bug in one closer must not keep the others open
                log.error("error while closing (this is a bug): %r", exc)

    def _hook_time(self, seconds: float) -> None:
        """A hook may run ``seconds`` (5 more to be killed and reaped): the service manager
        waits that much longer (three 60 s down hooks outlasted TimeoutStopSec=150, and it
        killed the daemon before post_down ran)."""
        self.notify.extend_timeout(seconds + 5)

    def _undo_host(self) -> None:
        """Undo the journal's host changes and run the down hooks around the TUN's close; a
        failed undo step makes the exit code 1."""
        failures = self.journal.undo_all()
        if failures:
            self.exit_code = 1
        if self._hooks_up:
            run_hooks("pre_down", self.config.pre_down_cmds, before_each=self._hook_time)
        if self.plane is not None:
            self.plane.close()
        elif self.tun is not None:
            self.tun.close()
        if self._hooks_up:
            run_hooks("post_down", self.config.post_down_cmds, before_each=self._hook_time)


#: Config keys read only at start (the down hooks: at stop, from the start's config): a reload
#: that changes one logs that it needs a restart. A reload applies the rest: the secrets file
#: (with the host routes to the peers' addresses), local_routes, gateway (the moved default
#: route follows it), forwarders, dup (its queue bound too), padding, probing and path timers,
#: ttl, inner_source_check, protocols and realtime_priority. The replay window sizes each flow
#: when it starts.
RESTART_KEYS = (
    "tun_name", "ports", "mode", "net", "id", "mtu", "group", "tun_txqueuelen", "replay_window",
    "tun_offload", "tun_read_ahead_kib", "tun_priority_lane", "udp_rcvbuf_kib", "udp_priority_lane",
    "metrics", "control_socket", "state_file", "secret_file", "route_table", "chnroute",
    "pre_up_cmds", "post_up_cmds", "pre_down_cmds", "post_down_cmds", "strict_hooks", "log_level",
)


#: Config attributes whose key in the file is spelt otherwise (for messages).
CONFIG_KEY = {"ports": "port/ports"}


def restart_keys_changed(running: Config, loaded: Config) -> list[str]:
    """The RESTART_KEYS whose value differs between the running and the reloaded config."""
    return [key for key in RESTART_KEYS if getattr(running, key) != getattr(loaded, key)]


def run(config: Config, secrets: Secrets, reload_asked: Callable[[], bool] = lambda: False) -> int:
    """Run a node until a stop signal; return the process exit code. ``reload_asked``: whether
    a reload was asked for before the daemon's signal handlers were in place."""
    daemon = Daemon(config, secrets, reload_asked)
    try:
        daemon.start()
        return daemon.wait()
    except StartInterrupted as exc:  # a stop asked for: as clean as one after the start
        daemon.stop()
        if daemon.exit_code:
            log.warning("stopped by a signal during start-up; some host changes could not be undone"
                        " (see above): `alpaca-tunnel cleanup` retries")
        else:
            log.info("%s", exc)
        return daemon.exit_code
    except BaseException:  # also a start-up signal whose interrupt lands just after start()
        daemon.stop()
        raise
