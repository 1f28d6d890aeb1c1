/* FDB mirror lookups. The kernel bridge is the only learner: the fast path never adds an
 * entry, it only drops one on a MAC move (so nothing is sent to the old port) and stamps the
 * source's last use so the daemon can keep the kernel's aging true (NTF_USE). */
#ifndef XDPBR_FDB_H
#define XDPBR_FDB_H

static __always_inline int is_multicast(const __u8 *mac)
{
	return mac[0] & 1;
}

static __always_inline int is_broadcast(const __u8 *mac)
{
	return (mac[0] & mac[1] & mac[2] & mac[3] & mac[4] & mac[5]) == 0xff;
}

/* The source must be mirrored on the ingress port, else the bridge has to learn it. */
/* `step` is a second in jiffies: the source entry is stamped at most once a second. */
static __always_inline int fdb_check_source(struct frame *f, struct ethhdr *eth, __u64 now, __u64 step)
{
	struct xdpbr_fdb_key key = {.vid = f->vid};
	__builtin_memcpy(key.mac, eth->h_source, 6);
	if (is_multicast(key.mac))
		return PASS_MALFORMED; /* a multicast source is invalid: the bridge drops it */
	struct xdpbr_fdb_entry *e = fdb_get(&key);
	if (!e)
		return PASS_UNKNOWN_SOURCE;
	if (e->ifindex != f->ifindex || (e->flags & XDPBR_FDB_LOCAL)) {
		/* A move: forget the old port now, so frames to this MAC stop going there; the
		 * bridge relearns it and the daemon mirrors the new port. Static entries never
		 * move in the bridge, so they stay. */
		if (!(e->flags & (XDPBR_FDB_STATIC | XDPBR_FDB_LOCAL)))
			fdb_forget(&key);
		return PASS_SOURCE_MOVED;
	}
	if (now - e->last_seen > step)
		e->last_seen = now;
	return 0;
}

/* Find the egress port of a unicast destination. */
static __always_inline int fdb_lookup_destination(struct frame *f, struct ethhdr *eth,
						  struct xdpbr_bridge *br, __u32 *egress_ifindex,
						  __u32 *egress_slot)
{
	if (is_broadcast(eth->h_dest))
		return PASS_BROADCAST;
	if (is_multicast(eth->h_dest))
		return PASS_MULTICAST;
	struct xdpbr_fdb_key key = {.vid = f->vid};
	__builtin_memcpy(key.mac, eth->h_dest, 6);
	struct xdpbr_fdb_entry *e = fdb_get(&key);
	if (!e)
		return PASS_UNKNOWN_DESTINATION;
	if ((e->flags & XDPBR_FDB_LOCAL) || e->ifindex == br->ifindex)
		return PASS_LOCAL_DESTINATION;
	*egress_ifindex = e->ifindex;
	*egress_slot = e->slot;
	return 0;
}

#endif
