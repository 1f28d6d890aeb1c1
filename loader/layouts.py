"""ctypes mirrors of the structs, maps and reasons in bpf/xdpbr_maps.h and bpf/xdpbr_reasons.h.

Each class quotes its C struct; tests/test_layouts.py compiles the fast path and checks every
size and field offset, every map's type/key/value size, and the reason names, so drift fails
the tests rather than a running host.
"""

import ctypes

from .packets import mac as mac_bytes  # noqa: F401 - the one MAC parser, for map keys

LAYOUT_VERSION = 1  # XDPBR_LAYOUT_VERSION
MAX_PORTS = 1024  # XDPBR_MAX_PORTS default
FDB_SIZE = 16384  # XDPBR_FDB_SIZE default
VLAN_SIZE = 16384  # XDPBR_VLAN_SIZE default
# what an operator may choose per bridge: the stats map holds max_ports x 2 x NR_REASONS per-CPU
# counters, so its size bounds max_ports; a port slot is a u16 in an FDB entry
MAX_PORTS_RANGE = (8, 4096)
FDB_SIZE_RANGE = (256, 1 << 20)
DIRECT_IFINDEX = 65536  # XDPBR_DIRECT_IFINDEX: ingress slot by array below, by hash above
NR_REASONS = 32  # XDPBR_NR_REASONS: stats row width, room for appended reasons
ATTACH_POINTS = ("xdp", "tc")  # XDPBR_ATTACH_XDP, XDPBR_ATTACH_TC
NO_SLOT = 0  # stats row of frames from interfaces that are not known ports

# enum xdpbr_reason, in order: the label is the C name without PASS_, lower case.
REASONS = (
    "forward",
    "malformed",
    "stale_mirror",
    "port_not_accelerated",
    "port_state",
    "vlan_unsupported",
    "vlan_mismatch",
    "unknown_source",
    "source_moved",
    "broadcast",
    "multicast",
    "local_destination",
    "unknown_destination",
    "egress_not_accelerated",
    "egress_state",
    "isolated",
    "hairpin",
    "vlan_tag_change",
    "too_long",
    "checksum_partial",
    "egress_no_xdp",
    "redirect_miss",
    "netfilter",
    "fdb_full",
    "tc_ingress",
)
REASON_INDEX = {name: i for i, name in enumerate(REASONS)}

# Each tuple is the one spelling of its concept; pinned maps store the index, so entries are
# only ever appended. XDPBR_MODE_*: the mode a port runs.
MODES = ("bridge", "xdp", "tc", "xdp+tc")
MODE_INDEX = {name: i for i, name in enumerate(MODES)}
# what an operator asks for (xdpbr_meta.mode, xdpbr_port_modes): auto, or a mode (its index + 1)
REQUESTED_MODES = ("auto", *MODES)
# XDP attach mode asked for (xdpbr_meta.xdp_mode): any tries native, then generic
XDP_MODE_REQUESTS = ("any", "native", "generic")
# how the XDP program runs on a port (xdpbr_ports.xdp_attach)
XDP_ATTACH = ("none", "native", "generic")

PORT_FORWARDING = 1 << 0
PORT_ISOLATED = 1 << 1
PORT_HAIRPIN = 1 << 2
PORT_XDP_EGRESS = 1 << 3
PORT_PEER_REDIRECT = 1 << 4
PORT_TC_INGRESS = 1 << 5

# struct xdpbr_port.owned: what xdpbr created on the port and must remove at detach.
OWN_CLSACT = 1 << 0  # a clsact qdisc (the cls_bpf attachment before TCX)
OWN_INGRESS = 1 << 1  # an `ingress` qdisc (the cls_bpf attachment where TCX is missing)
TC_VIA_TCX = 1 << 2  # not owned: the TC program runs as a TCX link (pinned tcx_IFINDEX)
TC_VIA_QDISC = 1 << 3  # not owned: the TC program is a cls_bpf filter

CLOCK_HEARTBEAT = 0  # XDPBR_CLOCK_HEARTBEAT: element of xdpbr_clock
CLOCK_NOW = 1  # XDPBR_CLOCK_NOW
GEN_CONTROL = 0  # XDPBR_GEN_CONTROL: the control plane's element of xdpbr_generation
VLAN_UNTAGGED = 1 << 0
FDB_LOCAL = 1 << 0
FDB_STATIC = 1 << 1
BRIDGE_NETFILTER_BLOCK = 1 << 0
BRIDGE_FDB_FULL = 1 << 1

# Why a port runs its mode: struct xdpbr_port.mode_reason. Stable like REASONS (show -j).
MODE_REASONS = (
    "requested",  # the operator asked for this mode
    "auto",  # auto's table for this port kind
    "netfilter",  # netfilter rules could see the port's frames (--netfilter respect)
    "no_native_xdp",  # the driver refused native XDP: auto took tc
    "xdp_refused",  # XDP attach failed (MTU needs frags, driver limits): auto took tc
    "foreign_xdp",  # another tool's XDP program is attached: left alone
    "not_forwarding",  # unused, kept for the ABI
    "unsupported_port",  # a port kind or flag xdpbr does not model (locked, neigh_suppress)
    "no_slot",  # more ports than XDPBR_MAX_PORTS
)
MODE_REASON_INDEX = {name: i for i, name in enumerate(MODE_REASONS)}


class Port(ctypes.Structure):
    """struct xdpbr_port { __u32 ifindex; __u32 mtu; __u16 pvid; __u8 mode; __u8 flags;
    __u8 mode_reason; __u8 xdp_attach; __u8 peer_gro_set; __u8 owned; };

    Stored at its slot in the xdpbr_ports array; Python code keeps the slot as `.slot`."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("mtu", ctypes.c_uint32),
        ("pvid", ctypes.c_uint16),
        ("mode", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("mode_reason", ctypes.c_uint8),
        ("xdp_attach", ctypes.c_uint8),
        ("peer_gro_set", ctypes.c_uint8),
        ("owned", ctypes.c_uint8),
    ]


class VlanKey(ctypes.Structure):
    """struct xdpbr_vlan_key { __u32 ifindex; __u16 vid; __u16 pad; };"""

    _fields_ = [("ifindex", ctypes.c_uint32), ("vid", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class FdbKey(ctypes.Structure):
    """struct xdpbr_fdb_key { __u8 mac[6]; __u16 vid; };"""

    _fields_ = [("mac", ctypes.c_uint8 * 6), ("vid", ctypes.c_uint16)]


class FdbEntry(ctypes.Structure):
    """struct xdpbr_fdb_entry { __u32 ifindex; __u16 flags; __u16 slot; __u64 last_seen; };"""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("slot", ctypes.c_uint16),
        ("last_seen", ctypes.c_uint64),
    ]


class Bridge(ctypes.Structure):
    """struct xdpbr_bridge { __u64 hz; __u64 grace_jiffies; __u32 ifindex; __u8 mac[6];
    __u8 vlan_filtering; __u8 flags; };"""

    _fields_ = [
        ("hz", ctypes.c_uint64),
        ("grace_jiffies", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("mac", ctypes.c_uint8 * 6),
        ("vlan_filtering", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class Meta(ctypes.Structure):
    """struct xdpbr_meta { __u32 layout_version; __u8 mode; __u8 xdp_mode; __u8 netfilter;
    __u8 netfilter_counters; char netns[64]; };"""

    _fields_ = [
        ("layout_version", ctypes.c_uint32),
        ("mode", ctypes.c_uint8),
        ("xdp_mode", ctypes.c_uint8),
        ("netfilter", ctypes.c_uint8),
        ("netfilter_counters", ctypes.c_uint8),  # 0 ignore, 1 hold (was padding: old pins read 0)
        ("netns", ctypes.c_char * 64),
    ]


class Control(ctypes.Structure):
    """struct xdpbr_control { __u64 compile_ns; __u64 attach_ns; __u64 fdb_events;
    __u64 sync_lag_ns_sum; __u64 resyncs; __u64 errors; };"""

    _fields_ = [
        ("compile_ns", ctypes.c_uint64),
        ("attach_ns", ctypes.c_uint64),
        ("fdb_events", ctypes.c_uint64),
        ("sync_lag_ns_sum", ctypes.c_uint64),
        ("resyncs", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
    ]


CONTROL_ATTACH = 0  # XDPBR_CONTROL_ATTACH
CONTROL_DAEMON = 1  # XDPBR_CONTROL_DAEMON


class Ifname(ctypes.Structure):
    """struct xdpbr_ifname { char name[16]; };"""

    _fields_ = [("name", ctypes.c_char * 16)]


class Counter(ctypes.Structure):
    """struct xdpbr_counter { __u64 packets; __u64 bytes; };"""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


U8 = ctypes.c_uint8
U32 = ctypes.c_uint32
U64 = ctypes.c_uint64
I32 = ctypes.c_int32


class MapSpec:
    """What a pinned map must look like before xdpbr reuses it."""

    def __init__(self, name, map_type, key, value, max_entries):
        self.name, self.map_type, self.key, self.value = name, map_type, key, value
        self.max_entries = max_entries

    def __repr__(self):
        return f"MapSpec({self.name})"


def map_specs(max_ports=MAX_PORTS, fdb_size=FDB_SIZE):
    """Every pinned map of the fast path, by pin file name."""
    specs = [
        MapSpec("xdpbr_port_direct", "array", U32, U32, DIRECT_IFINDEX),
        MapSpec("xdpbr_port_index", "hash", U32, U32, max_ports),
        MapSpec("xdpbr_ports", "array", U32, Port, max_ports),
        MapSpec("xdpbr_vlans", "hash", VlanKey, U8, VLAN_SIZE),
        MapSpec("xdpbr_fdb", "hash", FdbKey, FdbEntry, fdb_size),
        MapSpec("xdpbr_bridge", "array", U32, Bridge, 1),
        MapSpec("xdpbr_meta", "array", U32, Meta, 1),
        MapSpec("xdpbr_port_modes", "hash", Ifname, U8, max_ports),
        MapSpec("xdpbr_generation", "array", U32, U32, 2),
        MapSpec("xdpbr_clock", "array", U32, U64, 2),
        MapSpec("xdpbr_control", "array", U32, Control, 2),
        MapSpec("xdpbr_stats", "percpu_array", U32, Counter, max_ports * len(ATTACH_POINTS) * NR_REASONS),
        MapSpec("xdpbr_devmap", "devmap", U32, I32, max_ports),
    ]
    return {s.name: s for s in specs}


def port_index_map(ifindex):
    """Which map holds the ingress slot of `ifindex` (see XDPBR_DIRECT_IFINDEX)."""
    return "xdpbr_port_direct" if ifindex < DIRECT_IFINDEX else "xdpbr_port_index"


def stats_index(slot, attach, reason):
    return (slot * len(ATTACH_POINTS) + attach) * NR_REASONS + reason


def mac_text(raw):
    return ":".join(f"{b:02x}" for b in bytes(raw))


class XskCounter(ctypes.Structure):
    """Mirror of struct xdpbr_xsk_counter in bpf/xdpbr_aux.h (afxdp.c's per-CPU stats)."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class RedirectKey(ctypes.Structure):
    """Mirror of struct xdpbr_redirect_key in bpf/xdpbr_aux.h (host_tracepoints.c)."""

    _fields_ = [("map_id", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class LearnKey(ctypes.Structure):
    """Mirror of struct xdpbr_learn_key in bpf/xdpbr_aux.h (host_tracepoints.c)."""

    _fields_ = [("mac", ctypes.c_uint8 * 6), ("vid", ctypes.c_uint16)]


# struct xdpbr_daemon.reload_result (XDPBR_RELOAD_*): the last SIGHUP reload's outcome
RELOAD_RESULTS = ("none", "ok", "failed")
RELOAD_NONE, RELOAD_OK, RELOAD_FAILED = range(3)


class DaemonRecord(ctypes.Structure):
    """struct xdpbr_daemon { __u64 pid; __u64 pid_start; __u64 started_ns; __u64 loop_generation;
    __u64 scanned_ns; __u64 rules_checked_ns; __u64 reconciled_ns; __u64 bridges;
    __u64 bridges_failed; __u64 reloads_ok; __u64 reloads_failed; __u64 reload_started_ns;
    __u64 reload_finished_ns; __u64 reload_generation; __u32 reload_result; __u32 pad;
    char reload_message[512]; };

    The daemon's own record, one per instance (loader/pins.py DaemonRecordPin); times are
    CLOCK_MONOTONIC ns, 0 = never."""

    _fields_ = [
        ("pid", ctypes.c_uint64),
        ("pid_start", ctypes.c_uint64),
        ("started_ns", ctypes.c_uint64),
        ("loop_generation", ctypes.c_uint64),
        ("scanned_ns", ctypes.c_uint64),
        ("rules_checked_ns", ctypes.c_uint64),
        ("reconciled_ns", ctypes.c_uint64),
        ("bridges", ctypes.c_uint64),
        ("bridges_failed", ctypes.c_uint64),
        ("reloads_ok", ctypes.c_uint64),
        ("reloads_failed", ctypes.c_uint64),
        ("reload_started_ns", ctypes.c_uint64),
        ("reload_finished_ns", ctypes.c_uint64),
        ("reload_generation", ctypes.c_uint64),
        ("reload_result", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("reload_message", ctypes.c_char * 512),
    ]


# created by the daemon with bpf(2), not by bcc: no BPF program uses it
DAEMON_SPEC = MapSpec("xdpbr_daemon", "array", U32, DaemonRecord, 1)
