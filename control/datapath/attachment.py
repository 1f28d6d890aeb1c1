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
from dataclasses import dataclass, field

from ...loader import bpfsys, pins, tracepoints
from ...loader.compile import compile_fastpath
from ...loader.errors import NotFound, XdpbrError
from ...loader.journal import Journal
from ...loader.layouts import (
    CLOCK_HEARTBEAT,
    CONTROL_ATTACH,
    LAYOUT_VERSION,
    MODE_INDEX,
    MODE_REASON_INDEX,
    MODE_REASONS,
    OWN_CLSACT,
    OWN_INGRESS,
    PORT_FORWARDING,
    PORT_HAIRPIN,
    PORT_ISOLATED,
    PORT_PEER_REDIRECT,
    PORT_TC_INGRESS,
    PORT_XDP_EGRESS,
    REQUESTED_MODES,
    U32,
    XDP_ATTACH,
    XDP_MODE_REQUESTS,
    Control,
    Meta,
    Port,
    map_specs,
)
from ...loader.lock import writer_lock
from ..model import PortPlan, plan_port
from ..netfilter import snapshot as nfsnapshot
from ..netfilter import store as nfstore
from . import fdb, port_programs
from . import tc_store as tcstore
from .session import Session

log = logging.getLogger("xdpbr.attach")

GRACE_DEFAULT_S = 10.0


# --- reconcile --------------------------------------------------------------------------


def _free_slot(used, max_ports):
    for slot in range(1, max_ports):
        if slot not in used:
            return slot
    return None


def _remove_port(s, ifindex, entry, still_exists):
    """A port left the bridge (or the bridge is detached): undo everything xdpbr did there."""
    s.write_port_index(ifindex, 0)
    s.write_port(entry.slot, Port())
    s.write_egress(entry.slot, None)
    s.write_vlans(ifindex, {})
    if still_exists:
        port_programs.detach_xdp(s, ifindex)
        port_programs.detach_tc(s, ifindex, entry.owned)


def _new_entry(ifindex):
    entry = Port(ifindex=ifindex)
    entry.slot = 0
    return entry


@dataclass
class PortCache:
    """What a full reconcile read of each port (its link and its tc policy) and whether any
    port ran XDP: a daemon keeps it so that a link or tc event about one port is applied to that
    port alone, without a netlink query per other port."""

    ports: dict = field(default_factory=dict)  # ifindex -> PortInfo
    policies: dict = field(default_factory=dict)  # ifindex -> (egress, ingress)
    any_xdp: bool = False
    valid: bool = False


def reconcile(s, journal=None, *, netfilter_state=None, replace_programs=False, cache=None, changed=None):
    """Make every port of the bridge run what the model says.

    replace_programs: an attach over a running attachment swaps in the new programs (the XDP
    program is replaced whenever its id differs; TC filters only when asked, as their program
    id is not visible through pyroute2). netfilter_state: the namespace's netfilter Snapshot
    if the caller has it (the daemon), else read now. cache (a PortCache) and changed (a set of
    ifindexes): with a valid cache, only the links in `changed` are read again, and programs are
    put on or taken off only where a port's plan changed; without, everything is read and the
    cache filled. Returns ([(PortInfo, PortPlan)], the netfilter Decision, None under
    `--netfilter bypass`).
    """
    journal = journal or Journal()
    meta = s.meta()
    default_mode = REQUESTED_MODES[meta.mode]
    xdp_mode = XDP_MODE_REQUESTS[meta.xdp_mode]
    incremental = cache is not None and cache.valid and changed is not None
    current = s.ports()
    if incremental:
        for ifindex in changed:
            port = s.rtnl.port(s.bridge, ifindex)
            if port is None:
                cache.ports.pop(ifindex, None)
                cache.policies.pop(ifindex, None)
            else:
                cache.ports[ifindex] = port
        fresh = [i for i in changed if i in cache.ports]
        if fresh:
            cache.policies.update(s.rtnl.tc_policies({i: _own_qdisc(current.get(i)) for i in fresh}))
        kernel_ports = sorted(cache.ports.values(), key=lambda p: p.ifindex)
    else:
        kernel_ports = s.rtnl.ports(s.bridge)
    # decided on the ports there are now: a port that joined since the rules were read is
    # decided like the others (a rule naming it, or a wildcard, holds it)
    decision = (
        None
        if meta.netfilter == 1
        else nfsnapshot.decide_for(s, [p.name for p in kernel_ports], netfilter_state)
    )
    s.write_bridge_state(heartbeat=False, netfilter_block=bool(decision and decision.bridge_hold))
    nfstore.save(s.bridge_name, s.netns, decision)

    requested = s.requested_modes()
    kernel_index = {p.ifindex for p in kernel_ports}
    if incremental:
        policies = cache.policies
    else:
        policies = s.rtnl.tc_policies({p.ifindex: _own_qdisc(current.get(p.ifindex)) for p in kernel_ports})
    tcstore.save(s.bridge_name, s.netns, {p.name: policies[p.ifindex] for p in kernel_ports})

    def held(port):
        return decision is not None and (decision.bridge_hold or decision.ports.get(port.name)) is not None

    # Holds first: a port that a rule or a tc policy now holds stops being forwarded to and from
    # before any program on another port changes (the rest below may take a while).
    for port in kernel_ports:
        entry = current.get(port.ifindex)
        if entry and entry.slot:
            tightened = _tightened(entry, held(port), *policies[port.ifindex])
            if tightened is not None:
                s.write_port(entry.slot, tightened)
    for ifindex, entry in current.items():
        if ifindex not in kernel_index:
            exists = s.rtnl.link_exists(index=ifindex)
            _remove_port(s, ifindex, entry, exists)

    used = {e.slot for i, e in current.items() if i in kernel_index}
    plans = {
        p.ifindex: plan_port(p, requested.get(p.name, default_mode), netfilter_blocked=held(p))
        for p in kernel_ports
    }
    any_xdp = any(plan.wants_xdp for plan in plans.values())
    if incremental and any_xdp != cache.any_xdp:
        incremental = False  # the first or last XDP port: every veth's egress readiness changes
    if incremental:  # the ports an event named, and those whose plan no longer is what runs
        touched = [
            p
            for p in kernel_ports
            if p.ifindex in changed
            or p.ifindex not in current
            or current[p.ifindex].mode != MODE_INDEX[plans[p.ifindex].mode]
        ]
    else:
        touched = kernel_ports
    port_programs.prepare_tcx(s, [p for p in touched if plans[p.ifindex].wants_tc], journal)
    results = []
    for port in touched:
        entry = current.get(port.ifindex) or _new_entry(port.ifindex)
        plan = plans[port.ifindex]
        if not entry.slot:
            slot = _free_slot(used, s.max_ports)
            if slot is None:
                plan = PortPlan("bridge", "no_slot", False)
            else:
                entry.slot = slot
                used.add(slot)
                s.zero_stats(slot)
        xdp_attach = "none"
        if plan.wants_xdp:
            plan, xdp_attach = port_programs.attach_xdp(s, port, plan, xdp_mode, journal)
        if not plan.wants_xdp:
            port_programs.detach_xdp(s, port.ifindex, port)
        owned = entry.owned
        if plan.wants_tc:
            owned = port_programs.attach_tc(s, port, owned, journal, replace_programs)
        else:
            owned = port_programs.detach_tc(s, port.ifindex, owned)
        entry.owned = owned
        entry.mode = MODE_INDEX[plan.mode]
        entry.mode_reason = MODE_REASON_INDEX[plan.reason]
        entry.xdp_attach = XDP_ATTACH.index(xdp_attach)
        results.append((port, plan, entry))

    for port, plan, entry in results:
        egress_policy, ingress_policy = policies[port.ifindex]
        # a shaped egress must see every frame towards the port: no XDP redirect and no
        # bpf_redirect_peer into it (TC's bpf_redirect to its egress queues through the qdisc)
        egress_ok = egress_policy is None and _xdp_egress_ready(s, port, plan, entry, any_xdp, journal)
        entry.mtu = port.mtu
        entry.pvid = port.pvid
        entry.flags = (
            (PORT_FORWARDING if port.forwarding else 0)
            | (PORT_ISOLATED if port.isolated else 0)
            | (PORT_HAIRPIN if port.hairpin else 0)
            | (PORT_XDP_EGRESS if egress_ok else 0)
            | (PORT_PEER_REDIRECT if egress_policy is None and _peer_redirect_ok(port) else 0)
            | (PORT_TC_INGRESS if ingress_policy is not None else 0)
        )
        s.write_vlans(port.ifindex, port.vlans)
        if entry.slot:
            s.write_egress(entry.slot, port.ifindex)
            # the entry first, then the index that makes the fast path see it
            s.write_port(entry.slot, entry)
            s.write_port_index(port.ifindex, entry.slot)
    if cache is not None:
        cache.ports = {p.ifindex: p for p in kernel_ports}
        cache.policies = {p.ifindex: policies[p.ifindex] for p in kernel_ports}
        cache.any_xdp, cache.valid = any_xdp, True
    return [(port, plan) for port, plan, _ in results], decision


def _peer_redirect_ok(port):
    """bpf_redirect_peer needs a veth whose peer is in another namespace; it skips the port's
    egress qdisc and filters, so the caller allows it only where the egress is plain."""
    return port.kind == "veth" and port.peer_netnsid is not None


def _own_qdisc(entry):
    """The ingress-capable qdisc xdpbr created on a port (its entry's `owned`), else None."""
    owned = entry.owned if entry else 0
    return "clsact" if owned & OWN_CLSACT else "ingress" if owned & OWN_INGRESS else None


def _tightened(entry, held, egress_policy, ingress_policy):
    """A copy of a running port entry with what a new hold or policy forbids taken away at once
    (mode bridge; no redirects into a shaped egress; nothing from a policed ingress), or None
    when it forbids nothing the entry allows."""
    mode = MODE_INDEX["bridge"] if held else entry.mode
    flags = entry.flags
    if egress_policy is not None:
        flags &= ~(PORT_XDP_EGRESS | PORT_PEER_REDIRECT)
    if ingress_policy is not None:
        flags |= PORT_TC_INGRESS
    if (mode, flags) == (entry.mode, entry.flags):
        return None
    tightened = Port.from_buffer_copy(entry)
    tightened.mode, tightened.flags = mode, flags
    return tightened


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
        peer = s.rtnl.veth_peer(port)
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
    netfilter_counters="ignore",
    grace_s=GRACE_DEFAULT_S,
    port_modes=None,
    max_ports=None,
    fdb_size=None,
):
    """Accelerate `bridge`. Over an existing attachment, programs are replaced atomically.
    `port_modes` ({ifname: mode}, as `xdpbr port set`) are in place before any program is.
    `max_ports` and `fdb_size` size its maps (-DXDPBR_MAX_PORTS, -DXDPBR_FDB_SIZE); left out,
    an attachment keeps the sizes it has (a new one gets the defaults), and a change of size
    rebuilds those maps from the kernel like any change of layout."""

    pins.ensure_bpffs()
    journal = Journal()
    started = time.monotonic_ns()
    with writer_lock(), Session(bridge, netns) as s:
        s.find_bridge()
        fresh = not os.path.isdir(s.dir)
        pinned_ports, pinned_fdb = pins.sizes(s.dir)
        max_ports, fdb_size = max_ports or pinned_ports, fdb_size or pinned_fdb
        specs = map_specs(max_ports, fdb_size)
        stale, drop_stale = [], None
        if not fresh:
            # An upgrade: maps whose layout changed are rebuilt from the kernel (FDB, ports,
            # bridge state); those unchanged are kept, with their counters.
            stale = pins.stale_maps(s.dir, specs)
            previous = None
            if "xdpbr_meta" not in stale:
                with pins.PinnedMaps(s.dir, {"xdpbr_meta": map_specs()["xdpbr_meta"]}) as old:
                    previous = Meta()
                    bpfsys.map_lookup(old["xdpbr_meta"], U32(0), previous)
        try:
            if fresh:
                journal.push(pins.remove_dir, s.dir)
            elif previous is not None:  # a failed re-attach keeps the options the running attachment had
                journal.push(lambda: s.maps and s.write_meta(previous))
            if stale:
                log.warning(
                    "%s: rebuilding maps of another layout from the kernel: %s", bridge, ", ".join(stale)
                )
                restore, drop_stale = pins.set_aside(s.dir, stale)
                journal.push(restore)
            compiled = compile_fastpath(s.dir, max_ports=max_ports, fdb_size=fdb_size)
            try:
                s.maps = pins.PinnedMaps(s.dir, specs).open()
                for point, prog in (("xdp", compiled.xdp), ("tc", compiled.tc), ("clock", compiled.clock)):
                    s.prog_fds[point] = os.dup(prog.fd)
                meta = Meta(
                    layout_version=LAYOUT_VERSION,
                    mode=REQUESTED_MODES.index(mode),
                    xdp_mode=XDP_MODE_REQUESTS.index(xdp_mode),
                    netfilter=0 if netfilter_choice == "respect" else 1,
                    netfilter_counters=1 if netfilter_counters == "hold" else 0,
                    netns=(netns or "").encode(),
                )
                s.write_meta(meta)
                for ifname, port_mode in (port_modes or {}).items():
                    s.set_requested_mode(ifname, port_mode)
                s.write_bridge_state(heartbeat=False, grace_s=grace_s)
                results, _ = reconcile(s, journal, replace_programs=True)
                s.fdb_mirror().sync(fdb.dump(s.netns, s.bridge.ifindex), s.port_slots(), full=True)
                s.tick(CLOCK_HEARTBEAT)  # the fast path runs once every decision is in the maps
                _repin_programs(s)
                record = Control(
                    compile_ns=int(compiled.compile_seconds * 1e9), attach_ns=time.monotonic_ns() - started
                )
                s.write_control(CONTROL_ATTACH, record)
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


def forget(bridge, netns):
    """What is left of a bridge whose namespace was deleted (its devices took the programs
    with them): its pins and its saved netfilter decision."""
    pins.remove_dir(pins.pin_dir(bridge, netns))
    nfstore.forget(bridge, netns)
    tcstore.forget(bridge, netns)


def detach(bridge, netns=None):
    """Remove everything xdpbr put on the bridge's ports and its pins."""

    with writer_lock(), Session(bridge, netns) as s:
        if not os.path.isdir(s.dir):
            raise NotFound(
                f"bridge {bridge} is not attached" + (f' in network namespace "{netns}"' if netns else ""),
                fix="see `xdpbr show`",
            )
        s.open_pins()
        for ifindex, entry in s.ports().items():
            exists = s.rtnl.link_exists(index=ifindex)
            if entry.peer_gro_set and exists:
                try:
                    s.find_bridge()
                    port = next((p for p in s.rtnl.ports(s.bridge) if p.ifindex == ifindex), None)
                    peer = s.rtnl.veth_peer(port) if port else None
                    if peer:
                        peer.restore()
                except NotFound:
                    pass
            _remove_port(s, ifindex, entry, exists)
        s.maps.close()
        s.maps = None
        pins.remove_dir(s.dir)
        nfstore.forget(bridge, netns)
        tcstore.forget(bridge, netns)
        if not pins.attached_bridges():
            tracepoints.remove()


def mode_reason_text(index):
    return MODE_REASONS[index] if index < len(MODE_REASONS) else str(index)
