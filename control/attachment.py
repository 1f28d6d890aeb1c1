"""Attach, reconcile and detach xdpbr on one bridge.

`reconcile()` is the single place that makes the host match the model: every bridge port gets
an entry in xdpbr_ports (with the mode it runs and why), the programs its mode needs, a DEVMAP
slot and its VLANs; ports that left are removed. attach, `port set`, and the daemon (hot-plug,
netfilter changes, adoption after a restart) all call it. Every host change registers its undo
first, so a failure leaves nothing half-attached.
"""

import logging
import os
import time

from control import fdb, netfilter
from control.model import PortPlan, lower_plan, plan_port
from control.ports import find_bridge, list_ports
from loader import attach as at
from loader import bpfsys, pins, tracepoints
from loader.errors import NotFound, Unsupported, XdpbrError
from loader.journal import Journal
from loader.layouts import (
    ATTACH_POINTS,
    BRIDGE_NETFILTER_BLOCK,
    CLOCK_HEARTBEAT,
    CLOCK_NOW,
    CONTROL_ATTACH,
    I32,
    LAYOUT_VERSION,
    MAX_PORTS,
    MODE_INDEX,
    MODE_REASON_INDEX,
    MODE_REASONS,
    NR_REASONS,
    OWN_CLSACT,
    PORT_FORWARDING,
    PORT_HAIRPIN,
    PORT_ISOLATED,
    PORT_PEER_REDIRECT,
    PORT_XDP_EGRESS,
    REQUESTED_MODES,
    U8,
    U32,
    U64,
    VLAN_UNTAGGED,
    XDP_MODE_REQUESTS,
    Bridge,
    Control,
    Counter,
    Ifname,
    Meta,
    Port,
    VlanKey,
    mac_bytes,
    map_specs,
    port_index_map,
    stats_index,
)
from loader.netns import entered
from loader.peer import VethPeer

log = logging.getLogger("xdpbr.attach")

GRACE_DEFAULT_S = 10.0
XDP_PROG_NAME = "xdpbr_xdp"


class Session:
    """Open handles for one accelerated bridge: netlink, pinned maps and program fds."""

    def __init__(self, bridge_name, netns=None):
        self.bridge_name, self.netns = bridge_name, netns
        self.dir = pins.pin_dir(bridge_name, netns)
        self._ipr = None
        self.bridge = None
        self.maps = None
        self.prog_fds = {}

    @property
    def ipr(self):
        """Netlink in the bridge's namespace, opened on first use (metrics need none)."""
        if self._ipr is None:
            self._ipr = at.open_netlink(self.netns)
        return self._ipr

    def reopen_netlink(self):
        """Close the netlink socket; the next use opens a fresh one. pyroute2 0.9.7 keeps a
        little memory for every request it answers (~1.6 KB per get_links, measured), which
        only closing its socket gives back: a long-running daemon recycles it."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def find_bridge(self):
        self.bridge = find_bridge(self.ipr, self.bridge_name, self.netns)
        return self.bridge

    def open_pins(self):
        self.maps = pins.PinnedMaps(self.dir).open()
        for attach_point, name in pins.PROG_PINS.items():
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                self.prog_fds[attach_point] = bpfsys.obj_get(path)
        return self

    def close(self):
        if self.maps:
            self.maps.close()
        for fd in self.prog_fds.values():
            os.close(fd)
        self.prog_fds.clear()
        self.reopen_netlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- map helpers -------------------------------------------------------------------
    def meta(self):
        meta = Meta()
        bpfsys.map_lookup(self.maps["xdpbr_meta"], U32(0), meta)
        return meta

    def bridge_state(self):
        state = Bridge()
        bpfsys.map_lookup(self.maps["xdpbr_bridge"], U32(0), state)
        return state

    def write_bridge_state(self, *, heartbeat=True, grace_s=None, netfilter_block=None):
        state = self.bridge_state()
        if grace_s is not None:
            state.hz = state.hz or measure_hz(self)
            state.grace_jiffies = int(grace_s * state.hz)
        if self.bridge:
            state.ifindex = self.bridge.ifindex
            state.mac[:] = mac_bytes(self.bridge.mac)
            state.vlan_filtering = int(self.bridge.vlan_filtering)
        if netfilter_block is not None:
            state.flags = (state.flags & ~BRIDGE_NETFILTER_BLOCK) | (
                BRIDGE_NETFILTER_BLOCK if netfilter_block else 0
            )
        bpfsys.map_update(self.maps["xdpbr_bridge"], U32(0), state)
        if heartbeat:
            self.tick(CLOCK_HEARTBEAT)

    def tick(self, element):
        """Have the kernel write its jiffies into xdpbr_clock[element] (xdpbr_tick)."""
        if "clock" not in self.prog_fds:
            raise NotFound(f"no clock program pinned in {self.dir} (is an attach under way?)")
        bpfsys.prog_test_run(self.prog_fds["clock"], bytes([element]) + bytes(13))

    def jiffies(self):
        """The kernel's jiffies now, through the clock program."""
        self.tick(CLOCK_NOW)
        value = U64()
        bpfsys.map_lookup(self.maps["xdpbr_clock"], U32(CLOCK_NOW), value)
        return value.value

    def heartbeat_age(self):
        """(seconds since the last heartbeat, still within the grace period)."""
        state = self.bridge_state()
        beat = U64()
        bpfsys.map_lookup(self.maps["xdpbr_clock"], U32(CLOCK_HEARTBEAT), beat)
        elapsed = self.jiffies() - beat.value
        return elapsed / max(state.hz, 1), elapsed <= state.grace_jiffies

    def ports(self):
        """{ifindex: Port} of the used slots of xdpbr_ports; each Port carries `.slot`."""
        fd = self.maps["xdpbr_ports"]
        keys, values, count = bpfsys.map_lookup_batch(fd, U32, Port, MAX_PORTS)
        out = {}
        for i in range(count):
            if values[i].ifindex:
                entry = Port.from_buffer_copy(values[i])
                entry.slot = keys[i]
                out[entry.ifindex] = entry
        return out

    def port_slots(self):
        return {ifindex: entry.slot for ifindex, entry in self.ports().items()}

    def requested_modes(self):
        """{ifname: mode} set with `xdpbr port set`."""
        out = {}
        fd = self.maps["xdpbr_port_modes"]
        for key in bpfsys.map_keys(fd, Ifname):
            value = U8()
            if bpfsys.map_lookup(fd, key, value) and value.value:
                out[key.name.decode()] = REQUESTED_MODES[value.value]
        return out

    def set_requested_mode(self, ifname, mode):
        key = Ifname(name=ifname.encode())
        if mode == "auto":
            bpfsys.map_delete(self.maps["xdpbr_port_modes"], key)
        else:
            bpfsys.map_update(self.maps["xdpbr_port_modes"], key, U8(REQUESTED_MODES.index(mode)))

    def prog_id(self, attach_point):
        fd = self.prog_fds.get(attach_point)
        return bpfsys.prog_info(fd).id if fd is not None else 0

    def prog_tag(self, attach_point):
        """The kernel's tag of the program (a hash of its instructions): the program version."""
        fd = self.prog_fds.get(attach_point)
        return bytes(bpfsys.prog_info(fd).tag).hex() if fd is not None else ""


# --- reconcile --------------------------------------------------------------------------


def _is_ours(prog_id):
    if not prog_id:
        return False
    try:
        fd = bpfsys.prog_fd_by_id(prog_id)
    except XdpbrError:
        return False
    try:
        return bpfsys.prog_info(fd).name.decode() == XDP_PROG_NAME
    finally:
        os.close(fd)


def _attach_xdp_program(s, port, plan, xdp_mode, journal):
    """Run the XDP program on the port. Returns (plan, attach mode) after any fallback."""
    current = at.xdp_state(s.ipr, port.ifindex)
    if current["prog_id"] and not _is_ours(current["prog_id"]):
        msg = f"{port.name} already runs another XDP program (id {current['prog_id']})"
        if plan.explicit:
            raise XdpbrError(msg, fix="xdpbr never replaces another tool's program; use --mode tc")
        return lower_plan(plan, "foreign_xdp"), "none"
    tries = ["native", "generic"] if xdp_mode == "any" else [xdp_mode]
    if not plan.explicit and xdp_mode == "any":
        tries = ["native"]  # auto: generic XDP is slower than TC and breaks GSO
    failure = None
    for mode in tries:
        if current["prog_id"] == s.prog_id("xdp") and current["mode"] == mode:
            return plan, mode  # already running: touching it would emit RTM_NEWLINK for nothing
        if current["prog_id"] and current["mode"] == mode:
            old = bpfsys.prog_fd_by_id(current["prog_id"])
            try:
                at.attach_xdp(s.ipr, port.ifindex, port.name, s.prog_fds["xdp"], mode, expected_fd=old)
            finally:
                os.close(old)
            return plan, mode
        if current["prog_id"]:
            at.detach_xdp(s.ipr, port.ifindex, current["mode"])
            current = {"mode": None, "prog_id": 0}
        try:
            at.attach_xdp(s.ipr, port.ifindex, port.name, s.prog_fds["xdp"], mode)
        except Unsupported as exc:
            failure = exc
            continue
        journal.push(at.detach_xdp, s.ipr, port.ifindex, mode)
        return plan, mode
    if plan.explicit:
        fix = "use --mode tc, or --xdp-mode generic" if tries == ["native"] else "use --mode tc"
        raise XdpbrError(f"{failure}", fix=fix)
    reason = "no_native_xdp" if failure and failure.errno == 95 else "xdp_refused"
    return lower_plan(plan, reason), "none"


def _detach_xdp_program(s, port):
    current = at.xdp_state(s.ipr, port.ifindex)
    if current["prog_id"] and _is_ours(current["prog_id"]):
        at.detach_xdp(s.ipr, port.ifindex, current["mode"])


def _attach_tc_program(s, port, owned, journal, replace):
    if not at.has_clsact(s.ipr, port.ifindex):
        at.add_clsact(s.ipr, port.ifindex)
        owned |= OWN_CLSACT
        journal.push(at.del_clsact, s.ipr, port.ifindex)
    present = at.has_xdpbr_filter(s.ipr, port.ifindex)
    if present and not replace:
        return owned
    at.attach_tc(s.ipr, port.ifindex, port.name, s.prog_fds["tc"], replace=present)
    if not present:
        journal.push(at.detach_tc, s.ipr, port.ifindex)
    return owned


def _detach_tc_program(s, ifindex, owned):
    if at.has_xdpbr_filter(s.ipr, ifindex):
        at.detach_tc(s.ipr, ifindex)
    if owned & OWN_CLSACT and not at.ingress_filters(s.ipr, ifindex):
        at.del_clsact(s.ipr, ifindex)
    return owned & ~OWN_CLSACT


def _free_slot(used):
    for slot in range(1, MAX_PORTS):
        if slot not in used:
            return slot
    return None


def _zero_stats(s, slot):
    ncpu = bpfsys.possible_cpus()
    zero = (Counter * ncpu)()
    for attach in range(len(ATTACH_POINTS)):
        for reason in range(NR_REASONS):
            bpfsys.map_update(s.maps["xdpbr_stats"], U32(stats_index(slot, attach, reason)), zero)


def _write_vlans(s, port, old_vids):
    fd = s.maps["xdpbr_vlans"]
    for vid, untagged in port.vlans.items():
        bpfsys.map_update(fd, VlanKey(ifindex=port.ifindex, vid=vid), U8(VLAN_UNTAGGED if untagged else 0))
    for vid in set(old_vids) - set(port.vlans):
        bpfsys.map_delete(fd, VlanKey(ifindex=port.ifindex, vid=vid))


def _vlans_of(s, ifindex):
    return [k.vid for k in bpfsys.map_keys(s.maps["xdpbr_vlans"], VlanKey) if k.ifindex == ifindex]


def _remove_port(s, ifindex, entry, still_exists):
    """A port left the bridge (or the bridge is detached): undo everything xdpbr did there."""
    _write_port_index(s, ifindex, 0)
    bpfsys.map_update(s.maps["xdpbr_ports"], U32(entry.slot), Port())
    with entered(s.netns):
        bpfsys.map_delete(s.maps["xdpbr_devmap"], U32(entry.slot))
    for vid in _vlans_of(s, ifindex):
        bpfsys.map_delete(s.maps["xdpbr_vlans"], VlanKey(ifindex=ifindex, vid=vid))
    if still_exists:
        port = _PortRef(ifindex)
        _detach_xdp_program(s, port)
        _detach_tc_program(s, ifindex, entry.owned)


def _write_port_index(s, ifindex, slot):
    """Where the fast path finds the ingress slot of ifindex; slot 0 removes it."""
    fd = s.maps[port_index_map(ifindex)]
    if port_index_map(ifindex) == "xdpbr_port_direct":
        bpfsys.map_update(fd, U32(ifindex), U32(slot))
    elif slot:
        bpfsys.map_update(fd, U32(ifindex), U32(slot))
    else:
        bpfsys.map_delete(fd, U32(ifindex))


def _new_entry(ifindex):
    entry = Port(ifindex=ifindex)
    entry.slot = 0
    return entry


KNOWN_HZ = (100, 250, 300, 1000)


def measure_hz(s, interval=0.1):
    """The kernel's HZ (the fast path counts jiffies): two clock readings `interval` apart,
    snapped to the nearest CONFIG_HZ choice."""
    j0, t0 = s.jiffies(), time.monotonic()
    time.sleep(interval)
    j1, t1 = s.jiffies(), time.monotonic()
    rate = (j1 - j0) / (t1 - t0)
    return min(KNOWN_HZ, key=lambda hz: abs(hz - rate))


class _PortRef:
    def __init__(self, ifindex, name=""):
        self.ifindex, self.name = ifindex, name


def reconcile(s, journal=None, *, netfilter_state=None, replace_programs=False):
    """Make every port of the bridge run what the model says.

    replace_programs: an attach over a running attachment swaps in the new programs (the XDP
    program is replaced whenever its id differs; TC filters only when asked, as their program
    id is not visible through pyroute2). Returns ([(PortInfo, PortPlan)], netfilter why).
    """
    journal = journal or Journal()
    meta = s.meta()
    default_mode = REQUESTED_MODES[meta.mode]
    xdp_mode = XDP_MODE_REQUESTS[meta.xdp_mode]
    if meta.netfilter == 1:
        blocked, nf_why = False, "bypass"
    else:
        blocked, nf_why = netfilter_state or netfilter.check(s.netns)
    s.write_bridge_state(heartbeat=False, netfilter_block=blocked)

    requested = s.requested_modes()
    current = s.ports()
    kernel_ports = list_ports(s.ipr, s.bridge)
    kernel_index = {p.ifindex for p in kernel_ports}
    for ifindex, entry in current.items():
        if ifindex not in kernel_index:
            exists = bool(s.ipr.link_lookup(index=ifindex)) if ifindex else False
            _remove_port(s, ifindex, entry, exists)

    used = {e.slot for i, e in current.items() if i in kernel_index}
    results = []
    for port in kernel_ports:
        entry = current.get(port.ifindex) or _new_entry(port.ifindex)
        plan = plan_port(port, requested.get(port.name, default_mode), netfilter_blocked=blocked)
        if not entry.slot:
            slot = _free_slot(used)
            if slot is None:
                plan = PortPlan("bridge", "no_slot", False)
            else:
                entry.slot = slot
                used.add(slot)
                _zero_stats(s, slot)
        xdp_attach = "none"
        if plan.wants_xdp:
            plan, xdp_attach = _attach_xdp_program(s, port, plan, xdp_mode, journal)
        if not plan.wants_xdp:
            _detach_xdp_program(s, port)
        owned = entry.owned
        if plan.wants_tc:
            owned = _attach_tc_program(s, port, owned, journal, replace_programs)
        else:
            owned = _detach_tc_program(s, port.ifindex, owned)
        entry.owned = owned
        entry.mode = MODE_INDEX[plan.mode]
        entry.mode_reason = MODE_REASON_INDEX[plan.reason]
        entry.xdp_attach = ("none", "native", "generic").index(xdp_attach)
        results.append((port, plan, entry))

    any_xdp = any(plan.wants_xdp for _, plan, _ in results)
    for port, plan, entry in results:
        egress_ok = _xdp_egress_ready(s, port, plan, entry, any_xdp, journal)
        entry.mtu = port.mtu
        entry.pvid = port.pvid
        entry.flags = (
            (PORT_FORWARDING if port.forwarding else 0)
            | (PORT_ISOLATED if port.isolated else 0)
            | (PORT_HAIRPIN if port.hairpin else 0)
            | (PORT_XDP_EGRESS if egress_ok else 0)
            | (PORT_PEER_REDIRECT if _peer_redirect_ok(s, port) else 0)
        )
        _write_vlans(s, port, _vlans_of(s, port.ifindex))
        if entry.slot:
            with entered(s.netns):  # DEVMAP ifindexes resolve in the writer's namespace
                bpfsys.map_update(s.maps["xdpbr_devmap"], U32(entry.slot), I32(port.ifindex))
            # the entry first, then the index that makes the fast path see it
            bpfsys.map_update(s.maps["xdpbr_ports"], U32(entry.slot), entry)
            _write_port_index(s, port.ifindex, entry.slot)
    return [(port, plan) for port, plan, _ in results], nf_why


def _peer_redirect_ok(s, port):
    """bpf_redirect_peer needs a veth whose peer is in another namespace; it skips the port's
    egress qdisc and filters, so only where there are none (veth's default is noqueue)."""
    return port.kind == "veth" and port.peer_netnsid is not None and at.egress_is_plain(s.ipr, port.ifindex)


def _xdp_egress_ready(s, port, plan, entry, any_xdp, journal):
    """May XDP redirects go to this port? Switches a veth peer's GRO on when that is needed."""
    if plan.mode == "bridge":
        return False
    if port.kind == "tun":
        return True  # tun_xdp_xmit queues to the reader
    if port.kind == "veth":
        if not any_xdp:
            return False  # nothing redirects with XDP: leave the container's offloads alone
        if entry.flags & PORT_XDP_EGRESS:
            return True  # settled on an earlier pass: spare the namespace search
        peer = VethPeer.find(s.ipr, port, s.netns)
        if not peer:
            return False
        ok, switched = peer.ensure_napi()
        if switched:
            entry.peer_gro_set = 1
            journal.push(peer.restore)
            log.info(
                "switched GRO on for %s (veth peer of %s) so it can take XDP redirects",
                peer.ifname,
                port.name,
            )
        return ok
    return entry.xdp_attach == 1  # physical drivers transmit XDP frames when they run XDP


# --- attach / detach --------------------------------------------------------------------


def attach(
    bridge,
    netns=None,
    *,
    mode="auto",
    xdp_mode="any",
    netfilter_choice="respect",
    grace_s=GRACE_DEFAULT_S,
    port_modes=None,
):
    """Accelerate `bridge`. Over an existing attachment, programs are replaced atomically.
    `port_modes` ({ifname: mode}, as `xdpbr port set`) are in place before any program is."""
    from loader.compile import compile_fastpath
    from loader.lock import writer_lock

    pins.ensure_bpffs()
    journal = Journal()
    started = time.monotonic_ns()
    with writer_lock(), Session(bridge, netns) as s:
        s.find_bridge()
        fresh = not os.path.isdir(s.dir)
        stale, drop_stale = [], None
        if not fresh:
            # An upgrade: maps whose layout changed are rebuilt from the kernel (FDB, ports,
            # bridge state); those unchanged are kept, with their counters.
            stale = pins.stale_maps(s.dir)
            previous = None
            if "xdpbr_meta" not in stale:
                with pins.PinnedMaps(s.dir, {"xdpbr_meta": map_specs()["xdpbr_meta"]}) as old:
                    previous = Meta()
                    bpfsys.map_lookup(old["xdpbr_meta"], U32(0), previous)
        try:
            if fresh:
                journal.push(pins.remove_dir, s.dir)
            elif previous is not None:  # a failed re-attach keeps the options the running attachment had
                journal.push(lambda: s.maps and bpfsys.map_update(s.maps["xdpbr_meta"], U32(0), previous))
            if stale:
                log.warning(
                    "%s: rebuilding maps of another layout from the kernel: %s", bridge, ", ".join(stale)
                )
                restore, drop_stale = pins.set_aside(s.dir, stale)
                journal.push(restore)
            compiled = compile_fastpath(s.dir)
            try:
                s.maps = pins.PinnedMaps(s.dir).open()
                for point, prog in (("xdp", compiled.xdp), ("tc", compiled.tc), ("clock", compiled.clock)):
                    s.prog_fds[point] = os.dup(prog.fd)
                meta = Meta(
                    layout_version=LAYOUT_VERSION,
                    mode=REQUESTED_MODES.index(mode),
                    xdp_mode=XDP_MODE_REQUESTS.index(xdp_mode),
                    netfilter=0 if netfilter_choice == "respect" else 1,
                    netns=(netns or "").encode(),
                )
                bpfsys.map_update(s.maps["xdpbr_meta"], U32(0), meta)
                for ifname, port_mode in (port_modes or {}).items():
                    s.set_requested_mode(ifname, port_mode)
                s.write_bridge_state(heartbeat=True, grace_s=grace_s)
                results, _ = reconcile(s, journal, replace_programs=True)
                mirror = fdb.FdbMirror(s.maps)
                mirror.sync(fdb.dump(s.netns, s.bridge.ifindex), s.port_slots(), full=True)
                _repin_programs(s)
                record = Control(
                    compile_ns=int(compiled.compile_seconds * 1e9), attach_ns=time.monotonic_ns() - started
                )
                bpfsys.map_update(s.maps["xdpbr_control"], U32(CONTROL_ATTACH), record)
            finally:
                compiled.close()
            if drop_stale:
                drop_stale()
            _install_host_tracepoints()
        except BaseException:
            journal.rollback()
            raise
        return results


def _install_host_tracepoints():
    """Host-wide tracepoint programs for xdpbr_redirect_errors_total and the FDB sync lag; a
    kernel without those tracepoints still gets its fast path, only the metrics lack them."""
    try:
        tracepoints.install()
    except XdpbrError as exc:
        log.warning("redirect errors and FDB learn times will not be measured: %s", exc)


def _repin_programs(s):
    for point, name in pins.PROG_PINS.items():
        path = os.path.join(s.dir, name)
        if os.path.exists(path):
            os.unlink(path)
        bpfsys.obj_pin(s.prog_fds[point], path)


def detach(bridge, netns=None):
    """Remove everything xdpbr put on the bridge's ports and its pins."""
    from loader.lock import writer_lock

    with writer_lock(), Session(bridge, netns) as s:
        if not os.path.isdir(s.dir):
            raise NotFound(
                f"bridge {bridge} is not attached" + (f' in network namespace "{netns}"' if netns else ""),
                fix="see `xdpbr show`",
            )
        s.open_pins()
        for ifindex, entry in s.ports().items():
            exists = bool(s.ipr.link_lookup(index=ifindex))
            if entry.peer_gro_set and exists:
                try:
                    s.find_bridge()
                    port = next((p for p in list_ports(s.ipr, s.bridge) if p.ifindex == ifindex), None)
                    peer = VethPeer.find(s.ipr, port, netns) if port else None
                    if peer:
                        peer.restore()
                except NotFound:
                    pass
            _remove_port(s, ifindex, entry, exists)
        s.maps.close()
        s.maps = None
        pins.remove_dir(s.dir)
        if not pins.attached_bridges():
            tracepoints.remove()


def mode_reason_text(index):
    return MODE_REASONS[index] if index < len(MODE_REASONS) else str(index)
