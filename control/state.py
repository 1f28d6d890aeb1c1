"""Read-only views of attached bridges for `show`, `stats` and `fdb show`.

Only pinned maps (bpf(2)) and netlink reads: never the compiler, so these stay fast.
"""

import itertools
import os

from control.attachment import REQUESTABLE, XDP_MODE_CHOICES, Session
from loader import attach as at
from loader import bpfsys, pins
from loader.errors import NotFound, XdpbrError
from loader.layouts import (
    ATTACH_POINTS,
    BRIDGE_FDB_FULL,
    BRIDGE_NETFILTER_BLOCK,
    FDB_LOCAL,
    FDB_STATIC,
    MODE_REASONS,
    MODES,
    NR_REASONS,
    PORT_FORWARDING,
    PORT_PEER_REDIRECT,
    PORT_XDP_EGRESS,
    REASONS,
    U32,
    XDP_ATTACH,
    Counter,
)
from loader.netns import interface_names


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
    return each_bridge(bridge, netns, _show_one)


def _show_one(name, ns, s):
    meta, state = s.meta(), s.bridge_state()
    entries = s.ports()
    names = interface_names(ns, entries)
    heartbeat_age, active = s.heartbeat_age()
    ports = []
    for ifindex, entry in sorted(entries.items(), key=lambda kv: kv[1].slot):
        xdp = at.xdp_state(s.ipr, ifindex) if ifindex in names else {"prog_id": 0}
        tc = ifindex in names and at.has_xdpbr_filter(s.ipr, ifindex)
        ports.append(
            {
                "port": names.get(ifindex, f"if{ifindex}"),
                "ifindex": ifindex,
                "slot": entry.slot,
                "mode": MODES[entry.mode],
                "why": MODE_REASONS[entry.mode_reason],
                "xdp_mode": XDP_ATTACH[entry.xdp_attach],
                "xdp_prog_id": xdp["prog_id"],
                "tc_prog_id": s.prog_id("tc") if tc else 0,
                "forwarding": bool(entry.flags & PORT_FORWARDING),
                "xdp_egress": bool(entry.flags & PORT_XDP_EGRESS),
                "peer_redirect": bool(entry.flags & PORT_PEER_REDIRECT),
                "peer_gro_set": bool(entry.peer_gro_set),
                "mtu": entry.mtu,
                "pvid": entry.pvid,
            }
        )
    return [
        {
            "bridge": name,
            "netns": ns,
            "mode": REQUESTABLE[meta.mode],
            "xdp_mode": XDP_MODE_CHOICES[meta.xdp_mode],
            "netfilter": "bypass" if meta.netfilter else "respect",
            "netfilter_blocked": bool(state.flags & BRIDGE_NETFILTER_BLOCK),
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


def read_counters(s, slots=None):
    """[(slot, attach, reason, packets, bytes)] of the nonzero counters, per-CPU slots summed,
    in index order (slot, then attach point, then reason).

    One batch syscall for the rows up to the highest used slot; the per-CPU sums and the
    nonzero filter run in C (zip/map/compress), so 1,000 ports read in ~30 ms, most of it the
    kernel copying 64,000 per-CPU values."""
    ncpu = bpfsys.possible_cpus()
    row = len(ATTACH_POINTS) * NR_REASONS
    highest = max(slots if slots is not None else [e.slot for e in s.ports().values()], default=0)
    _, values, count = bpfsys.map_lookup_batch(
        s.maps["xdpbr_stats"], U32, Counter * ncpu, (highest + 1) * row
    )
    flat = memoryview(values).cast("B").cast("Q")[: count * ncpu * 2]
    stride = 2 * ncpu  # per index: (packets, bytes) for each CPU
    packets = list(map(sum, zip(*(flat[2 * c :: stride].tolist() for c in range(ncpu)), strict=True)))
    nbytes = list(map(sum, zip(*(flat[2 * c + 1 :: stride].tolist() for c in range(ncpu)), strict=True)))
    out = []
    for index in itertools.compress(range(len(packets)), packets):
        slot, rest = divmod(index, row)
        attach, reason = divmod(rest, NR_REASONS)
        out.append((slot, attach, reason, packets[index], nbytes[index]))
    return out


def stats(bridge=None, netns=None):
    """Rows {bridge, port, attach, reason, packets, bytes} of nonzero cumulative counters, and
    one row with attach and reason None for each port that has counted nothing."""
    return each_bridge(bridge, netns, _stats_one)


def forwarded(bridge, netns, port):
    """Frames the fast path forwarded from `port` so far (XDP and TC together)."""
    return sum(r["packets"] for r in stats(bridge, netns) if r["port"] == port and r["reason"] == "forward")


def _stats_one(name, ns, s):
    entries = s.ports()
    names = interface_names(ns, entries)
    slot_port = {e.slot: names.get(i, f"if{i}") for i, e in entries.items()}
    counters = read_counters(s)
    # a port that has counted nothing yet is still listed (attach and reason None), in its
    # place: an operator looking at a fresh bridge sees its ports, not an empty answer
    counted = {slot for slot, *_ in counters}
    quiet = [(slot, None, None, 0, 0) for slot in slot_port if slot not in counted]
    return [
        {
            "bridge": name,
            "port": slot_port.get(slot, "-" if slot == 0 else f"slot{slot}"),
            "attach": None if attach is None else ATTACH_POINTS[attach],
            "reason": reason_name(reason),
            "packets": packets,
            "bytes": nbytes,
        }
        for slot, attach, reason, packets, nbytes in sorted(counters + quiet, key=lambda c: c[0])
    ]


def reason_name(index):
    """The label of a reason number (None stays None); numbers this xdpbr does not know yet
    (a newer fast path appended them) read as `reasonN`."""
    if index is None:
        return None
    return REASONS[index] if index < len(REASONS) else f"reason{index}"


def fdb_show(bridge, netns=None):
    return each_bridge(bridge, netns, _fdb_one)


def _fdb_one(name, ns, s):
    from control.fdb import FdbMirror

    entries = FdbMirror(s.maps).entries()
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
