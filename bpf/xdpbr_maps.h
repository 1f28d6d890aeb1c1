/* Every map and map struct of the fast path, defined once.
 *
 * loader/layouts.py mirrors each struct as a ctypes.Structure and tests/test_layouts.py checks
 * sizes and offsets against the compiled program, so a change here that Python does not follow
 * fails the tests instead of corrupting a pinned map.
 *
 * The loader compiles this once per bridge with -DXDPBR_PIN_DIR="\"/sys/fs/bpf/xdpbr/<bridge>\""
 * so every map is pinned there and shared by the XDP and TC programs of all ports.
 */
#ifndef XDPBR_MAPS_H
#define XDPBR_MAPS_H

#include "xdpbr_reasons.h"
#include "xdpbr_aux.h"

#ifndef XDPBR_PIN_DIR
#error "XDPBR_PIN_DIR must name the bridge's bpffs directory"
#endif
/* Port slots: DEVMAP index and stats row. */
#ifndef XDPBR_MAX_PORTS
#define XDPBR_MAX_PORTS 1024
#endif
/* FDB mirror capacity: a plain hash, never LRU, so a MAC flood cannot evict other ports. */
#ifndef XDPBR_FDB_SIZE
#define XDPBR_FDB_SIZE 16384
#endif
/* Ingress ifindexes below this find their slot in an ARRAY (inlined, no hash); larger ones
 * (a namespace that created this many devices) fall back to the hash xdpbr_port_index. */
#ifndef XDPBR_DIRECT_IFINDEX
#define XDPBR_DIRECT_IFINDEX 65536
#endif
/* Per-CPU flow cache entries (a power of two, at most 65,536: see flow_index). 4,096 (192 KB a
 * CPU): with 256, one port sending to 1,024 destinations behind one port ran at a median 0.6 x
 * its one-destination rate (0.47-0.95 in six pairs), nearly every frame a miss and two FDB hash
 * lookups; with 4,096 at 1.0 x (0.92-1.3 in five) (bench/scale.py's layouts, 2026-12-06). */
#ifndef XDPBR_FLOW_CACHE_SIZE
#define XDPBR_FLOW_CACHE_SIZE 4096
#endif
#ifndef XDPBR_VLAN_SIZE
#define XDPBR_VLAN_SIZE 16384
#endif

/* Bump when any struct below changes; pinned maps of another version are not reused. */
#define XDPBR_LAYOUT_VERSION 1

/* struct xdpbr_port.mode */
#define XDPBR_MODE_BRIDGE 0
#define XDPBR_MODE_XDP 1
#define XDPBR_MODE_TC 2
#define XDPBR_MODE_XDP_TC 3

/* struct xdpbr_port.flags: copied from the bridge port (IFLA_BRPORT_*) and from probes. */
#define XDPBR_PORT_FORWARDING (1 << 0) /* STP state is forwarding */
#define XDPBR_PORT_ISOLATED (1 << 1)
#define XDPBR_PORT_HAIRPIN (1 << 2)
#define XDPBR_PORT_XDP_EGRESS (1 << 3) /* may be an XDP redirect target (ndo_xdp_xmit, peer NAPI) */
/* A veth whose peer is in another namespace and whose egress has no qdisc or filter to honour:
 * TC may deliver straight to the peer's ingress (bpf_redirect_peer), skipping a backlog pass. */
#define XDPBR_PORT_PEER_REDIRECT (1 << 4)
/* Another tool's tc ingress policy is on the port: nothing from it is forwarded by xdpbr (a
 * port-entry write, so programs stay attached and the policy can come and go). */
#define XDPBR_PORT_TC_INGRESS (1 << 5)

/* Ingress and egress configuration of one bridge port, indexed by its slot (an ARRAY: the
 * verifier inlines the lookup, so the egress check costs no hash lookup). Slot 0 is never a
 * port. Written by the control plane (attach, daemon); read by the fast path. */
struct xdpbr_port {
	__u32 ifindex;     /* 0: the slot is free */
	__u32 mtu;         /* egress MTU, without the Ethernet header */
	__u16 pvid;        /* untagged ingress VLAN when vlan_filtering; 0 = none */
	__u8 mode;         /* XDPBR_MODE_*: what runs on this port */
	__u8 flags;        /* XDPBR_PORT_* */
	__u8 mode_reason;  /* control plane only: why this mode (loader/layouts.py MODE_REASONS) */
	__u8 xdp_attach;   /* control plane only: 0 none, 1 native, 2 generic */
	__u8 peer_gro_set; /* control plane only: xdpbr switched the veth peer's GRO on */
	__u8 owned;        /* control plane only: what xdpbr created here, how TC is attached */
};

/* Bridge VLAN membership, keyed by (port ifindex, vid); value XDPBR_VLAN_* flags. */
#define XDPBR_VLAN_UNTAGGED (1 << 0)
struct xdpbr_vlan_key {
	__u32 ifindex;
	__u16 vid;
	__u16 pad;
};

/* FDB mirror key: what the bridge keys its FDB by. vid is 0 without vlan_filtering. */
struct xdpbr_fdb_key {
	__u8 mac[6];
	__u16 vid;
};

#define XDPBR_FDB_LOCAL (1 << 0)  /* to the host (bridge or port address): never forwarded */
#define XDPBR_FDB_STATIC (1 << 1) /* static/permanent: the bridge never moves it */
/* FDB mirror value. Written by the control plane from the kernel FDB (with the port's slot,
 * so the egress needs no second hash lookup); the fast path only stamps last_seen (at most
 * once a second) so the daemon can refresh kernel aging. */
struct xdpbr_fdb_entry {
	__u32 ifindex;
	__u16 flags;        /* XDPBR_FDB_* */
	__u16 slot;         /* the port's slot, 0 if it has none (yet) */
	__u64 last_seen;    /* jiffies of the last fast-path frame from this MAC */
};

/* Bridge-wide state, one entry. */
#define XDPBR_BRIDGE_NETFILTER_BLOCK (1 << 0) /* netfilter could see frames: pass everything */
#define XDPBR_BRIDGE_FDB_FULL (1 << 1)        /* the mirror refused entries: misses may be those */
struct xdpbr_bridge {
	__u64 hz;            /* jiffies per second of the running kernel, measured at attach */
	__u64 grace_jiffies; /* fast path runs this long after the last heartbeat */
	__u32 ifindex;
	__u8 mac[6];
	__u8 vlan_filtering;
	__u8 flags;         /* XDPBR_BRIDGE_* */
};

/* The fast path's clock is jiffies (bpf_jiffies64() is a plain load; the precise clock cost ~8%
 * of the frame rate). Userspace cannot read jiffies, so the control plane runs xdpbr_tick with
 * BPF_PROG_TEST_RUN: it stores the kernel's jiffies at XDPBR_CLOCK_HEARTBEAT (the heartbeat)
 * or at XDPBR_CLOCK_NOW (for readers computing ages). Only xdpbr_tick writes this map. */
#define XDPBR_CLOCK_HEARTBEAT 0
#define XDPBR_CLOCK_NOW 1

/* Control-plane record of how the bridge was attached; never read by the fast path. */
struct xdpbr_meta {
	__u32 layout_version; /* XDPBR_LAYOUT_VERSION of the programs that created the pins */
	__u8 mode;            /* requested default mode: 0 auto, else XDPBR_MODE_* + 1 */
	__u8 xdp_mode;        /* requested: 0 any (native, generic fallback), 1 native, 2 generic */
	__u8 netfilter;       /* 0 respect, 1 bypass */
	__u8 netfilter_counters; /* 0 ignore, 1 hold: a rule that only counts holds what it sees */
	char netns[64];       /* network namespace name ("" = the namespace of the attach) */
};

/* Control-plane counters for metrics, in bpffs so `xdpbr metrics` and a restarted daemon see
 * them. Element XDPBR_CONTROL_ATTACH is written by `xdpbr attach`, XDPBR_CONTROL_DAEMON by the
 * daemon: one writer each. Never read by the fast path. */
#define XDPBR_CONTROL_ATTACH 0
#define XDPBR_CONTROL_DAEMON 1
struct xdpbr_control {
	__u64 compile_ns;      /* attach: the last compile */
	__u64 attach_ns;       /* attach: the last attach, compile included */
	__u64 fdb_events;      /* daemon: FDB events applied to the mirror */
	__u64 sync_lag_ns_sum; /* daemon: netlink event received -> mirror written, summed */
	__u64 resyncs;         /* daemon: full dump-and-diff resyncs */
	__u64 errors;          /* daemon: failed resyncs, reconciles and refreshes */
};

/* The daemon's own record, one per instance and not per bridge: an ARRAY of one element that
 * `xdpbr daemon` creates with bpf(2) and pins as <instance root>/xdpbr_daemon (beside the bridges'
 * directories: a file, never taken for a bridge). No BPF program uses it, and it is not in
 * xdpbr_control, whose layout stays. Read by `show -j`, the metrics and `xdpbr daemon --reload`.
 * One writer (the running daemon, once a loop turn). Times are CLOCK_MONOTONIC ns, like the
 * heartbeat (time.monotonic_ns() in Python); 0 = never. Counters continue across restarts. */
#define XDPBR_RELOAD_NONE 0
#define XDPBR_RELOAD_OK 1
#define XDPBR_RELOAD_FAILED 2
struct xdpbr_daemon {
	__u64 pid;               /* the running daemon; 0 once it stopped */
	__u64 pid_start;         /* its start in /proc/PID/stat (clock ticks since boot): not a reused pid */
	__u64 started_ns;        /* when it started */
	__u64 loop_generation;   /* turns of its loop (numbered from 1, counted on across restarts) */
	__u64 scanned_ns;        /* start of the last pin scan (adoption, drops, configured attaches) */
	__u64 rules_checked_ns;  /* start of the last netfilter rules check */
	__u64 reconciled_ns;     /* start of the last successful resync or reconcile of a bridge */
	__u64 bridges;           /* bridges it holds */
	__u64 bridges_failed;    /* of those, the unhealthy ones (no heartbeat) */
	__u64 reloads_ok;        /* SIGHUP reloads that applied the configuration */
	__u64 reloads_failed;    /* reloads that kept the running configuration */
	__u64 reload_started_ns; /* the last reload began (read the file) */
	__u64 reload_finished_ns;
	__u64 reload_generation; /* loop_generation of the turn that ran the last reload */
	__u32 reload_result;     /* XDPBR_RELOAD_* of the last reload */
	__u32 pad;
	char reload_message[512]; /* the last reload's outcome, one line (its error when it failed) */
};

/* Per-port mode requested by `xdpbr port set`, keyed by interface name so it survives
 * a port being re-created. Value: 0 auto, else XDPBR_MODE_* + 1. */
struct xdpbr_ifname {
	char name[16];
};

/* Generations that invalidate the flow cache. Element XDPBR_GEN_CONTROL is bumped by the
 * control plane after every change to the FDB mirror, XDPBR_GEN_FASTPATH by the fast path when
 * it forgets a moved MAC: two elements, so neither writer overwrites the other's count. */
#define XDPBR_GEN_CONTROL 0
#define XDPBR_GEN_FASTPATH 1

/* A recent forwarding decision of steps 4-5 (the source is mirrored on this port, the
 * destination lives behind out_slot), so a busy flow skips both FDB hash lookups. Valid while
 * both generations match; port state, egress checks, MTU and checksums are still checked per
 * frame. Per CPU, so entries are never torn; not pinned (a new program starts empty). */
struct xdpbr_flow {
	__u32 addrs[3];     /* destination and source MAC, as the frame carries them */
	__u32 ifindex;      /* ingress */
	__u32 egress_ifindex;
	__u32 out_slot;
	__u32 gen[2];       /* xdpbr_generation when the decision was made */
	__u64 stamped;      /* jiffies when the source's last_seen was last stamped through this entry */
};

/* Per-CPU counters, index ((slot * XDPBR_NR_ATTACH) + attach) * XDPBR_NR_REASONS + reason. */
struct xdpbr_counter {
	__u64 packets;
	__u64 bytes;
};
#define XDPBR_STATS_SIZE (XDPBR_MAX_PORTS * XDPBR_NR_ATTACH * XDPBR_NR_REASONS)

/* ifindex -> slot of the ingress port (0: not a port): an ARRAY for ifindex below
 * XDPBR_DIRECT_IFINDEX, a hash for the rest. A hash lookup per frame cost ~8% of the rate. */
BPF_TABLE_PINNED("array", __u32, __u32, xdpbr_port_direct, XDPBR_DIRECT_IFINDEX,
		 XDPBR_PIN_DIR "/xdpbr_port_direct");
BPF_TABLE_PINNED("hash", __u32, __u32, xdpbr_port_index, XDPBR_MAX_PORTS,
		 XDPBR_PIN_DIR "/xdpbr_port_index");
BPF_TABLE_PINNED("array", __u32, struct xdpbr_port, xdpbr_ports, XDPBR_MAX_PORTS,
		 XDPBR_PIN_DIR "/xdpbr_ports");
BPF_TABLE_PINNED("hash", struct xdpbr_vlan_key, __u8, xdpbr_vlans, XDPBR_VLAN_SIZE,
		 XDPBR_PIN_DIR "/xdpbr_vlans");
BPF_TABLE_PINNED("hash", struct xdpbr_fdb_key, struct xdpbr_fdb_entry, xdpbr_fdb,
		 XDPBR_FDB_SIZE, XDPBR_PIN_DIR "/xdpbr_fdb");
BPF_TABLE_PINNED("array", __u32, struct xdpbr_bridge, xdpbr_bridge, 1,
		 XDPBR_PIN_DIR "/xdpbr_bridge");
BPF_TABLE_PINNED("array", __u32, struct xdpbr_meta, xdpbr_meta, 1, XDPBR_PIN_DIR "/xdpbr_meta");
BPF_TABLE_PINNED("hash", struct xdpbr_ifname, __u8, xdpbr_port_modes, XDPBR_MAX_PORTS,
		 XDPBR_PIN_DIR "/xdpbr_port_modes");
BPF_TABLE_PINNED("array", __u32, __u32, xdpbr_generation, 2, XDPBR_PIN_DIR "/xdpbr_generation");
BPF_TABLE_PINNED("array", __u32, __u64, xdpbr_clock, 2, XDPBR_PIN_DIR "/xdpbr_clock");
BPF_TABLE_PINNED("array", __u32, struct xdpbr_control, xdpbr_control, 2, XDPBR_PIN_DIR "/xdpbr_control");
BPF_PERCPU_ARRAY(xdpbr_flow_cache, struct xdpbr_flow, XDPBR_FLOW_CACHE_SIZE);
BPF_TABLE_PINNED("percpu_array", __u32, struct xdpbr_counter, xdpbr_stats, XDPBR_STATS_SIZE,
		 XDPBR_PIN_DIR "/xdpbr_stats");
/* Egress devices for XDP redirects, indexed by slot. bcc has no pinned DEVMAP macro; the
 * "devmap:<path>" section pins it and keeps .redirect_map() (docs/kernel-notes.md, "Compiling
 * with bcc"). */
BPF_XDP_REDIRECT_MAP("devmap:" XDPBR_PIN_DIR "/xdpbr_devmap", int, xdpbr_devmap, XDPBR_MAX_PORTS);

#ifdef XDPBR_TEST
/* Tests only: PROG_TEST_RUN reports a redirect's verdict but not its target. */
BPF_ARRAY(xdpbr_test_egress, __u32, 1);
#endif

#endif
