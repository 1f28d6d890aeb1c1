"""`xdpbr daemon`: keep every attached bridge's fast path in line with the kernel bridge.

- FDB: RTM_NEWNEIGH/RTM_DELNEIGH (AF_BRIDGE) go into the mirror as they arrive; a netlink
  overrun (ENOBUFS) or a restart triggers a full dump and diff.
- Aging: entries the fast path used (last_seen) are refreshed in the kernel with NTF_USE, at
  most once a second, and only while the kernel still has them on the same port.
- Ports: RTM_NEWLINK/RTM_DELLINK of the bridge or its ports reconcile the ports (hot-plug,
  STP state, isolation, MTU); netfilter rules are re-checked every few seconds.
- Heartbeat: once a second; without it the fast path passes everything after the grace period.
Bridges are found from their pins under /sys/fs/bpf/xdpbr, so `xdpbr attach` and `detach` take
effect without talking to the daemon, and a restarted daemon adopts what is there.
- Configuration (control/config.py): bridges listed there are attached when they appear, unless
  an operator detached them with `xdpbr detach` (remembered across restarts until the next
  `xdpbr attach`); SIGHUP reloads it, and a bad file keeps the running configuration.
- Service: sd_notify READY=1 once the first scan is done (systemd Type=notify), STOPPING=1 at
  SIGTERM; at stop the fast path keeps running, or configured bridges are detached (on_stop).
It is over 400 lines because the daemon's one loop and the state it keeps across bridges
(adoption, configuration, brokers, listeners per namespace) live in one class; the work on one
bridge is control/worker.py's, the namespace listeners control/namespace_events.py's.
"""

import logging
import os
import queue
import signal
import socket
import time

from control import attachment, config, endpoints, netfilter
from control.attachment import attach, detach
from control.namespace_events import NamespaceEvents
from control.worker import BridgeWorker, pin_identity
from loader import bridge_limits, pins
from loader.bridge_id import BridgeId
from loader.errors import XdpbrError
from loader.lock import writer_lock
from loader.netns import netns_exists

log = logging.getLogger("xdpbr.daemon")

HEARTBEAT_S = 1.0
AGING_REFRESH_S = 1.0
# legacy tables are polled this often (a fingerprint of their rules: ~0.3 ms per 500 rules,
# mostly the kernel's IPT_SO_GET_ENTRIES), so a rule is honoured within 1 s; nftables changes
# arrive as notifications
NETFILTER_CHECK_S = 0.75
NETLINK_RECYCLE_S = 60.0  # Session.reopen_netlink: bounds what pyroute2 keeps per request
PIN_SCAN_S = 0.5
LISTENER_RETRY_S = 1.0  # a namespace's event readers that keep failing are retried this often
ATTACH_RETRY_S = 30.0  # a configured bridge that failed to attach is tried again this often
MAX_SLEEP_S = 0.5  # the loop's longest wait for an event or a signal's WAKE
WAKE = ("wake",)  # put by a signal handler: the loop looks at its flags now


class Daemon:
    def __init__(self, cfg=None):
        self.config = cfg or config.Config()
        # (netns, messages or None for a resync, received_ns), or WAKE; SimpleQueue's put is
        # safe from a signal handler, which wakes the loop with WAKE
        self.events = queue.SimpleQueue()
        self.workers = {}
        self.listeners = {}
        self.unadoptable = {}  # (bridge, netns) -> the error already logged
        self.attach_failed = {}  # (bridge, netns) -> (error, when) of a configured bridge
        self.brokers = {}  # (bridge, netns) -> Broker
        self.once = False  # `--once`: resync and exit, no broker
        self.stopping = False
        self.reload_requested = False
        self.metrics_spec = None

    def attach_configured(self, present):
        """Attach configured bridges that exist and are not attached (nor held by an operator's
        `xdpbr detach`). A failure is logged once and retried every ATTACH_RETRY_S."""
        for bc in self.config.bridges:
            key = (bc.name, bc.netns)
            if key in present or config.held_by_operator(bc.label):
                continue
            if bc.netns and not os.path.exists(f"/run/netns/{bc.netns}"):
                continue
            error, when = self.attach_failed.get(key, (None, 0.0))
            if error and time.monotonic() - when < ATTACH_RETRY_S:
                continue
            try:
                attach(
                    bc.name,
                    bc.netns,
                    mode=bc.mode,
                    xdp_mode=bc.xdp_mode,
                    netfilter_choice=bc.netfilter,
                    port_modes=dict.fromkeys(bc.ignore_ports, "bridge"),
                    max_ports=bc.max_ports,
                    fdb_size=bc.fdb_size,
                )
            except XdpbrError as exc:
                if str(exc) != error:
                    log.warning("%s: cannot attach (from %s): %s", bc.label, self.config.path, exc)
                self.attach_failed[key] = (str(exc), time.monotonic())
                continue
            self.attach_failed.pop(key, None)
            log.info("%s: attached (mode %s, from %s)", bc.label, bc.mode, self.config.path)
            present.add(key)
            self.apply_limits(bc)

    def apply_limits(self, bc):
        if bc.fdb_max_learned is None:
            return
        try:
            if bridge_limits.fdb_learned(bc.name, bc.netns)[1] != bc.fdb_max_learned:
                bridge_limits.set_fdb_max_learned(bc.name, bc.netns, bc.fdb_max_learned)
                log.info("%s: fdb_max_learned %d", bc.label, bc.fdb_max_learned)
        except XdpbrError as exc:
            log.warning("%s: %s", bc.label, exc)

    def reload(self):
        """SIGHUP: a new configuration replaces the old only if it loads without error."""
        self.reload_requested = False
        try:
            # started without a file: the instance's default path, and none there is empty
            new = config.load(self.config.path) if self.config.path else config.load_default()
        except XdpbrError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        old = {(b.name, b.netns): b for b in self.config.bridges}
        if new.broker_group != self.config.broker_group:
            self.set_broker_group(new.broker_group)
        self.config = new
        self.attach_failed.clear()
        for bc in new.bridges:
            self.apply_limits(bc)
            worker = self.workers.get((bc.name, bc.netns))
            before = old.get((bc.name, bc.netns))
            if worker and worker.healthy and before and before.ignore_ports != bc.ignore_ports:
                for port in set(before.ignore_ports) - set(bc.ignore_ports):
                    worker.session.set_requested_mode(port, "auto")
                for port in bc.ignore_ports:
                    worker.session.set_requested_mode(port, "bridge")
                worker.needs_reconcile = True
        if new.metrics != (self.metrics_spec or None):
            log.warning("metrics address changes take effect when the daemon restarts")
        log.info("reloaded %s (%d bridges)", new.path, len(new.bridges))
        return True

    def stop_configured(self):
        """on_stop = detach: take xdpbr off the configured bridges (not held: a restart
        attaches them again)."""
        if self.config.on_stop != "detach":
            return
        for bc in self.config.bridges:
            if (bc.name, bc.netns) in set(pins.attached_bridges()):
                try:
                    detach(bc.name, bc.netns)
                    log.info("%s: detached (on_stop = detach)", bc.label)
                except XdpbrError as exc:
                    log.warning("%s: cannot detach: %s", bc.label, exc)

    def start_broker(self, bridge, netns):
        """The AF_XDP broker socket of an adopted bridge (/run/xdpbr/BRIDGE.sock)."""
        from control.broker import Broker

        try:
            self.brokers[(bridge, netns)] = Broker(bridge, netns, group=self.config.broker_group)
        except (OSError, KeyError) as exc:
            log.warning("%s: no AF_XDP broker: %s", bridge, exc)

    def set_broker_group(self, group):
        """A reload's [broker] group: running brokers' sockets change group in place (a new
        socket would cut clients mid-request). The configuration was checked when loaded, but
        the group may have gone since."""
        from control.broker import group_id

        try:
            gid = group_id(group)
        except KeyError:
            log.error("[broker] group %r does not exist: broker sockets keep their group", group)
            return
        for broker in self.brokers.values():
            try:
                broker.set_group(gid)
            except OSError as exc:
                log.warning("%s: cannot set the broker socket's group: %s", broker.bridge, exc)
        log.info("broker sockets now belong to group %s", group or "root")

    def scan(self):
        """Attach configured bridges, adopt newly attached ones, drop detached ones."""
        present = set(pins.attached_bridges())
        self.attach_configured(present)
        for key in list(self.workers):
            if key[1] and not netns_exists(key[1]):
                # its sockets keep a deleted namespace alive, so nothing else would notice
                self.forget(*key)
            elif key not in present:
                log.info("%s: detached, no longer managed", self.workers[key].label)
                self.workers.pop(key).close()
                if key in self.brokers:
                    self.brokers.pop(key).stop()
            elif pin_identity(self.workers[key].session.dir) != self.workers[key].identity:
                self.guarded(self.workers[key], self.workers[key].resync)  # re-attached or upgraded
        for bridge, netns in present - set(self.workers):
            if netns and not netns_exists(netns):
                self.forget(bridge, netns)
                continue
            worker = None
            try:
                # the pins first: a bridge that cannot be adopted starts no readers (they would
                # be stopped again at the end of this scan, and started at the next)
                worker = BridgeWorker(bridge, netns)
                if netns not in self.listeners:
                    # subscribed before resync() dumps the FDB: no event falls between
                    listener = NamespaceEvents(netns, self.events)
                    if listener.failure:
                        listener.stop()
                        raise XdpbrError(
                            f"cannot follow {netns or 'the default namespace'}: {listener.failure}"
                        )
                    self.listeners[netns] = listener
            except XdpbrError as exc:
                if worker:
                    worker.close()
                if self.unadoptable.get((bridge, netns)) != str(exc):  # say it once, not every scan
                    log.warning("%s: cannot adopt: %s", bridge, exc)
                    self.unadoptable[(bridge, netns)] = str(exc)
                continue
            self.unadoptable.pop((bridge, netns), None)
            self.workers[(bridge, netns)] = worker
            if not self.once:  # a one-shot resync serves no VMM: it must not replace a daemon's socket
                self.start_broker(bridge, netns)
            self.guarded(worker, worker.resync)
        for netns in list(self.listeners):
            if not any(n == netns for _, n in self.workers):
                self.listeners.pop(netns).stop()

    def forget(self, bridge, netns):
        """A bridge whose namespace was deleted: its devices, and so its programs, went with
        it; what is left is its pins, its endpoints' records and its broker socket."""
        label = BridgeId(bridge, netns).label
        log.warning("%s: its network namespace is gone; forgetting the bridge and removing its pins", label)
        worker = self.workers.pop((bridge, netns), None)
        if worker:
            worker.close()
        if (bridge, netns) in self.brokers:
            self.brokers.pop((bridge, netns)).stop()
        try:
            with writer_lock():
                attachment.forget(bridge, netns)
            endpoints.forget_namespace(netns)
        except (XdpbrError, OSError) as exc:
            log.warning("%s: cannot remove its pins: %s", label, exc)
        if not any(n == netns for _, n in self.workers) and netns in self.listeners:
            self.listeners.pop(netns).stop()

    def check_listeners(self):
        """A namespace's event readers that stopped on their own are started again, with a
        full resync of its bridges; until then those bridges are unhealthy, so they stop
        heartbeating and the fast path falls back to the bridge within the grace period."""
        now = time.monotonic()
        for netns, listener in list(self.listeners.items()):
            why = listener.failure
            if not why or now < listener.retry_at:
                continue
            listener.stop()
            workers = [w for (_, n), w in self.workers.items() if n == netns]
            if netns and not netns_exists(netns):
                for w in workers:
                    self.forget(w.bridge, netns)
                self.listeners.pop(netns, None)
                continue
            for w in workers:
                if w.healthy is not False:
                    log.warning("%s: event listener stopped (%s); restarting it", w.label, why)
                w.healthy = False
                w.counters.errors += 1
            fresh = NamespaceEvents(netns, self.events)
            fresh.retry_at = now + LISTENER_RETRY_S
            self.listeners[netns] = fresh
            if not fresh.failure:
                self.events.put((netns, None, 0))  # resync its bridges: events were lost meanwhile

    def check_rules(self):
        """Per namespace: read its netfilter rules again when nft said they changed or the
        legacy tables' fingerprint moved, and have its bridges decide their ports anew."""
        for netns, listener in list(self.listeners.items()):
            workers = [w for (_, n), w in self.workers.items() if n == netns]
            if not workers or listener.failure:
                continue
            try:
                fingerprint = netfilter.fingerprint(netns, listener.fingerprint, listener.kept)
                if not listener.rules_dirty and fingerprint == listener.fingerprint:
                    continue
                listener.rules_dirty, listener.fingerprint = False, fingerprint
                snapshot = netfilter.snapshot(netns)
            except (XdpbrError, OSError) as exc:
                if netns and not netns_exists(netns):
                    continue  # check_listeners forgets its bridges
                log.warning("%s: cannot read netfilter rules: %s", netns or "default namespace", exc)
                continue
            for worker in workers:
                worker.rules_changed(snapshot)

    def listening(self, netns):
        listener = self.listeners.get(netns)
        return listener is not None and listener.failure is None

    def guarded(self, worker, step, *args):
        """One step of one bridge; a step that fails is logged and counted, and a bridge whose
        namespace went away is forgotten, so the others keep being served."""
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - one bridge's fault must not stop the daemon
            if worker.netns and not netns_exists(worker.netns):
                self.forget(worker.bridge, worker.netns)
                return
            worker.counters.errors += 1
            log.warning("%s: %s failed: %s", worker.label, step.__name__, exc)

    def run(self, once=False):
        self.once = once
        pins.ensure_bpffs()
        for bc in self.config.bridges:
            self.apply_limits(bc)
        self.scan()
        sd_notify("READY=1")
        if once:
            self.release()
            return 0
        # periodic work per bridge: (seconds, BridgeWorker method)
        periodic = [
            (HEARTBEAT_S, BridgeWorker.heartbeat),
            (AGING_REFRESH_S, BridgeWorker.refresh_aging),
            (NETLINK_RECYCLE_S, BridgeWorker.recycle_netlink),
        ]
        due = [0.0] * len(periodic)
        next_scan = next_rules = 0.0
        while not self.stopping:
            if self.reload_requested:
                self.reload()
            # sleep until an event or the next periodic step, no longer (a signal's flag is
            # seen within MAX_SLEEP_S); a fixed 0.1 s tick cost ~0.1 % of a core doing nothing
            wait = min(next_rules, next_scan, *due) - time.monotonic()
            try:
                event = self.events.get(timeout=min(max(wait, 0.001), MAX_SLEEP_S))
            except queue.Empty:
                event = WAKE
            if event is not WAKE:
                netns, msgs, received_ns = event
                for (_, ns), worker in list(self.workers.items()):
                    if ns != netns:
                        continue
                    if msgs is None:
                        self.guarded(worker, worker.resync)
                    else:
                        self.guarded(worker, worker.on_messages, msgs, received_ns)
            self.check_listeners()
            now = time.monotonic()
            if now >= next_rules:
                next_rules = now + NETFILTER_CHECK_S
                self.check_rules()  # before the reconciles: a changed rule applies now, not a wake-up later
            for worker in list(self.workers.values()):
                self.guarded(worker, worker.reconcile_if_needed)
            for i, (interval, method) in enumerate(periodic):
                if now >= due[i]:
                    due[i] = now + interval
                    for worker in list(self.workers.values()):
                        self.guarded(worker, getattr(worker, method.__name__))
            if now >= next_scan:
                next_scan = now + PIN_SCAN_S
                for worker in list(self.workers.values()):
                    if worker.healthy is not True and self.listening(worker.netns):
                        self.guarded(worker, worker.resync)  # retry a failed or re-attached bridge
                self.scan()
        sd_notify("STOPPING=1")
        self.release()
        self.stop_configured()
        return 0

    def release(self):
        """Close every broker socket, session and listener this daemon opened."""
        for broker in self.brokers.values():
            broker.stop()
        for worker in self.workers.values():
            worker.close()
        for listener in self.listeners.values():
            listener.stop()
        self.brokers, self.workers, self.listeners = {}, {}, {}


def sd_notify(state):
    """Tell systemd (Type=notify) about the service's state; nothing outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), path)
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


def main(once=False, metrics=None, config_path=None):
    cfg = config.load(config_path) if config_path else config.load_default()
    daemon = Daemon(cfg)
    daemon.metrics_spec = metrics or cfg.metrics
    if daemon.metrics_spec:
        from control import metrics as exporter

        addr, port = exporter.serve(daemon.metrics_spec)
        log.info("serving metrics on http://%s:%d/metrics", addr, port)

    def stop(signum, frame):
        daemon.stopping = True
        daemon.events.put(WAKE)

    def reload(signum, frame):
        daemon.reload_requested = True
        daemon.events.put(WAKE)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    log.info("started (pid %d)%s", os.getpid(), f", configuration {cfg.path}" if cfg.path else "")
    return daemon.run(once=once)
