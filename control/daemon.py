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
"""

import errno
import logging
import os
import queue
import signal
import socket
import threading
import time

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK

from control import config, fdb, netfilter
from control.attachment import Session, attach, detach, reconcile
from control.lock import writer_lock
from loader import bpfsys, bridge_limits, neigh, pins, tracepoints
from loader.errors import XdpbrError
from loader.layouts import CONTROL_DAEMON, U32, Control

log = logging.getLogger("xdpbr.daemon")

HEARTBEAT_S = 1.0
AGING_REFRESH_S = 1.0
NETFILTER_CHECK_S = 2.0
NETLINK_RECYCLE_S = 60.0  # Session.reopen_netlink: bounds what pyroute2 keeps per request
PIN_SCAN_S = 0.5
ATTACH_RETRY_S = 30.0  # a configured bridge that failed to attach is tried again this often
# a learn time older than this before the event is a leftover (learned while no daemon ran)
LEARN_TIME_MAX_AGE_NS = 10 * 10**9


class Listener(threading.Thread):
    """Reads RTNL link events (pyroute2) of one namespace into the daemon's queue, and starts
    a NeighListener for its FDB events."""

    def __init__(self, netns, events):
        super().__init__(daemon=True, name=f"netlink-{netns or 'default'}")
        self.netns, self.events = netns, events
        self.sock = None
        self.ready = threading.Event()
        self.alive = True
        self.neigh = NeighListener(netns, events)

    def run(self):
        # pyroute2's sync API runs an asyncio loop bound to the thread that made the socket,
        # so the socket is made here, in the thread that reads it.
        from pyroute2 import IPRoute

        kwargs = {"netns": self.netns, "flags": 0} if self.netns else {}
        try:
            self.sock = IPRoute(groups=RTMGRP_LINK, **kwargs)
            self.sock.bind()
            self.neigh.start()
            self.neigh.ready.wait(5)
        finally:
            self.ready.set()
        while self.alive:
            try:
                msgs = self.sock.get()
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.events.put((self.netns, None, 0))  # overrun: resync everything
                    continue
                if self.alive:
                    log.warning("netlink listener for %s stopped: %s", self.netns or "default namespace", exc)
                return
            self.events.put((self.netns, msgs, time.monotonic_ns()))

    def stop(self):
        self.alive = False
        self.neigh.stop()
        if self.sock:
            try:
                self.sock.close()
            except Exception:  # noqa: BLE001 - closing a socket the thread may be reading
                pass


class NeighListener(threading.Thread):
    """FDB events of one namespace on a raw netlink socket (loader.neigh: cheap to decode, so
    a flood of new MACs does not starve the daemon).

    The thread owns its socket and closes it when it ends. A netlink socket cannot be
    shut down (EOPNOTSUPP) and closing it under a blocked recv() does not wake the reader,
    so the read has a timeout and stop() is noticed within STOP_POLL_S."""

    STOP_POLL_S = 0.5

    def __init__(self, netns, events):
        super().__init__(daemon=True, name=f"neigh-{netns or 'default'}")
        self.netns, self.events = netns, events
        self.sock = None
        self.ready = threading.Event()
        self.alive = True

    def run(self):
        try:
            self.sock = neigh.subscribe(self.netns)
            self.sock.settimeout(self.STOP_POLL_S)
        finally:
            self.ready.set()
        try:
            self._read()
        finally:
            self.sock.close()

    def _read(self):
        while self.alive:
            try:
                msgs = neigh.receive(self.sock)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.events.put((self.netns, None, 0))  # overrun: resync everything
                    continue
                if self.alive:
                    log.warning("FDB listener for %s stopped: %s", self.netns or "default namespace", exc)
                return
            if msgs and self.alive:
                self.events.put((self.netns, msgs, time.monotonic_ns()))

    def stop(self):
        self.alive = False


def pin_identity(directory):
    """Inodes of a bridge's pin directory and pins: they change when pins are made anew."""
    try:
        return tuple(
            os.stat(os.path.join(directory, name)).st_ino
            for name in ("", "xdpbr_bridge", "xdpbr_fdb", *pins.PROG_PINS.values())
        )
    except OSError:
        return None


class BridgeWorker:
    """The daemon's hold on one attached bridge."""

    def __init__(self, bridge, netns):
        self.bridge, self.netns = bridge, netns
        self.session = None
        self._open()
        self.kernel_fdb = {}
        self.refreshed = {}
        self.netfilter_state = None
        self.healthy = False
        self.needs_reconcile = False
        self.slots = {}

    def _open(self):
        if self.session:
            self.session.close()
        self.session = Session(self.bridge, self.netns)
        self.identity = pin_identity(self.session.dir)
        self.session.open_pins()
        self.mirror = fdb.FdbMirror(self.session.maps)
        if getattr(self, "learn_times", None):
            self.learn_times.close()
        self.learn_times = tracepoints.LearnTimes()
        # counters continue where the previous daemon left them: Prometheus counters never drop
        self.counters = Control()
        bpfsys.map_lookup(self.session.maps["xdpbr_control"], U32(CONTROL_DAEMON), self.counters)

    @property
    def label(self):
        return f"{self.bridge}" + (f"@{self.netns}" if self.netns else "")

    def close(self):
        self.session.close()
        self.learn_times.close()

    def still_attached(self):
        """Checked under the writer lock before every change. A concurrent `xdpbr detach`
        removed the pins (reconciling would put programs back on the ports); an attach over
        the running one pinned new programs or maps (the old fds would undo the upgrade)."""
        identity = pin_identity(self.session.dir)
        if identity is None:
            self.healthy = False
            return False
        if identity != self.identity:
            log.info("%s: re-attached, adopting the new programs and maps", self.label)
            self._open()
            self.healthy = False
        return True

    def resync(self):
        """Full dump and diff of the FDB, then the ports; marks the bridge healthy."""
        try:
            with writer_lock():
                if not self.still_attached():
                    return
                s = self.session
                s.find_bridge()
                records = fdb.dump(s.netns, s.bridge.ifindex)
                self.kernel_fdb = {(r.mac, r.vid): r for r in records}
                self.netfilter_state = self._netfilter()
                reconcile(s, netfilter_state=self.netfilter_state)
                self.slots = s.port_slots()
                written, deleted = self.mirror.sync(records, self.slots, full=True)
                s.write_bridge_state(heartbeat=True)
        except XdpbrError as exc:
            if self.healthy or self.healthy is False:
                log.warning("%s: cannot resync: %s", self.label, exc)
            self.healthy = None
            self.counters.errors += 1
            return
        self.healthy = True
        self.needs_reconcile = False
        log.info(
            "%s: resynced (%d FDB entries, %d written, %d removed)",
            self.label,
            len(records),
            written,
            deleted,
        )

    def _netfilter(self):
        meta = self.session.meta()
        if meta.netfilter == 1:
            return False, "bypass"
        return netfilter.check(self.netns)

    def on_messages(self, msgs, received_ns):
        s = self.session
        if not self.healthy or s.bridge is None:
            return
        for msg in msgs:
            event = msg.event if isinstance(msg, neigh.NeighMessage) else msg.get("event")
            if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
                rec = fdb.record_from_neigh(msg, s.bridge.ifindex)
                if not rec:
                    continue
                key = (rec.mac, rec.vid)
                since = received_ns
                if event == "RTM_NEWNEIGH" and not (rec.static or rec.local):
                    learned = self.learn_times.pop(rec.mac, rec.vid)
                    if learned is not None and received_ns - LEARN_TIME_MAX_AGE_NS <= learned <= received_ns:
                        since = learned  # the lag starts where the bridge learned the MAC
                if event == "RTM_NEWNEIGH":
                    self.kernel_fdb[key] = rec
                    self.mirror.sync([rec], self.slots)
                else:
                    self.kernel_fdb.pop(key, None)
                    self.refreshed.pop(key, None)
                    self.mirror.sync([], self.slots, removed=[key])
                self.counters.fdb_events += 1
                self.counters.sync_lag_ns_sum += time.monotonic_ns() - since
            elif event in ("RTM_NEWLINK", "RTM_DELLINK"):
                index = msg.get("index")
                if index == s.bridge.ifindex or msg.get_attr("IFLA_MASTER") == s.bridge.ifindex:
                    self.needs_reconcile = True
                elif index in self._port_indexes():
                    self.needs_reconcile = True  # a port left the bridge or went away

    def _port_indexes(self):
        try:
            return set(self.session.ports())
        except XdpbrError:
            return set()

    def reconcile_if_needed(self):
        if not self.needs_reconcile or not self.healthy:
            return
        self.needs_reconcile = False
        try:
            with writer_lock():
                if not self.still_attached():
                    return
                if not self.healthy:  # re-attached meanwhile: a full resync, not a patch
                    self.needs_reconcile = True
                    return
                self.session.find_bridge()
                self.session.write_bridge_state(heartbeat=False)
                reconcile(self.session, netfilter_state=self.netfilter_state)
                slots = self.session.port_slots()
                if slots != self.slots:  # a port came or went: entries carry egress slots
                    self.slots = slots
                    self.mirror.sync(self.kernel_fdb.values(), slots)
        except (XdpbrError, NetlinkError, OSError) as exc:  # a port that vanished meanwhile, ...
            log.warning("%s: cannot apply port changes: %s", self.label, exc)
            self.healthy = False
            self.counters.errors += 1

    def heartbeat(self):
        if self.healthy:
            self.session.write_bridge_state(heartbeat=True)
        bpfsys.map_update(self.session.maps["xdpbr_control"], U32(CONTROL_DAEMON), self.counters)

    def recycle_netlink(self):
        self.session.reopen_netlink()

    def refresh_aging(self):
        """NTF_USE for entries the fast path used since their last refresh."""
        if not self.healthy:
            return
        for key, entry in self.mirror.entries().items():
            if not entry.last_seen or entry.last_seen <= self.refreshed.get(key, 0):
                continue
            rec = self.kernel_fdb.get(key)
            if not rec or rec.local or rec.static or rec.ifindex != entry.ifindex:
                continue  # gone or moved in the kernel: refreshing would resurrect or undo it
            try:
                fdb.refresh_kernel_entry(self.session.ipr, rec)
                self.refreshed[key] = entry.last_seen
            except Exception as exc:  # noqa: BLE001 - the next event or resync corrects it
                log.debug("%s: NTF_USE %s failed: %s", self.label, key, exc)
                self.counters.errors += 1

    def check_netfilter(self):
        if not self.healthy:
            return
        state = self._netfilter()
        if self.netfilter_state is None or state[0] != self.netfilter_state[0]:
            log.info("%s: netfilter %s", self.label, state[1])
            self.netfilter_state = state
            self.needs_reconcile = True


class Daemon:
    def __init__(self, cfg=None):
        self.config = cfg or config.Config()
        self.events = queue.Queue()
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
            new = config.load(self.config.path)
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
            if key not in present:
                log.info("%s: detached, no longer managed", self.workers[key].label)
                self.workers.pop(key).close()
                if key in self.brokers:
                    self.brokers.pop(key).stop()
            elif pin_identity(self.workers[key].session.dir) != self.workers[key].identity:
                self.workers[key].resync()  # detached and attached again, or upgraded
        for bridge, netns in present - set(self.workers):
            if netns and not os.path.exists(f"/run/netns/{netns}"):
                continue
            try:
                if netns not in self.listeners:
                    listener = Listener(netns, self.events)
                    listener.start()
                    listener.ready.wait(5)  # subscribed before the dump: no event falls between
                    self.listeners[netns] = listener
                worker = BridgeWorker(bridge, netns)
            except XdpbrError as exc:
                if self.unadoptable.get((bridge, netns)) != str(exc):  # say it once, not every scan
                    log.warning("%s: cannot adopt: %s", bridge, exc)
                    self.unadoptable[(bridge, netns)] = str(exc)
                continue
            self.unadoptable.pop((bridge, netns), None)
            self.workers[(bridge, netns)] = worker
            if not self.once:  # a one-shot resync serves no VMM: it must not replace a daemon's socket
                self.start_broker(bridge, netns)
            worker.resync()
        for netns in list(self.listeners):
            if not any(n == netns for _, n in self.workers):
                self.listeners.pop(netns).stop()

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
            (NETFILTER_CHECK_S, BridgeWorker.check_netfilter),
            (NETLINK_RECYCLE_S, BridgeWorker.recycle_netlink),
        ]
        due = [0.0] * len(periodic)
        next_scan = 0.0
        while not self.stopping:
            if self.reload_requested:
                self.reload()
            try:
                netns, msgs, received_ns = self.events.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                for (_, ns), worker in self.workers.items():
                    if ns == netns:
                        worker.resync() if msgs is None else worker.on_messages(msgs, received_ns)
            now = time.monotonic()
            for worker in list(self.workers.values()):
                worker.reconcile_if_needed()
            for i, (interval, method) in enumerate(periodic):
                if now >= due[i]:
                    due[i] = now + interval
                    for worker in self.workers.values():
                        method(worker)
            if now >= next_scan:
                next_scan = now + PIN_SCAN_S
                for worker in list(self.workers.values()):
                    if worker.healthy is not True:
                        worker.resync()  # retry a bridge that failed or was re-attached
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

    def reload(signum, frame):
        daemon.reload_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    log.info("started (pid %d)%s", os.getpid(), f", configuration {cfg.path}" if cfg.path else "")
    return daemon.run(once=once)
