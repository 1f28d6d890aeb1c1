"""One accelerated bridge's pinned state, as typed reads and writes: the one place that knows
which map holds what (`bpf/xdpbr_maps.h`, mirrored in loader/layouts.py).

`reconcile` (attachment.py), `state` (show, stats), the metrics and the daemon all work through
a Session; none of them indexes a map by hand. A Session also holds the bridge's netlink socket
(opened on first use) and its pinned programs.
"""

import itertools
import os
import time

from ...loader import bpfsys, pins
from ...loader.errors import NotFound
from ...loader.layouts import (
    ATTACH_POINTS,
    BRIDGE_NETFILTER_BLOCK,
    CLOCK_HEARTBEAT,
    CLOCK_NOW,
    I32,
    NR_REASONS,
    REQUESTED_MODES,
    U8,
    U32,
    U64,
    VLAN_UNTAGGED,
    Bridge,
    Control,
    Counter,
    FdbEntry,
    FdbKey,
    Ifname,
    Meta,
    Port,
    VlanKey,
    mac_bytes,
    port_index_map,
    stats_index,
)
from ...loader.links import Rtnl
from ...loader.netns import entered
from .fdb import FdbMirror

KNOWN_HZ = (100, 250, 300, 1000)


class Session:
    """Open handles for one accelerated bridge: netlink, pinned maps and program fds."""

    def __init__(self, bridge_name, netns=None):
        self.bridge_name, self.netns = bridge_name, netns
        self.dir = pins.pin_dir(bridge_name, netns)
        self.rtnl = Rtnl(netns)  # RTNL in the bridge's namespace, opened on first use
        self.bridge = None
        self.maps = None
        self.prog_fds = {}

    @classmethod
    def over_pins(cls, directory, netns=None):
        """A session over maps pinned in `directory` (a test's compiled fast path), opened."""
        s = cls("", netns)
        s.dir = directory
        return s.open_pins()

    def find_bridge(self):
        self.bridge = self.rtnl.bridge(self.bridge_name)
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
        self.rtnl.close()

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

    def write_bridge(self, state):
        bpfsys.map_update(self.maps["xdpbr_bridge"], U32(0), state)

    def write_bridge_state(self, *, heartbeat=True, grace_s=None, netfilter_block=None):
        state = self.bridge_state()
        if grace_s is not None:
            state.hz = state.hz or self.measure_hz()
            state.grace_jiffies = int(grace_s * state.hz)
        if self.bridge:
            state.ifindex = self.bridge.ifindex
            state.mac[:] = mac_bytes(self.bridge.mac)
            state.vlan_filtering = int(self.bridge.vlan_filtering)
        if netfilter_block is not None:
            state.flags = (state.flags & ~BRIDGE_NETFILTER_BLOCK) | (
                BRIDGE_NETFILTER_BLOCK if netfilter_block else 0
            )
        self.write_bridge(state)
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
        keys, values, count = bpfsys.map_lookup_batch(fd, U32, Port, self.max_ports)
        out = {}
        for i in range(count):
            if values[i].ifindex:
                entry = Port.from_buffer_copy(values[i])
                entry.slot = keys[i]
                out[entry.ifindex] = entry
        return out

    @property
    def max_ports(self):
        """Port slots this bridge was compiled with (-DXDPBR_MAX_PORTS): its ports map's size."""
        return bpfsys.map_info(self.maps["xdpbr_ports"]).max_entries

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

    def write_port(self, slot, entry):
        """xdpbr_ports[slot]: the port's entry (an empty Port frees the slot)."""
        bpfsys.map_update(self.maps["xdpbr_ports"], U32(slot), entry)

    def write_egress(self, slot, ifindex):
        """xdpbr_devmap[slot] = ifindex (a DEVMAP resolves ifindexes in the writer's namespace);
        ifindex None removes it."""
        with entered(self.netns):
            if ifindex is None:
                bpfsys.map_delete(self.maps["xdpbr_devmap"], U32(slot))
            else:
                bpfsys.map_update(self.maps["xdpbr_devmap"], U32(slot), I32(ifindex))

    def write_port_index(self, ifindex, slot):
        """Where the fast path finds the ingress slot of ifindex; slot 0 removes it."""
        name = port_index_map(ifindex)
        fd = self.maps[name]
        if name == "xdpbr_port_direct" or slot:
            bpfsys.map_update(fd, U32(ifindex), U32(slot))
        else:
            bpfsys.map_delete(fd, U32(ifindex))

    def vlans_of(self, ifindex):
        return [k.vid for k in bpfsys.map_keys(self.maps["xdpbr_vlans"], VlanKey) if k.ifindex == ifindex]

    def write_vlans(self, ifindex, vlans):
        """The port's VLANs ({vid: untagged}) as the only ones in xdpbr_vlans for ifindex."""
        fd = self.maps["xdpbr_vlans"]
        old = self.vlans_of(ifindex)
        for vid, untagged in vlans.items():
            bpfsys.map_update(fd, VlanKey(ifindex=ifindex, vid=vid), U8(VLAN_UNTAGGED if untagged else 0))
        for vid in set(old) - set(vlans):
            bpfsys.map_delete(fd, VlanKey(ifindex=ifindex, vid=vid))

    def zero_stats(self, slot):
        """A slot's counters back to zero, so a new port does not inherit an old one's."""
        zero = (Counter * bpfsys.possible_cpus())()
        for attach in range(len(ATTACH_POINTS)):
            for reason in range(NR_REASONS):
                bpfsys.map_update(self.maps["xdpbr_stats"], U32(stats_index(slot, attach, reason)), zero)

    def write_meta(self, meta):
        bpfsys.map_update(self.maps["xdpbr_meta"], U32(0), meta)

    def control(self, element):
        """xdpbr_control[element]: the attach's (CONTROL_ATTACH) or the daemon's counters."""
        value = Control()
        bpfsys.map_lookup(self.maps["xdpbr_control"], U32(element), value)
        return value

    def write_control(self, element, value):
        bpfsys.map_update(self.maps["xdpbr_control"], U32(element), value)

    def read_counters(self, slots=None):
        """[(slot, attach, reason, packets, bytes)] of the nonzero counters, per-CPU slots summed,
        in index order (slot, then attach point, then reason).

        One batch syscall for the rows up to the highest used slot; the per-CPU sums and the
        nonzero filter run in C (zip/map/compress), so 1,000 ports read in ~30 ms, most of it the
        kernel copying 64,000 per-CPU values."""
        ncpu = bpfsys.possible_cpus()
        row = len(ATTACH_POINTS) * NR_REASONS
        highest = max(slots if slots is not None else [e.slot for e in self.ports().values()], default=0)
        _, values, count = bpfsys.map_lookup_batch(
            self.maps["xdpbr_stats"], U32, Counter * ncpu, (highest + 1) * row
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

    def fdb_mirror(self):
        return FdbMirror(self.maps)

    def fdb_fill(self):
        """(entries in the FDB mirror, its capacity)."""
        fd = self.maps["xdpbr_fdb"]
        return bpfsys.map_count(fd, FdbKey, FdbEntry), bpfsys.map_info(fd).max_entries

    def map_id(self, name):
        return bpfsys.map_info(self.maps[name]).id

    def prog_id(self, attach_point):
        fd = self.prog_fds.get(attach_point)
        return bpfsys.prog_info(fd).id if fd is not None else 0

    def prog_tag(self, attach_point):
        """The kernel's tag of the program (a hash of its instructions): the program version."""
        fd = self.prog_fds.get(attach_point)
        return bytes(bpfsys.prog_info(fd).tag).hex() if fd is not None else ""

    def measure_hz(self, interval=0.1):
        """The kernel's HZ (the fast path counts jiffies): two clock readings `interval` apart,
        snapped to the nearest CONFIG_HZ choice."""
        j0, t0 = self.jiffies(), time.monotonic()
        time.sleep(interval)
        j1, t1 = self.jiffies(), time.monotonic()
        rate = (j1 - j0) / (t1 - t0)
        return min(KNOWN_HZ, key=lambda hz: abs(hz - rate))
