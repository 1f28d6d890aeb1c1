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
- Configuration (control/config.py): bridges an entry names or matches (shell patterns for the
  name and the namespace, the first matching entry gives the options) are attached when they
  appear, also in namespaces made later: every pin scan lists /run/netns and each candidate
  namespace's bridges (loader/bridge_watch.py: a kept socket, a dump only after a link event).
  Compiles run one at a time, one a scan (ATTACHES_PER_SCAN), so the other bridges' heartbeats
  wait at most one compile (~1.7 s, their grace is 10 s). A bridge that goes (or is made again
  under its name) is forgotten, its pins removed. `xdpbr detach` holds that very bridge
  (its marker remembers its ifindex and namespace) until `xdpbr attach`, or until the bridge or
  its namespace is gone or made again. What the daemon leaves alone, and why, is logged once per
  change and kept for `show` with the entry that attached each bridge (control/daemon/configured.py).
  SIGHUP reloads it, and a bad file keeps the running configuration.
- Service: sd_notify READY=1 once the first scan is done (systemd Type=notify), RELOADING=1 and
  READY=1 around a SIGHUP reload, STATUS= a one-line summary (with READY=1 and once a second),
  STOPPING=1 at SIGTERM; at stop the fast path keeps running, or configured bridges are detached
  (on_stop).
- Its own record (struct xdpbr_daemon, pinned once per instance, loader/pins.py): loop
  generation, when it last scanned, checked rules and reconciled, reloads and the last one's
  result, written once a loop turn, for `show -j`, the metrics and `xdpbr daemon --reload`
  (request_reload: SIGHUP, then wait for the record to show that reload's result).
It is over 400 lines because the daemon's one loop and the state it keeps across bridges
(adoption, configuration, brokers, listeners per namespace) live in one class; the work on one
bridge is control/daemon/worker.py's, the namespace listeners control/daemon/namespace_events.py's,
where the configured bridges are (and what `show` is told of them) control/daemon/configured.py's.
"""

import logging
import os
import queue
import signal
import socket
import time

from ...loader import bridge_limits, pins
from ...loader.bridge_id import BridgeId
from ...loader.errors import NotFound, XdpbrError
from ...loader.layouts import RELOAD_FAILED, RELOAD_OK, DaemonRecord
from ...loader.lock import writer_lock
from ...loader.netns import netns_exists
from .. import config
from ..datapath import attachment
from ..datapath.attachment import attach, detach
from ..endpoints import lifecycle as endpoints
from ..endpoints.broker import Broker, group_id
from ..metrics import collector as exporter
from .configured import HELD, ConfiguredBridges
from .namespace_events import NamespaceEvents
from .worker import BridgeWorker, pin_identity

log = logging.getLogger("xdpbr.daemon")

HEARTBEAT_S = 1.0
AGING_REFRESH_S = 1.0
# legacy tables are polled this often (a fingerprint of their rules: ~0.3 ms per 500 rules,
# mostly the kernel's IPT_SO_GET_ENTRIES), so a rule is honoured within 1 s; nftables changes
# arrive as notifications
NETFILTER_CHECK_S = 0.75
NETLINK_RECYCLE_S = 60.0  # Rtnl.recycle: bounds what pyroute2 keeps per request
PIN_SCAN_S = 0.5
# other tools' TCX programs on the ports raise no netlink event: listed this often (a syscall
# per port and direction), and a change reconciles the bridge
TCX_POLL_S = 2.0
LISTENER_RETRY_S = 1.0  # a namespace's event readers that keep failing are retried this often
ATTACH_RETRY_S = 30.0  # a configured bridge that failed to attach is tried again this often
ATTACHES_PER_SCAN = 1  # compiles one at a time: each blocks the loop ~1.7 s, heartbeats wait that long
MAX_SLEEP_S = 0.5  # the loop's longest wait for an event or a signal's WAKE
WAKE = ("wake",)  # put by a signal handler: the loop looks at its flags now
STATUS_S = 1.0  # STATUS= is sent this often under systemd (at a loop turn, no wake-up of its own)
RELOAD_TIMEOUT_S = 30.0  # `daemon --reload` waits this long for the reload's result
# what a step of one bridge does, for the log (Daemon.guarded)
ACTIONS = {
    "resync": "resync",
    "on_messages": "applying FDB and link events",
    "reconcile_if_needed": "applying port changes",
    "heartbeat": "heartbeat",
    "refresh_aging": "refreshing kernel FDB aging",
    "recycle_netlink": "reopening its netlink socket",
}


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
        self.record = DaemonRecord()  # struct xdpbr_daemon, written once a loop turn
        self.record_pin = None
        self.configured = ConfiguredBridges()  # where they are, markers, what `show` is told

    def attach_configured(self, present, existing=None):
        """Attach the bridges that exist, match an entry (the first in file order gives the
        options) and are not attached, unless `xdpbr detach` holds that very bridge. Compiles run
        one at a time: ATTACHES_PER_SCAN a scan, the others wait their turn in file order. A
        failure is logged once and retried every ATTACH_RETRY_S. What is left alone, and why, is
        logged once per change and kept for `show`. `existing`: look()'s answer of this scan."""
        if existing is None:
            existing = self.configured.look(self.config, {n for _, n in self.workers})
        left, compiles = {}, 0
        for bc, ifindex in self.configured.candidates(self.config, existing):
            key = (bc.name, bc.netns)
            if key in present:
                continue
            if self.configured.held(bc, ifindex):
                left[key] = (bc.entry, HELD)
                continue
            error, when = self.attach_failed.get(key, (None, 0.0))
            if error and time.monotonic() - when < ATTACH_RETRY_S:
                left[key] = (bc.entry, f"cannot attach, tried again every {ATTACH_RETRY_S:.0f} s: {error}")
                continue
            if compiles >= ATTACHES_PER_SCAN:
                continue  # its turn comes at the next scan
            compiles += 1
            try:
                attach(
                    bc.name,
                    bc.netns,
                    mode=bc.mode,
                    xdp_mode=bc.xdp_mode,
                    netfilter_choice=bc.netfilter,
                    netfilter_counters=bc.netfilter_counters,
                    port_modes=dict.fromkeys(bc.ignore_ports, "bridge"),
                    max_ports=bc.max_ports,
                    fdb_size=bc.fdb_size,
                )
            except XdpbrError as exc:
                if str(exc) != error:
                    log.warning(
                        "%s: cannot attach (%s of %s), left alone, tried again every %.0f s: %s",
                        bc.label,
                        bc.entry,
                        self.config.path,
                        ATTACH_RETRY_S,
                        exc,
                    )
                self.attach_failed[key] = (str(exc), time.monotonic())
                left[key] = (bc.entry, f"cannot attach, tried again every {ATTACH_RETRY_S:.0f} s: {exc}")
                continue
            self.attach_failed.pop(key, None)
            log.info("%s: attached (mode %s, %s of %s)", bc.label, bc.mode, bc.entry, self.config.path)
            present.add(key)
            self.configured.attached(bc, ifindex)
            self.apply_limits(bc)
        self.configured.report_left_alone(left, present)

    def drop(self, bridge, netns, why):
        """A bridge gone from a namespace that stays, or made again under its name: xdpbr's
        programs come off what is left of its ports and its pins are removed."""
        label = BridgeId(bridge, netns).label
        log.warning("%s: %s; forgetting it and removing its pins", label, why)
        worker = self.workers.pop((bridge, netns), None)
        if worker:
            worker.close()
        if (bridge, netns) in self.brokers:
            self.brokers.pop((bridge, netns)).stop()
        self.configured.forget((bridge, netns))
        try:
            detach(bridge, netns)  # its ports that are still there lose xdpbr's programs
        except (XdpbrError, OSError) as exc:
            log.warning("%s: cannot detach (%s); removing its pins", label, exc)
            try:
                with writer_lock():
                    attachment.forget(bridge, netns)
            except (XdpbrError, OSError) as again:
                log.warning("%s: cannot remove its pins: %s", label, again)

    def apply_configured_limits(self):
        """fdb_max_learned of each bridge an entry names, and of the adopted ones a pattern matches."""
        for bc in self.config.bridges:
            if not bc.patterned:
                self.apply_limits(bc)
        for key in self.workers:
            bc = self.config.match(*key)
            if bc and bc.patterned:
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
        """SIGHUP: a new configuration replaces the old only if it loads without error. systemd
        hears RELOADING=1 before and READY=1 after; the record keeps the result."""
        self.reload_requested = False
        rec = self.record
        rec.reload_started_ns = time.monotonic_ns()
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={rec.reload_started_ns // 1000}")
        ok, message = self.apply_configuration()
        rec.reload_finished_ns = time.monotonic_ns()
        rec.reload_generation = rec.loop_generation
        rec.reload_result = RELOAD_OK if ok else RELOAD_FAILED
        if ok:
            rec.reloads_ok += 1
        else:
            rec.reloads_failed += 1
        rec.reload_message = " ".join(message.split()).encode()[:511]
        sd_notify(f"READY=1\nSTATUS={self.status_line()}")
        return ok

    def apply_configuration(self):
        """Load the configuration file again and apply it: (applied, one line saying so or why
        not). A file with an error keeps the running configuration."""
        try:
            # started without a file: the instance's default path, and none there is empty
            new = config.load(self.config.path) if self.config.path else config.load_default()
        except XdpbrError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False, str(exc)
        old = self.config
        if new.broker_group != self.config.broker_group:
            self.set_broker_group(new.broker_group)
        self.config = new
        self.attach_failed.clear()
        self.apply_configured_limits()
        self.configured.rematch(new)
        for key, worker in self.workers.items():
            bc, before = new.match(*key), old.match(*key)
            if bc and worker.healthy and before and before.ignore_ports != bc.ignore_ports:
                for port in set(before.ignore_ports) - set(bc.ignore_ports):
                    worker.session.set_requested_mode(port, "auto")
                for port in bc.ignore_ports:
                    worker.session.set_requested_mode(port, "bridge")
                worker.needs_reconcile = True
        if new.metrics != (self.metrics_spec or None):
            log.warning("metrics address changes take effect when the daemon restarts")
        message = f"reloaded {new.path or 'no configuration file'} ({len(new.bridges)} bridges)"
        log.info("%s", message)
        return True, message

    def stop_configured(self):
        """on_stop = detach: take xdpbr off the configured bridges (not held: a restart
        attaches them again)."""
        if self.config.on_stop != "detach":
            return
        for key in pins.attached_bridges():
            bc = self.config.match(*key)
            if bc:
                try:
                    detach(bc.name, bc.netns)
                    log.info("%s: detached (on_stop = detach)", bc.label)
                except XdpbrError as exc:
                    log.warning("%s: cannot detach: %s", bc.label, exc)

    def start_broker(self, bridge, netns):
        """The AF_XDP broker socket of an adopted bridge (/run/xdpbr/BRIDGE.sock)."""

        try:
            self.brokers[(bridge, netns)] = Broker(bridge, netns, group=self.config.broker_group)
        except (OSError, KeyError) as exc:
            log.warning("%s: no AF_XDP broker: %s", bridge, exc)

    def set_broker_group(self, group):
        """A reload's [broker] group: running brokers' sockets change group in place (a new
        socket would cut clients mid-request). The configuration was checked when loaded, but
        the group may have gone since."""

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
        self.record.scanned_ns = time.monotonic_ns()
        present = set(pins.attached_bridges())
        # after the pins: a bridge attached since is in the dump
        existing = self.configured.look(self.config, {n for _, n in self.workers})
        for key, why in self.configured.vanished(present, existing):
            self.drop(*key, why)
            present.discard(key)
        self.configured.sweep_markers(existing)
        self.attach_configured(present, existing)
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
            if (bridge, netns) not in self.configured.identity:
                try:
                    self.configured.remember(bridge, netns, worker.session.bridge_state().ifindex)
                except XdpbrError:
                    pass
            bc = self.config.match(bridge, netns)
            if bc and bc.patterned and (bridge, netns) not in self.configured.attached_by:
                self.apply_limits(bc)  # adopted: attached earlier, by hand or by a previous daemon
            if not self.once:  # a one-shot resync serves no VMM: it must not replace a daemon's socket
                self.start_broker(bridge, netns)
            self.guarded(worker, worker.resync)
        for netns in list(self.listeners):
            if not any(n == netns for _, n in self.workers):
                self.listeners.pop(netns).stop()
        if not self.once:
            self.configured.write_view(self.config.path, present)

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
        self.record.rules_checked_ns = time.monotonic_ns()
        for netns, listener in list(self.listeners.items()):
            workers = [w for (_, n), w in self.workers.items() if n == netns]
            if not workers or listener.failure:
                continue
            try:
                snapshot = listener.rules.read_if_changed()
                if snapshot is None:
                    continue
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
            action = ACTIONS.get(step.__name__, step.__name__.replace("_", " "))
            log.warning("%s: %s failed: %s", worker.label, action, exc)

    def run(self, once=False):
        self.once = once
        pins.ensure_bpffs()
        if not once:  # a one-shot resync must not take the running daemon's record
            self.open_record()
            self.configured.load_view()
        self.apply_configured_limits()
        self.record.loop_generation += 1  # the first scan is a turn of its own
        self.scan()
        self.turned()
        sd_notify(f"READY=1\nSTATUS={self.status_line()}")
        if once:
            self.release()
            return 0
        # periodic work per bridge: (seconds, BridgeWorker method)
        periodic = [
            (HEARTBEAT_S, BridgeWorker.heartbeat),
            (AGING_REFRESH_S, BridgeWorker.refresh_aging),
            (NETLINK_RECYCLE_S, BridgeWorker.recycle_netlink),
            (TCX_POLL_S, BridgeWorker.poll_tcx),
        ]
        due = [0.0] * len(periodic)
        next_scan = next_rules = 0.0
        next_status = time.monotonic() + STATUS_S
        while not self.stopping:
            self.record.loop_generation += 1
            # sleep until an event or the next periodic step, no longer (a signal's flag is
            # seen within MAX_SLEEP_S); a fixed 0.1 s tick cost ~0.1 % of a core doing nothing
            wait = min(next_rules, next_scan, *due) - time.monotonic()
            try:
                event = self.events.get(timeout=min(max(wait, 0.001), MAX_SLEEP_S))
            except queue.Empty:
                event = WAKE
            if self.reload_requested:  # SIGHUP's WAKE ended the wait: its result ends this turn
                self.reload()
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
            self.turned()
            if now >= next_status and os.environ.get("NOTIFY_SOCKET"):
                next_status = now + STATUS_S
                sd_notify(f"STATUS={self.status_line()}")
        sd_notify("STOPPING=1")
        self.release()
        self.stop_configured()
        self.close_record()
        return 0

    def open_record(self):
        """The instance's daemon record: its counters continue from the previous daemon's; pid
        and start are this process's. Without it the daemon runs, unobserved."""
        try:
            self.record_pin = pins.DaemonRecordPin.open(create=True)
        except (XdpbrError, OSError) as exc:
            log.warning("no daemon record (show, metrics and `daemon --reload` do not see it): %s", exc)
            return
        self.record = self.record_pin.read()
        rec = self.record
        rec.pid, rec.pid_start = os.getpid(), pins.process_start(os.getpid()) or 0
        rec.started_ns = time.monotonic_ns()
        rec.bridges = rec.bridges_failed = 0
        self.record_pin.write(rec)

    def turned(self):
        """The end of a loop turn: the record says what this turn left."""
        rec = self.record
        rec.bridges = len(self.workers)
        rec.bridges_failed = sum(1 for w in self.workers.values() if w.healthy is not True)
        rec.reconciled_ns = max([rec.reconciled_ns, *(w.reconciled_ns for w in self.workers.values())])
        self.write_record(rec)

    def write_record(self, rec, *, closing=False):
        """Write the record; one that cannot be written is given up (logged once)."""
        if not self.record_pin:
            return
        try:
            self.record_pin.write(rec)
        except XdpbrError as exc:
            log.warning("cannot write the daemon record: %s", exc)
            closing = True
        if closing:
            self.record_pin.close()
            self.record_pin = None

    def close_record(self):
        """A stopped daemon holds no bridge and has no pid; its counters stay for the next."""
        rec = self.record
        rec.pid = rec.pid_start = rec.bridges = rec.bridges_failed = 0
        self.write_record(rec, closing=True)

    def status_line(self):
        """systemd's STATUS=: one line, e.g. "3 bridges attached, 0 failed, rules checked 0.4 s ago"."""
        rec = self.record
        n = len(self.workers)
        text = f"{n} bridge{'' if n == 1 else 's'} attached, {rec.bridges_failed} failed"
        if rec.rules_checked_ns:
            text += f", rules checked {(time.monotonic_ns() - rec.rules_checked_ns) / 1e9:.1f} s ago"
        if self.configured.left_alone:
            n = len(self.configured.left_alone)
            text += f"; {n} configured bridge{'' if n == 1 else 's'} left alone (see `xdpbr show -j`)"
        if rec.reload_result == RELOAD_FAILED:
            text += "; the last reload failed, running the previous configuration"
        return text

    def release(self):
        """Close every broker socket, session and listener this daemon opened."""
        for broker in self.brokers.values():
            broker.stop()
        for worker in self.workers.values():
            worker.close()
        for listener in self.listeners.values():
            listener.stop()
        self.configured.close()
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


def request_reload(timeout=RELOAD_TIMEOUT_S):
    """`xdpbr daemon --reload` (systemd's ExecReload): SIGHUP to this instance's running daemon,
    then wait until its record shows a reload that began after the signal was sent; prints its
    one line. Returns 0, or raises XdpbrError (exit 1) when it failed and the daemon kept the
    running configuration, or no daemon runs, or no result came within `timeout`."""
    found = pins.read_daemon_record()
    pid = found[0].pid if found and found[1] else None
    main_pid = int(os.environ.get("MAINPID", "0") or 0)  # systemd sets it for ExecReload
    if main_pid and main_pid != pid:
        # the unit's daemon keeps no record: an older xdpbr, started before an upgrade
        try:
            os.kill(main_pid, signal.SIGHUP)
        except OSError as exc:
            raise XdpbrError(f"cannot signal the daemon (pid {main_pid})", errno=exc.errno) from None
        print(f"xdpbr daemon (pid {main_pid}) keeps no record: sent SIGHUP; its log has the result")
        return 0
    if pid is None:
        raise NotFound(
            "no xdpbr daemon of this instance is running", fix="start it (`systemctl start xdpbr`)"
        )
    sent_ns = time.monotonic_ns()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise XdpbrError(f"cannot signal the daemon (pid {pid})", errno=exc.errno) from None
    deadline = time.monotonic() + timeout
    while True:
        found = pins.read_daemon_record()
        rec = found and found[0]
        if rec and rec.reload_started_ns >= sent_ns and rec.reload_finished_ns >= rec.reload_started_ns:
            break
        if not found or not found[1] or rec.pid != pid:
            raise XdpbrError(f"the daemon (pid {pid}) stopped before it reloaded")
        if time.monotonic() > deadline:
            raise XdpbrError(f"the daemon (pid {pid}) did not report a reload within {timeout:.0f} s")
        time.sleep(0.02)  # bounded by the deadline above
    message = rec.reload_message.decode(errors="replace")
    if rec.reload_result != RELOAD_OK:
        raise XdpbrError(f"reload failed, keeping the running configuration: {message}")
    print(f"xdpbr daemon (pid {pid}): {message}")
    return 0


def main(once=False, metrics=None, config_path=None):
    cfg = config.load(config_path) if config_path else config.load_default()
    daemon = Daemon(cfg)
    daemon.metrics_spec = metrics or cfg.metrics
    if daemon.metrics_spec:
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
