/* Why the fast path made its decision: one counter per (port, attach point, reason).
 *
 * These numbers are an ABI: pinned stats maps, Prometheus labels and dashboards depend on
 * them. Append new reasons before XDPBR_NR_REASONS_USED, keep retired ones as REASON_UNUSED_n,
 * never renumber. loader/layouts.py mirrors this list; tests/test_layouts.py checks it.
 */
#ifndef XDPBR_REASONS_H
#define XDPBR_REASONS_H

enum xdpbr_reason {
	/* Redirected port to port: the fast path carried the frame. */
	FORWARD = 0,
	/* Headers cut short or inconsistent: the kernel decides, we never drop. */
	PASS_MALFORMED = 1,
	/* No daemon heartbeat within the grace period: nobody mirrors bridge changes. */
	PASS_STALE_MIRROR = 2,
	/* Ingress port is unknown to the fast path or runs in bridge mode. */
	PASS_PORT_NOT_ACCELERATED = 3,
	/* Ingress port is not forwarding (STP blocking/learning, disabled): the bridge decides. */
	PASS_PORT_STATE = 4,
	/* A VLAN layout we do not model (QinQ, priority tag, stacked tags). */
	PASS_VLAN_UNSUPPORTED = 5,
	/* Ingress or egress is not a member of the frame's VLAN, or no PVID for untagged frames. */
	PASS_VLAN_MISMATCH = 6,
	/* Source MAC not in the mirror: the bridge must see it to learn it. */
	PASS_UNKNOWN_SOURCE = 7,
	/* Source MAC is mirrored on another port (a move, or a loop): the bridge relearns it. */
	PASS_SOURCE_MOVED = 8,
	/* Broadcast: the bridge floods it. */
	PASS_BROADCAST = 9,
	/* Multicast: the bridge floods it or applies snooping. */
	PASS_MULTICAST = 10,
	/* Destination is the bridge itself or a local port address: the host stack takes it. */
	PASS_LOCAL_DESTINATION = 11,
	/* Destination not in the mirror: the bridge floods it. */
	PASS_UNKNOWN_DESTINATION = 12,
	/* Destination port is not accelerated (bridge mode, not a known port). */
	PASS_EGRESS_NOT_ACCELERATED = 13,
	/* Destination port is not forwarding (should_deliver: egress state). */
	PASS_EGRESS_STATE = 14,
	/* Both ports isolated (should_deliver: br_skb_isolated). */
	PASS_ISOLATED = 15,
	/* Destination is the ingress port and hairpin mode is off. */
	PASS_HAIRPIN = 16,
	/* Egress wants a tag pushed or popped; this attach point does not rewrite tags. */
	PASS_VLAN_TAG_CHANGE = 17,
	/* Longer than the egress can take here (GSO super-frame, MTU). */
	PASS_TOO_LONG = 18,
	/* TCP/UDP checksum field holds the pseudo-header sum: offload still pending. */
	PASS_CHECKSUM_PARTIAL = 19,
	/* Egress cannot receive XDP redirects (no ndo_xdp_xmit, veth peer without NAPI). */
	PASS_EGRESS_NO_XDP = 20,
	/* The redirect map had no entry for the egress slot. */
	PASS_REDIRECT_MISS = 21,
	/* Netfilter rules could see this bridge's frames and bypass was not chosen. */
	PASS_NETFILTER = 22,
	/* The source MAC did not fit in the mirror (fixed capacity). */
	PASS_FDB_FULL = 23,
	/* The ingress port carries tc ingress policy of another tool (policing, an IFB redirect,
	 * filters, TCX programs): its frames must meet that policy first, in the bridge's path. */
	PASS_TC_INGRESS = 24,
	XDPBR_NR_REASONS_USED,
};

/* Room in the stats layout, so appending a reason keeps the map layout. */
#define XDPBR_NR_REASONS 32

/* Attach points: index into the stats map. */
#define XDPBR_ATTACH_XDP 0
#define XDPBR_ATTACH_TC 1
#define XDPBR_NR_ATTACH 2

#endif
