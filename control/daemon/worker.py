"""The daemon's hold on one attached bridge: its FDB mirror follows the kernel's FDB event by
event (with full resyncs after an overrun or a restart), its ports follow link events, and it
heartbeats, refreshes kernel aging for stations only the fast path sees, and re-checks
netfilter. control/daemon/service.py runs one BridgeWorker per adopted bridge.
"""

import logging
import os
import time

from ...loader import pins, tcx, tracepoints
from ...loader.bridge_id import BridgeId
from ...loader.errors import XdpbrError
from ...loader.events import TC_EVENTS
from ...loader.layouts import CLOCK_HEARTBEAT, CONTROL_DAEMON
from ...loader.lock import writer_lock
from ..datapath import fdb
from ..datapath.attachment import PortCache, reconcile
from ..datapath.session import Session
from ..netfilter import snapshot as nfsnapshot

log = logging.getLogger("xdpbr.daemon")

# a learn time older than this before the event is a leftover (learned while no daemon ran)
LEARN_TIME_MAX_AGE_NS = 10 * 10**9


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
        self.netfilter_state = None  # the namespace's netfilter Snapshot, set by the daemon
        self.healthy = False
        self.needs_reconcile = False
        self.slots = {}
        self.reconciled_ns = 0  # CLOCK_MONOTONIC start of the last successful resync or reconcile
        self.tcx_programs = None  # {ifindex: (ingress ids, egress ids)} at the last TCX poll
        self.cache = PortCache()  # each port as the last reconcile read it
        self.changed_ports = set()  # ifindexes events named since the last reconcile

    def _open(self):
        if self.session:
            self.session.close()
        self.session = Session(self.bridge, self.netns)
        self.identity = pin_identity(self.session.dir)
        self.session.open_pins()
        self.mirror = self.session.fdb_mirror()
        self.cache = PortCache()  # pins made anew (a re-attach): the next reconcile reads everything
        if getattr(self, "learn_times", None):
            self.learn_times.close()
        self.learn_times = tracepoints.LearnTimes()
        # counters continue where the previous daemon left them: Prometheus counters never drop
        self.counters = self.session.control(CONTROL_DAEMON)

    @property
    def label(self):
        return BridgeId(self.bridge, self.netns).label

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
        started = time.monotonic_ns()
        try:
            with writer_lock():
                if not self.still_attached():
                    return
                s = self.session
                s.find_bridge()
                records = fdb.dump(s.netns, s.bridge.ifindex)
                self.kernel_fdb = {(r.mac, r.vid): r for r in records}
                self.netfilter_state = self.netfilter_state or nfsnapshot.read(self.netns)
                reconcile(s, netfilter_state=self.netfilter_state, cache=self.cache)
                self.slots = s.port_slots()
                written, deleted = self.mirror.sync(records, self.slots, full=True)
                s.tick(CLOCK_HEARTBEAT)  # reconcile wrote the bridge's state
        except Exception as exc:  # noqa: BLE001 - netlink or bpf: never heartbeat over a half-synced mirror
            if self.healthy or self.healthy is False:
                log.warning("%s: cannot resync: %s", self.label, exc)
            self.healthy = None
            self.counters.errors += 1
            return
        self.healthy = True
        self.needs_reconcile = False
        self.reconciled_ns = started
        self.counters.resyncs += 1
        log.info(
            "%s: resynced (%d FDB entries, %d written, %d removed)",
            self.label,
            len(records),
            written,
            deleted,
        )

    def on_messages(self, msgs, received_ns):
        s = self.session
        if not self.healthy or s.bridge is None:
            return
        for msg in msgs:
            event = msg.event
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
                index = msg.index
                if index == s.bridge.ifindex:
                    self.needs_reconcile = True  # the bridge itself: every port
                elif msg.master == s.bridge.ifindex or index in self._port_indexes():
                    self.changed_ports.add(index)  # a port joined, changed, left or went away
            elif event in TC_EVENTS.values() and msg.index in self._port_indexes():
                self.changed_ports.add(msg.index)  # a qdisc or filter on a port: its policy may change

    def _port_indexes(self):
        if self.cache.valid:
            return self.cache.ports.keys()
        try:
            return set(self.session.ports())
        except XdpbrError:
            return set()

    def reconcile_if_needed(self):
        """A full reconcile when the bridge, the rules or the configuration changed; otherwise
        only the ports events named (PortCache): a port that joins a bridge of hundreds is
        accelerated without a netlink query about any other port."""
        if not (self.needs_reconcile or self.changed_ports) or not self.healthy:
            return
        changed = None if self.needs_reconcile else self.changed_ports
        self.needs_reconcile, self.changed_ports = False, set()
        started = time.monotonic_ns()
        try:
            with writer_lock():
                if not self.still_attached():
                    return
                if not self.healthy:  # re-attached meanwhile: a full resync, not a patch
                    self.needs_reconcile = True
                    return
                if changed is None:
                    self.session.find_bridge()  # reconcile writes the bridge's state, once
                reconcile(
                    self.session, netfilter_state=self.netfilter_state, cache=self.cache, changed=changed
                )
                slots = self.session.port_slots()
                if slots != self.slots:  # a port came or went: entries carry egress slots
                    self.slots = slots
                    self.mirror.sync(self.kernel_fdb.values(), slots)
            self.reconciled_ns = started
        except Exception as exc:  # noqa: BLE001 - a port that vanished meanwhile (netlink, bpf), ...
            log.warning("%s: cannot apply port changes: %s", self.label, exc)
            self.healthy = False
            self.counters.errors += 1

    def heartbeat(self):
        if self.healthy:
            self.session.write_bridge_state(heartbeat=True)
        self.session.write_control(CONTROL_DAEMON, self.counters)

    def poll_tcx(self):
        """TCX programs come and go without a netlink event: compare what runs on each port
        (BPF_PROG_QUERY, a syscall per port and direction) with the last poll; a change is a
        reconcile, which reads the ports' tc policy anew."""
        if not self.healthy:
            return
        seen = tcx.programs(self.netns, self._port_indexes())
        if self.tcx_programs is not None:
            self.changed_ports |= {i for i, ids in seen.items() if ids != self.tcx_programs.get(i)}
        self.tcx_programs = seen

    def recycle_netlink(self):
        self.session.rtnl.recycle()

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
                self.session.rtnl.fdb_touch(rec.ifindex, rec.mac, rec.vid)
                self.refreshed[key] = entry.last_seen
            except Exception as exc:  # noqa: BLE001 - the next event or resync corrects it
                log.debug("%s: NTF_USE %s failed: %s", self.label, key, exc)
                self.counters.errors += 1

    def rules_changed(self, snapshot):
        """The namespace's rules changed (the daemon read them again): decide the ports anew."""
        self.netfilter_state = snapshot
        self.needs_reconcile = True
