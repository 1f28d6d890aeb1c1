/* Steps 4-5 (source check, destination lookup) through the per-CPU flow cache.
 *
 * A hit needs the same MACs, the same ingress port and both generations unchanged since the
 * decision was cached; the control plane bumps its generation after every FDB mirror change,
 * the fast path its own when it forgets a moved MAC. The generations are read before the FDB
 * lookups, so a decision cached from an FDB that changed meanwhile is already stale. Without
 * vlan_filtering only: VLAN classification stays on the full path.
 */
#ifndef XDPBR_FLOW_H
#define XDPBR_FLOW_H

/* Multiplicative (Fibonacci) hashing: the product's middle bits depend on every input bit, so
 * MACs that differ in a byte or two (one OUI, consecutive addresses) still spread over all the
 * slots; the XOR-fold this replaces mapped at most 256 distinct slots whatever the size. */
static __always_inline __u32 flow_index(const __u32 *addrs, __u32 ifindex)
{
	__u32 h = (addrs[0] ^ addrs[1] ^ addrs[2] ^ ifindex) * 0x9E3779B1;
	return (h >> 16) & (XDPBR_FLOW_CACHE_SIZE - 1);
}
_Static_assert(XDPBR_FLOW_CACHE_SIZE <= 65536, "flow_index takes 16 bits of the product");

/* With a full mirror a miss may be a MAC the mirror refused: say so (fdb_full), so an operator
 * sees the flood instead of a rise of unknown stations. */
static __always_inline int miss_reason(int r, struct xdpbr_bridge *br)
{
	if ((r == PASS_UNKNOWN_SOURCE || r == PASS_UNKNOWN_DESTINATION) && (br->flags & XDPBR_BRIDGE_FDB_FULL))
		return PASS_FDB_FULL;
	return r;
}

static __always_inline int fdb_decide(struct frame *f, struct ethhdr *eth, struct xdpbr_bridge *br,
				      __u64 now, __u32 *egress_ifindex, __u32 *out_slot)
{
	__u32 gen_control = generation(XDPBR_GEN_CONTROL);
	__u32 gen_fastpath = generation(XDPBR_GEN_FASTPATH);
	__u32 *addrs = (__u32 *)eth; /* 12 bytes of MACs: the verifier checked eth + 1 */
	struct xdpbr_flow *flow = NULL;
	int r;

	if (!br->vlan_filtering) {
		flow = flow_entry(flow_index(addrs, f->ifindex));
		if (flow && flow->addrs[0] == addrs[0] && flow->addrs[1] == addrs[1] &&
		    flow->addrs[2] == addrs[2] && flow->ifindex == f->ifindex &&
		    flow->gen[0] == gen_control && flow->gen[1] == gen_fastpath) {
			if (now - flow->stamped > br->hz) {
				/* the daemon's aging refresh needs a stamp now and then */
				r = fdb_check_source(f, eth, now, br->hz);
				if (r)
					return r;
				flow->stamped = now;
			}
			*egress_ifindex = flow->egress_ifindex;
			*out_slot = flow->out_slot;
			return 0;
		}
	}
	r = fdb_check_source(f, eth, now, br->hz);
	if (r)
		return miss_reason(r, br);
	r = fdb_lookup_destination(f, eth, br, egress_ifindex, out_slot);
	if (r)
		return miss_reason(r, br);
	if (flow) {
		flow->addrs[0] = addrs[0];
		flow->addrs[1] = addrs[1];
		flow->addrs[2] = addrs[2];
		flow->ifindex = f->ifindex;
		flow->egress_ifindex = *egress_ifindex;
		flow->out_slot = *out_slot;
		flow->gen[0] = gen_control;
		flow->gen[1] = gen_fastpath;
		flow->stamped = now;
	}
	return 0;
}

#endif
