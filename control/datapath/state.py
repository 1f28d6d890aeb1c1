"""Read-only views of attached bridges for `show`, `stats` and `fdb show`.

Only pinned maps (bpf(2)) and netlink reads: never the compiler, so these stay fast.
"""

import os
import time

from ...loader import pins
from ...loader.bridge_id import BridgeId
from ...loader.errors import NotFound, XdpbrError
from ...loader.layouts import (
    ATTACH_POINTS,
    BRIDGE_FDB_FULL,
    BRIDGE_NETFILTER_BLOCK,
    FDB_LOCAL,
    FDB_STATIC,
    MODE_REASONS,
    MODES,
    PORT_FORWARDING,
    PORT_PEER_REDIRECT,
    PORT_TC_INGRESS,
    PORT_XDP_EGRESS,
    REASONS,
    RELOAD_RESULTS,
    REQUESTED_MODES,
    TC_VIA_QDISC,
    TC_VIA_TCX,
    XDP_ATTACH,
    XDP_MODE_REQUESTS,
)
from ...loader.netns import interface_names
from .. import config
from ..netfilter import store as nfstore
from . import tc_store as tcstore
from .session import Session


def targets(bridge, netns):
    """(bridge, netns) pairs a read-only command covers: one bridge or every attached one."""
    if bridge:
        directory = pins.pin_dir(bridge, netns)
        if not os.path.isdir(directory):
            where = f' in network namespace "{netns}"' if netns else ""
            raise NotFound(f"bridge {bridge} is not attached{where}", fix="attach it with `xdpbr attach`")
        return [(bridge, netns)]
    if netns:
        return [(b, n) for b, n in pins.attached_bridges() if n == netns]
    return pins.attached_bridges()


def each_bridge(bridge, netns, read):
    """Call read(name, netns, session) for each bridge a read-only command covers and collect
    the rows it returns. Listing every bridge, one detached (or whose namespace went away)
    meanwhile is skipped; a bridge named on the command line is an error instead."""
    rows = []
    for name, ns in targets(bridge, netns):
        try:
            with Session(name, ns) as s:
                s.open_pins()
                rows.extend(read(name, ns, s))
        except (XdpbrError, OSError):
            if bridge:
                raise
    return rows


def show(bridge=None, netns=None):
    rows = each_bridge(bridge, netns, _show_one)
    if rows:
        view = config.load_view()
        status = daemon_status(view)
        for row in rows:
            row["config_entry"] = config_entry(view, row["bridge"], row["netns"])
            row["daemon"] = status
    return rows


def config_entry(view, bridge, netns):
    """The configuration entry that attached the bridge ("bridge[1] vmbr*"), as the daemon's view
    (config.save_view) says; None for a bridge attached by hand, or attached again since."""
    by = view.get("attached", {}).get(BridgeId(bridge, netns).label)
    try:
        fresh = isinstance(by, dict) and by.get("pins") == os.stat(pins.pin_dir(bridge, netns)).st_ino
    except OSError:
        return None
    return by.get("entry") if fresh else None


def daemon_status(view=None):
    """The instance's daemon as its record says (loader/pins.py DaemonRecordPin), for `show -j`;
    None when no daemon has run here. Ages are seconds before now (None: never). `left_alone`:
    the configured bridges the running daemon does not attach, with the entry and why
    ([{"bridge", "entry", "reason"}], from its view: config.save_view)."""
    found = pins.read_daemon_record()
    if found is None:
        return None
    rec, running = found
    now = time.monotonic_ns()
    view = config.load_view() if view is None else view

    def ago(ns):
        return round((now - ns) / 1e9, 3) if ns else None

    return {
        "running": running,
        "pid": rec.pid if running else None,
        "uptime_s": ago(rec.started_ns) if running else None,
        "loop_generation": rec.loop_generation,
        "bridges": rec.bridges if running else 0,
        "bridges_failed": rec.bridges_failed if running else 0,
        "scanned_s_ago": ago(rec.scanned_ns),
        "rules_checked_s_ago": ago(rec.rules_checked_ns),
        "reconciled_s_ago": ago(rec.reconciled_ns),
        "left_alone": view.get("left_alone", []) if running and view.get("pid") == rec.pid else [],
        "reloads_ok": rec.reloads_ok,
        "reloads_failed": rec.reloads_failed,
        "last_reload": None
        if not rec.reload_result
        else {
            "result": reload_result_name(rec.reload_result),
            "generation": rec.reload_generation,
            "s_ago": ago(rec.reload_finished_ns),
            "message": rec.reload_message.decode(errors="replace"),
        },
    }


NOT_A_PORT = "-"  # the port of slot 0's counters: frames of interfaces that are not (yet) ports


def port_rows(s, ns, entries=None, names=None):
    """One row per port of the bridge, in slot order: the one builder behind `show`, `port
    show`, `stats` and the metrics. Program ids are those of the pinned programs on the ports
    that run them (reconcile keeps the two the same), so a scrape asks the kernel nothing per
    port. `entries` and `names` save a caller that has them a second read."""
    entries = s.ports() if entries is None else entries
    names = interface_names(ns, entries) if names is None else names
    xdp_id, tc_id = s.prog_id("xdp"), s.prog_id("tc")
    rows = []
    for ifindex, entry in sorted(entries.items(), key=lambda kv: kv[1].slot):
        mode = MODES[entry.mode]
        rows.append(
            {
                "port": names.get(ifindex, f"if{ifindex}"),
                "ifindex": ifindex,
                "slot": entry.slot,
                "mode": mode,
                "why": MODE_REASONS[entry.mode_reason],
                "xdp_mode": XDP_ATTACH[entry.xdp_attach],
                "xdp_prog_id": xdp_id if entry.xdp_attach else 0,
                "tc_prog_id": tc_id if mode in ("tc", "xdp+tc") else 0,
                "forwarding": bool(entry.flags & PORT_FORWARDING),
                "xdp_egress": bool(entry.flags & PORT_XDP_EGRESS),
                "peer_redirect": bool(entry.flags & PORT_PEER_REDIRECT),
                "peer_gro_set": bool(entry.peer_gro_set),
                "tc_attach": "tcx"
                if entry.owned & TC_VIA_TCX
                else "qdisc"
                if entry.owned & TC_VIA_QDISC
                else None,
                "tc_ingress_held": bool(entry.flags & PORT_TC_INGRESS),
                "mtu": entry.mtu,
                "pvid": entry.pvid,
            }
        )
    return rows


def counter_rows(s, ports):
    """(port, attach, reason, packets, bytes) of the nonzero counters, `ports` from port_rows."""
    slot_port = {row["slot"]: row["port"] for row in ports}
    return [
        (
            slot_port.get(slot, NOT_A_PORT if slot == 0 else f"slot{slot}"),
            ATTACH_POINTS[attach],
            reason_name(reason),
            packets,
            nbytes,
        )
        for slot, attach, reason, packets, nbytes in s.read_counters(slot_port)
    ]


def _show_one(name, ns, s):
    meta, state = s.meta(), s.bridge_state()
    heartbeat_age, active = s.heartbeat_age()
    ports = port_rows(s, ns)
    holds = nfstore.load(name, ns) or {"bridge_hold": None, "ports": {}}
    policies = tcstore.load(name, ns)
    for row in ports:  # the rule that keeps each held port on the bridge, the tc policy it meets
        row["netfilter_hold"] = holds["bridge_hold"] or holds["ports"].get(row["port"])
        policy = policies.get(row["port"]) or {}
        row["tc_egress_policy"], row["tc_ingress_policy"] = policy.get("egress"), policy.get("ingress")
    return [
        {
            "bridge": name,
            "netns": ns,
            "mode": REQUESTED_MODES[meta.mode],
            "xdp_mode": XDP_MODE_REQUESTS[meta.xdp_mode],
            "netfilter": "bypass" if meta.netfilter else "respect",
            "netfilter_counters": "hold" if meta.netfilter_counters else "ignore",
            "netfilter_blocked": bool(state.flags & BRIDGE_NETFILTER_BLOCK),
            "netfilter_hold": holds["bridge_hold"],
            "fdb_mirror_full": bool(state.flags & BRIDGE_FDB_FULL),
            "heartbeat_age_s": round(heartbeat_age, 3),
            "grace_s": state.grace_jiffies / max(state.hz, 1),
            "fast_path_active": active,
            "layout_version": meta.layout_version,
            "xdp_prog_tag": s.prog_tag("xdp"),
            "tc_prog_tag": s.prog_tag("tc"),
            "xdp_prog_id": s.prog_id("xdp"),
            "tc_prog_id": s.prog_id("tc"),
            "ports": ports,
        }
    ]


def stats(bridge=None, netns=None):
    """Rows {bridge, port, attach, reason, packets, bytes} of nonzero cumulative counters, and
    one row with attach and reason None for each port that has counted nothing."""
    return each_bridge(bridge, netns, _stats_one)


def forwarded(bridge, netns, port):
    """Frames the fast path forwarded from `port` so far (XDP and TC together)."""
    return sum(r["packets"] for r in stats(bridge, netns) if r["port"] == port and r["reason"] == "forward")


def _stats_one(name, ns, s):
    ports = port_rows(s, ns)
    rows = counter_rows(s, ports)
    # a port that has counted nothing yet is still listed (attach and reason None), in its
    # place: an operator looking at a fresh bridge sees its ports, not an empty answer
    counted = {port for port, *_ in rows}
    quiet = [(p["port"], None, None, 0, 0) for p in ports if p["port"] not in counted]
    slot_of = {p["port"]: p["slot"] for p in ports}
    return [
        {
            "bridge": name,
            "port": port,
            "attach": attach,
            "reason": reason,
            "packets": packets,
            "bytes": nbytes,
        }
        for port, attach, reason, packets, nbytes in sorted(rows + quiet, key=lambda r: slot_of.get(r[0], 0))
    ]


def reload_result_name(index):
    """`ok` or `failed` (a number this xdpbr does not know reads as `resultN`)."""
    return RELOAD_RESULTS[index] if index < len(RELOAD_RESULTS) else f"result{index}"


def reason_name(index):
    """The label of a reason number (None stays None); numbers this xdpbr does not know yet
    (a newer fast path appended them) read as `reasonN`."""
    if index is None:
        return None
    return REASONS[index] if index < len(REASONS) else f"reason{index}"


def fdb_show(bridge, netns=None):
    return each_bridge(bridge, netns, _fdb_one)


def _fdb_one(name, ns, s):

    entries = s.fdb_mirror().entries()
    names = interface_names(ns, {e.ifindex for e in entries.values()})
    now, hz = s.jiffies(), max(s.bridge_state().hz, 1)
    rows = []
    for (mac, vid), e in sorted(entries.items()):
        flags = [f for f, bit in (("local", FDB_LOCAL), ("static", FDB_STATIC)) if e.flags & bit]
        rows.append(
            {
                "bridge": name,
                "mac": mac,
                "vlan": vid,
                "port": names.get(e.ifindex, f"if{e.ifindex}"),
                "flags": flags,
                "fast_path_used_s_ago": round((now - e.last_seen) / hz, 1) if e.last_seen else None,
            }
        )
    return rows
