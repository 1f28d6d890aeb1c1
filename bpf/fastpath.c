/* xdpbr fast path: forward known unicast port to port, pass everything else to the bridge.
 *
 * One decision (decide(), in the order of DESIGN.md) compiled into two attach points that share
 * the pinned maps: an XDP program (highest frame rate) and a TC ingress program (keeps the skb,
 * so GSO super-frames and CHECKSUM_PARTIAL survive the redirect). Every return goes through
 * one counted exit, so an operator can always see why a frame took the slow path.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>

#include "xdpbr_maps.h"
#include "parse.h"

/* Map accessors for the headers below. bcc rewrites map.method() calls only in this, the main
 * file; in an included header the call stays an indirect call the verifier rejects. */
static __always_inline struct xdpbr_fdb_entry *fdb_get(struct xdpbr_fdb_key *key)
{
	return xdpbr_fdb.lookup(key);
}

static __always_inline void fdb_forget(struct xdpbr_fdb_key *key)
{
	xdpbr_fdb.delete(key);
	/* cached decisions may send frames to the forgotten MAC's old port */
	__u32 gen = XDPBR_GEN_FASTPATH;
	__u32 *count = xdpbr_generation.lookup(&gen);
	if (count)
		__sync_fetch_and_add(count, 1);
}

/* The ingress port's slot, 0 if none. Two separate lookups: a lookup whose map is chosen at run
 * time is not inlined by the verifier, which cost more than the hash fallback saves. */
static __always_inline __u32 port_slot(__u32 ifindex)
{
	__u32 *slot;
	if (ifindex < XDPBR_DIRECT_IFINDEX) {
		slot = xdpbr_port_direct.lookup(&ifindex);
		return slot ? *slot : 0;
	}
	slot = xdpbr_port_index.lookup(&ifindex);
	return slot ? *slot : 0;
}

static __always_inline __u32 generation(__u32 which)
{
	__u32 *count = xdpbr_generation.lookup(&which);
	return count ? *count : 0;
}

static __always_inline struct xdpbr_flow *flow_entry(__u32 index)
{
	return xdpbr_flow_cache.lookup(&index);
}

static __always_inline __u8 *vlan_get(struct xdpbr_vlan_key *key)
{
	return xdpbr_vlans.lookup(key);
}

#include "fdb.h"
#include "flow.h"
#include "vlan.h"
#include "egress.h"

/* Slot 0 counts frames of interfaces that are not (or no longer) known ports. */
#define XDPBR_NO_SLOT 0

struct decision {
	__u32 in_slot;
	__u32 out_slot;
	__u32 out_mtu;
	__u32 egress_ifindex;
	__u8 out_flags;
	int retag;
};

/* Per-CPU slots: each CPU owns its counter, so plain increments need no atomics. */
static __always_inline void count(__u32 slot, __u32 attach, __u32 reason, __u32 bytes)
{
	__u32 idx = (slot * XDPBR_NR_ATTACH + attach) * XDPBR_NR_REASONS + reason;
	struct xdpbr_counter *c = xdpbr_stats.lookup(&idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* DESIGN.md steps 1-6, common to both attach points. Returns FORWARD or a PASS_* reason. */
static __always_inline int decide(struct frame *f, struct decision *d)
{
	__u32 zero = 0;
	__u32 slot = port_slot(f->ifindex);
	if (!slot)
		return PASS_PORT_NOT_ACCELERATED;
	d->in_slot = slot;
	struct xdpbr_port *in = xdpbr_ports.lookup(&slot);
	if (!in || in->ifindex != f->ifindex)
		return PASS_PORT_NOT_ACCELERATED;

	int r = parse_ethernet(f);
	if (r)
		return r;

	/* Without a control plane nobody mirrors port, VLAN or FDB changes: after the grace
	 * period everything goes to the bridge, which always has the truth. */
	struct xdpbr_bridge *br = xdpbr_bridge.lookup(&zero);
	__u64 *heartbeat = xdpbr_clock.lookup(&zero); /* XDPBR_CLOCK_HEARTBEAT */
	if (!br || !heartbeat)
		return PASS_STALE_MIRROR;
	__u64 now = bpf_jiffies64();
	if (now - *heartbeat > br->grace_jiffies)
		return PASS_STALE_MIRROR;
	if (br->flags & XDPBR_BRIDGE_NETFILTER_BLOCK)
		return PASS_NETFILTER;
	if (in->mode == XDPBR_MODE_BRIDGE)
		return PASS_PORT_NOT_ACCELERATED;
	if (in->flags & XDPBR_PORT_TC_INGRESS)
		return PASS_TC_INGRESS;
	if (!(in->flags & XDPBR_PORT_FORWARDING))
		return PASS_PORT_STATE;

	r = vlan_classify_ingress(f, br, in);
	if (r)
		return r;

	struct ethhdr *eth = f->data;
	if ((void *)(eth + 1) > f->data_end)
		return PASS_MALFORMED;
	__u32 out_slot = 0;
	r = fdb_decide(f, eth, br, now, &d->egress_ifindex, &out_slot);
	if (r)
		return r;

	struct xdpbr_port *out = xdpbr_ports.lookup(&out_slot);
	if (!out_slot || !out || out->ifindex != d->egress_ifindex)
		return PASS_EGRESS_NOT_ACCELERATED;
	r = egress_allowed(f, in, out, d->egress_ifindex);
	if (r)
		return r;
	r = vlan_check_egress(f, br, d->egress_ifindex, &d->retag);
	if (r)
		return r;
	d->out_slot = out_slot;
	d->out_mtu = out->mtu;
	d->out_flags = out->flags;
	return FORWARD;
}

static __always_inline void record_egress(__u32 ifindex)
{
#ifdef XDPBR_TEST
	__u32 zero = 0;
	xdpbr_test_egress.update(&zero, &ifindex);
#endif
}

/* The one counted exit of the XDP program. */
static __always_inline int xdp_done(struct frame *f, struct decision *d, int reason, int action)
{
	count(d->in_slot, XDPBR_ATTACH_XDP, reason, f->len);
	return action;
}

int xdpbr_xdp(struct xdp_md *ctx)
{
	struct frame f = {
		.data = (void *)(long)ctx->data,
		.data_end = (void *)(long)ctx->data_end,
		.ifindex = ctx->ingress_ifindex,
		.attach = XDPBR_ATTACH_XDP,
	};
	struct decision d = {};
	f.len = f.data_end - f.data;

	int r = decide(&f, &d);
	if (r != FORWARD)
		return xdp_done(&f, &d, r, XDP_PASS);
	/* DESIGN step 7: what this attach point cannot deliver as-is goes on to TC or the bridge. */
	if (d.retag)
		return xdp_done(&f, &d, PASS_VLAN_TAG_CHANGE, XDP_PASS);
	if (!(d.out_flags & XDPBR_PORT_XDP_EGRESS))
		return xdp_done(&f, &d, PASS_EGRESS_NO_XDP, XDP_PASS);
	/* The devmap's MTU check drops longer frames silently, GSO frames from a TAP among them
	 * (docs/kernel-notes.md, "GSO frames and the MTU"). */
	if (f.len > d.out_mtu + XDPBR_ETH_HLEN + (f.tagged ? XDPBR_VLAN_HLEN : 0))
		return xdp_done(&f, &d, PASS_TOO_LONG, XDP_PASS);
	if (l4_checksum_pending(&f))
		return xdp_done(&f, &d, PASS_CHECKSUM_PARTIAL, XDP_PASS);

	/* XDP_PASS as the fallback: an empty slot passes instead of dropping. */
	int action = xdpbr_devmap.redirect_map(d.out_slot, XDP_PASS);
	if (action != XDP_REDIRECT)
		return xdp_done(&f, &d, PASS_REDIRECT_MISS, XDP_PASS);
	record_egress(d.egress_ifindex);
	return xdp_done(&f, &d, FORWARD, action);
}

/* The one counted exit of the TC program. What it does not redirect it hands on with
 * TC_ACT_UNSPEC (TCX_NEXT), never TC_ACT_OK: under TCX, OK would end tc ingress and skip the
 * programs and the qdisc filters that come after xdpbr's (another tool's policing). */
static __always_inline int tc_done(struct frame *f, struct decision *d, int reason, int action)
{
	count(d->in_slot, XDPBR_ATTACH_TC, reason, f->len);
	return action;
}

#define XDPBR_TC_PULL_LEN 128 /* Ethernet + VLAN + IPv6 + TCP, so headers are linear */

int xdpbr_tc(struct __sk_buff *skb)
{
	/* Headers of skbs built from pages (TAP, GRO) may not be in the linear area yet. */
	if (skb->data_end - skb->data < XDPBR_TC_PULL_LEN)
		bpf_skb_pull_data(skb, skb->len < XDPBR_TC_PULL_LEN ? skb->len : XDPBR_TC_PULL_LEN);

	struct frame f = {
		.data = (void *)(long)skb->data,
		.data_end = (void *)(long)skb->data_end,
		.len = skb->len,
		.ifindex = skb->ifindex,
		.attach = XDPBR_ATTACH_TC,
	};
	struct decision d = {};
	/* The stack moved an outer tag into skb metadata before TC ingress. */
	if (skb->vlan_present) {
		if (skb->vlan_proto != ETH_P_8021Q_BE)
			return tc_done(&f, &d, PASS_VLAN_UNSUPPORTED, TC_ACT_UNSPEC);
		f.tagged = 1;
		f.tag_vid = skb->vlan_tci & 0x0fff;
	}

	int r = decide(&f, &d);
	if (r != FORWARD)
		return tc_done(&f, &d, r, TC_ACT_UNSPEC);
	if (skb->gso_size == 0 && skb->len > d.out_mtu + XDPBR_ETH_HLEN)
		return tc_done(&f, &d, PASS_TOO_LONG, TC_ACT_UNSPEC); /* is_skb_forwardable would drop */
	if (d.retag) {
		/* The tag lives in skb metadata here, so br_handle_vlan's push/pop is cheap. */
		long err = f.tagged ? bpf_skb_vlan_pop(skb)
				    : bpf_skb_vlan_push(skb, ETH_P_8021Q_BE, f.vid);
		if (err)
			return tc_done(&f, &d, PASS_VLAN_TAG_CHANGE, TC_ACT_UNSPEC);
	}
	record_egress(d.egress_ifindex);
	if (d.out_flags & XDPBR_PORT_PEER_REDIRECT)
		return tc_done(&f, &d, FORWARD, bpf_redirect_peer(d.egress_ifindex, 0));
	return tc_done(&f, &d, FORWARD, bpf_redirect(d.egress_ifindex, 0));
}

/* The control plane's clock (see xdpbr_clock in xdpbr_maps.h), run through BPF_PROG_TEST_RUN:
 * the first byte of the test frame says which element gets the kernel's jiffies. */
int xdpbr_tick(struct xdp_md *ctx)
{
	__u8 *which = (void *)(long)ctx->data;
	if ((void *)(which + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__u32 key = *which ? XDPBR_CLOCK_NOW : XDPBR_CLOCK_HEARTBEAT;
	__u64 now = bpf_jiffies64();
	xdpbr_clock.update(&key, &now);
	return XDP_PASS;
}
