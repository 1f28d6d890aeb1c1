"""The FDB mirror: the kernel bridge's FDB copied into the BPF map xdpbr_fdb.

The bridge is the only learner. `FdbMirror.sync()` is the one idempotent operation: given
kernel records it makes the map say the same, for a full dump (deleting what the kernel no
longer has) and for each RTM_NEWNEIGH/RTM_DELNEIGH event alike.
"""

import errno
import logging
import socket

from ...loader import bpfsys, neigh
from ...loader.errors import XdpbrError
from ...loader.layouts import (
    BRIDGE_FDB_FULL,
    FDB_LOCAL,
    FDB_STATIC,
    GEN_CONTROL,
    U32,
    Bridge,
    FdbEntry,
    FdbKey,
    mac_bytes,
    mac_text,
)
from ..model import FdbRecord

log = logging.getLogger("xdpbr.fdb")

AF_BRIDGE = socket.AF_BRIDGE
NUD_REACHABLE = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_USE = 0x01
NTF_MASTER = 0x04
NTF_STICKY = 0x40


def record_from_neigh(msg, bridge_ifindex):
    """FdbRecord of an AF_BRIDGE neighbour message (loader.neigh) of the bridge, else None."""
    if msg.family != AF_BRIDGE:
        return None
    if msg.master != bridge_ifindex and msg.ifindex != bridge_ifindex:
        return None  # an entry of some device's own address list (NTF_SELF), not the bridge's
    if not msg.lladdr or len(msg.lladdr) != 6:
        return None
    return FdbRecord(
        mac=mac_text(msg.lladdr),
        vid=msg.vlan or 0,
        ifindex=msg.ifindex,
        local=bool(msg.state & NUD_PERMANENT) or msg.ifindex == bridge_ifindex,
        static=bool(msg.state & NUD_NOARP) or bool(msg.flags & NTF_STICKY),
    )


def dump(netns, bridge_ifindex):
    """Every FDB entry of the bridge, from the kernel."""
    records = []
    for msg in neigh.dump_bridge(netns):
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
    """Writes kernel FDB records into one bridge's pinned xdpbr_fdb map.

    The map is a plain hash of fixed capacity (never LRU, so a flood of new MACs cannot push
    other stations out): a record that does not fit is refused, kept in `refused`, and tried
    again when entries go; while any is refused the bridge carries XDPBR_BRIDGE_FDB_FULL and the
    fast path counts its misses as `fdb_full` instead of unknown_source/unknown_destination.
    """

    def __init__(self, maps):
        self.fd = maps["xdpbr_fdb"]
        self.generation_fd = maps["xdpbr_generation"]
        self.bridge_fd = maps["xdpbr_bridge"]
        self.refused = {}  # (mac, vid) -> FdbRecord that did not fit

    def bump_generation(self):
        """After the map changed: the fast path's cached decisions (flow.h) are now stale."""
        count = U32()
        bpfsys.map_lookup(self.generation_fd, U32(GEN_CONTROL), count)
        bpfsys.map_update(self.generation_fd, U32(GEN_CONTROL), U32((count.value + 1) & 0xFFFFFFFF))

    def entries(self):
        """{(mac, vid): FdbEntry} as the map holds them now."""
        return {
            (mac_text(key.mac), key.vid): value for key, value in bpfsys.map_items(self.fd, FdbKey, FdbEntry)
        }

    def _lookup(self, keys):
        """{(mac, vid): FdbEntry} of those of `keys` the map holds: one lookup each, so an FDB
        event costs the same with 10 or 16,000 entries."""
        out = {}
        for mac, vid in keys:
            value = FdbEntry()
            if bpfsys.map_lookup(self.fd, mirror_key(mac, vid), value):
                out[(mac, vid)] = value
        return out

    def sync(self, records, slots, *, removed=(), full=False):
        """Make the map hold `records` (and not `removed`); with full=True, nothing else.

        `slots` maps port ifindex to slot: the entry carries the egress slot, so a port that
        gets its slot later is re-synced (records of ports without a slot get slot 0 and take
        the slow path). Returns (written, deleted). An unchanged entry is not rewritten, so its
        last_seen stamp from the fast path survives.
        """
        wanted = {(rec.mac, rec.vid): rec for rec in records}
        if full:
            current = self.entries()
            self.refused.clear()
        else:
            current = self._lookup(set(wanted) | set(removed))
        gone = set(removed)
        if full:
            gone |= set(current) - set(wanted)
        deleted = 0
        for key in gone:
            self.refused.pop(key, None)
            if bpfsys.map_delete(self.fd, mirror_key(*key)):
                deleted += 1
        if deleted and self.refused:  # room again: what did not fit goes first
            wanted = {**self.refused, **wanted}
            current.update(self._lookup(set(self.refused) - set(current)))
        written = 0
        for key, rec in wanted.items():
            have = current.get(key)
            slot = slots.get(rec.ifindex, 0)
            if have and (have.ifindex, have.flags, have.slot) == (rec.ifindex, _flags(rec), slot):
                self.refused.pop(key, None)
                continue
            entry = FdbEntry(ifindex=rec.ifindex, flags=_flags(rec), slot=slot)
            try:
                bpfsys.map_update(self.fd, mirror_key(*key), entry)
                written += 1
                self.refused.pop(key, None)
            except XdpbrError as exc:
                if exc.errno not in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
                    raise
                if not self.refused:
                    log.warning(
                        "fdb mirror full: %s vlan %d and later MACs take the slow path (fdb_full)", *key
                    )
                self.refused[key] = rec
        if written or deleted:
            self.bump_generation()
        self._flag_full(bool(self.refused))
        return written, deleted

    def _flag_full(self, full):
        state = Bridge()
        if not bpfsys.map_lookup(self.bridge_fd, U32(0), state):
            return
        if bool(state.flags & BRIDGE_FDB_FULL) != full:
            state.flags = (state.flags & ~BRIDGE_FDB_FULL) | (BRIDGE_FDB_FULL if full else 0)
            bpfsys.map_update(self.bridge_fd, U32(0), state)
            if not full:
                log.info("fdb mirror: every entry fits again")
