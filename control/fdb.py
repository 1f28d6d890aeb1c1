"""The FDB mirror: the kernel bridge's FDB copied into the BPF map xdpbr_fdb.

The bridge is the only learner. `FdbMirror.sync()` is the one idempotent operation: given
kernel records it makes the map say the same, for a full dump (deleting what the kernel no
longer has) and for each RTM_NEWNEIGH/RTM_DELNEIGH event alike.
"""

import logging
import socket

from control.model import FdbRecord
from loader import bpfsys
from loader.errors import XdpbrError
from loader.layouts import FDB_LOCAL, FDB_STATIC, GEN_CONTROL, U32, FdbEntry, FdbKey, mac_bytes, mac_text

log = logging.getLogger("xdpbr.fdb")

AF_BRIDGE = socket.AF_BRIDGE
NUD_REACHABLE = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_USE = 0x01
NTF_MASTER = 0x04
NTF_STICKY = 0x40


def record_from_neigh(msg, bridge_ifindex):
    """FdbRecord of an AF_BRIDGE neighbour message that belongs to the bridge, else None."""
    if msg.get("family") != AF_BRIDGE:
        return None
    master = msg.get_attr("NDA_MASTER")
    if master != bridge_ifindex and msg["ifindex"] != bridge_ifindex:
        return None  # an entry of some device's own address list (NTF_SELF), not the bridge's
    mac = msg.get_attr("NDA_LLADDR")
    if not mac:
        return None
    state = msg.get("state", 0)
    return FdbRecord(
        mac=mac.lower(),
        vid=msg.get_attr("NDA_VLAN") or 0,
        ifindex=msg["ifindex"],
        local=bool(state & NUD_PERMANENT) or msg["ifindex"] == bridge_ifindex,
        static=bool(state & NUD_NOARP) or bool(msg.get("flags", 0) & NTF_STICKY),
    )


def dump(ipr, bridge_ifindex):
    """Every FDB entry of the bridge, from the kernel."""
    records = []
    for msg in ipr.get_neighbours(family=AF_BRIDGE):
        rec = record_from_neigh(msg, bridge_ifindex)
        if rec:
            records.append(rec)
    return records


def mirror_key(mac, vid):
    key = FdbKey(vid=vid)
    key.mac[:] = mac_bytes(mac)
    return key


def _flags(rec):
    return (FDB_LOCAL if rec.local else 0) | (FDB_STATIC if rec.static or rec.local else 0)


class FdbMirror:
    """Writes kernel FDB records into one bridge's pinned xdpbr_fdb map."""

    def __init__(self, maps):
        self.fd = maps["xdpbr_fdb"]
        self.generation_fd = maps["xdpbr_generation"]

    def bump_generation(self):
        """After the map changed: the fast path's cached decisions (flow.h) are now stale."""
        count = U32()
        bpfsys.map_lookup(self.generation_fd, U32(GEN_CONTROL), count)
        bpfsys.map_update(self.generation_fd, U32(GEN_CONTROL), U32((count.value + 1) & 0xFFFFFFFF))

    def entries(self):
        """{(mac, vid): FdbEntry} as the map holds them now."""
        out = {}
        for key in bpfsys.map_keys(self.fd, FdbKey):
            value = FdbEntry()
            if bpfsys.map_lookup(self.fd, key, value):
                out[(mac_text(key.mac), key.vid)] = value
        return out

    def sync(self, records, slots, *, removed=(), full=False):
        """Make the map hold `records` (and not `removed`); with full=True, nothing else.

        `slots` maps port ifindex to slot: the entry carries the egress slot, so a port that
        gets its slot later is re-synced (records of ports without a slot get slot 0 and take
        the slow path). Returns (written, deleted). An unchanged entry is not rewritten, so its
        last_seen stamp from the fast path survives.
        """
        current = self.entries()
        written = deleted = 0
        wanted = {}
        for rec in records:
            wanted[(rec.mac, rec.vid)] = rec
        for (mac, vid), rec in wanted.items():
            have = current.get((mac, vid))
            slot = slots.get(rec.ifindex, 0)
            if have and (have.ifindex, have.flags, have.slot) == (rec.ifindex, _flags(rec), slot):
                continue
            entry = FdbEntry(ifindex=rec.ifindex, flags=_flags(rec), slot=slot)
            try:
                bpfsys.map_update(self.fd, mirror_key(mac, vid), entry)
                written += 1
            except XdpbrError as exc:
                # A full mirror: this MAC stays on the slow path (unknown_source/destination).
                log.warning("fdb mirror: cannot add %s vlan %d: %s", mac, vid, exc)
        gone = set(removed)
        if full:
            gone |= set(current) - set(wanted)
        for mac, vid in gone:
            if bpfsys.map_delete(self.fd, mirror_key(mac, vid)):
                deleted += 1
        if written or deleted:
            self.bump_generation()
        return written, deleted


def refresh_kernel_entry(ipr, rec):
    """NTF_USE: tell the bridge the entry is in use, as a frame through it would (aging)."""
    ipr.neigh(
        "set",
        family=AF_BRIDGE,
        ifindex=rec.ifindex,
        lladdr=rec.mac,
        state=NUD_REACHABLE,
        flags=NTF_MASTER | NTF_USE,
        **({"vlan": rec.vid} if rec.vid else {}),
    )
