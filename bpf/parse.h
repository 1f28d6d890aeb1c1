/* Frame parsing shared by the XDP and TC programs: Ethernet, VLAN tag, and the test for a
 * TCP/UDP checksum that an offload still has to complete. */
#ifndef XDPBR_PARSE_H
#define XDPBR_PARSE_H

#define ETH_P_8021Q_BE 0x0081  /* htons(0x8100) */
#define ETH_P_8021AD_BE 0xA888 /* htons(0x88a8) */
#define ETH_P_IP_BE 0x0008
#define ETH_P_IPV6_BE 0xDD86
#define XDPBR_ETH_HLEN 14
#define XDPBR_VLAN_HLEN 4

/* What the decision needs to know about one frame, filled by each attach point. */
struct frame {
	void *data;
	void *data_end;
	__u32 len;      /* bytes counted in stats */
	__u32 ifindex;  /* ingress port */
	__u16 vid;      /* classified VLAN (0 without vlan_filtering) */
	__u16 tag_vid;  /* VLAN id of the tag the frame arrived with */
	__u8 tagged;    /* arrived with an 802.1Q tag (in data for XDP, in skb metadata for TC) */
	__u8 attach;    /* XDPBR_ATTACH_* */
	__u16 l3_proto; /* EtherType after any tag, network order */
	__u32 l3_off;   /* offset of the L3 header from data */
};

struct vlan_hdr_raw {
	__be16 tci;
	__be16 proto;
};

/* Parse the Ethernet header and at most one 802.1Q tag. Returns 0 or a PASS_* reason. */
static __always_inline int parse_ethernet(struct frame *f)
{
	struct ethhdr *eth = f->data;
	if ((void *)(eth + 1) > f->data_end)
		return PASS_MALFORMED;
	f->l3_proto = eth->h_proto;
	f->l3_off = XDPBR_ETH_HLEN;
	if (f->l3_proto == ETH_P_8021AD_BE)
		return PASS_VLAN_UNSUPPORTED; /* QinQ: not modelled */
	if (f->l3_proto == ETH_P_8021Q_BE) {
		struct vlan_hdr_raw *vh = (void *)(eth + 1);
		if ((void *)(vh + 1) > f->data_end)
			return PASS_MALFORMED;
		if (f->tagged)
			return PASS_VLAN_UNSUPPORTED; /* second tag behind an offloaded one */
		f->tagged = 1;
		f->tag_vid = bpf_ntohs(vh->tci) & 0x0fff;
		f->l3_proto = vh->proto;
		f->l3_off += XDPBR_VLAN_HLEN;
		if (f->l3_proto == ETH_P_8021Q_BE || f->l3_proto == ETH_P_8021AD_BE)
			return PASS_VLAN_UNSUPPORTED; /* stacked tags */
	}
	return 0;
}

static __always_inline __u16 csum_fold_raw(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The pseudo-header sum and the checksum field of an IPv4 TCP/UDP packet at `ip`.
 * Returns 1 pending (or not parseable), 0 complete, -1 to compare *field with the sum. */
static __always_inline int ipv4_l4(struct iphdr *ip, void *data_end, __u64 *sum, __u16 **field)
{
	if ((void *)(ip + 1) > data_end)
		return 1;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0; /* later fragment: no L4 header */
	__u32 ihl = (ip->ihl & 0xf) * 4;
	__u32 l4len = bpf_ntohs(ip->tot_len);
	if (ihl < sizeof(*ip) || l4len < ihl)
		return 1;
	l4len -= ihl;
	__u8 proto = ip->protocol;
	/* ihl 5 is nearly every packet: a constant offset is cheaper than a variable one */
	void *l4 = ihl == sizeof(*ip) ? (void *)(ip + 1) : (void *)ip + ihl;
	if (proto == IPPROTO_TCP)
		*field = l4 + 16;
	else if (proto == IPPROTO_UDP)
		*field = l4 + 6;
	else
		return 0; /* ICMP and the rest are checksummed by their senders */
	if ((void *)(*field + 1) > data_end)
		return 1;
	if (proto == IPPROTO_UDP && **field == 0)
		return 0; /* IPv4 UDP without checksum */
	__u16 *addr = (__u16 *)&ip->saddr;
	*sum = addr[0] + addr[1] + addr[2] + addr[3] + bpf_htons((__u16)proto) + bpf_htons((__u16)l4len);
	return -1;
}

static __always_inline int ipv6_l4(struct ipv6hdr *ip6, void *data_end, __u64 *sum, __u16 **field)
{
	if ((void *)(ip6 + 1) > data_end)
		return 1;
	__u8 proto = ip6->nexthdr;
	__u32 l4len = bpf_ntohs(ip6->payload_len);
	void *l4 = (void *)(ip6 + 1);
	if (proto == IPPROTO_TCP)
		*field = l4 + 16;
	else if (proto == IPPROTO_UDP)
		*field = l4 + 6;
	else if (proto == IPPROTO_ICMPV6)
		return 0;
	else
		return 1; /* extension headers: not walked, so not known to be complete */
	if ((void *)(*field + 1) > data_end)
		return 1;
	__u16 *addr = (__u16 *)&ip6->saddr;
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		s += addr[i];
	*sum = s + bpf_htons((__u16)proto) + bpf_htons((__u16)l4len);
	return -1;
}

/* Does this IPv4/IPv6 TCP or UDP frame carry a checksum an offload has not finished yet?
 * With CHECKSUM_PARTIAL (veth tx-checksumming, virtio NEEDS_CSUM) the checksum field holds the
 * folded pseudo-header sum. XDP turns the frame into an xdp_frame and the checksum is never
 * completed, so the receiver drops it (docs/kernel-notes.md, "Checksums"). Sums are of raw
 * 16-bit loads: one's complement addition is byte-order independent as long as every term is in
 * network order.
 * Returns 1 pending (or not parseable: let the kernel handle it), 0 complete. */
static __always_inline int l4_checksum_pending(struct frame *f)
{
	void *data = f->data, *data_end = f->data_end;
	/* the L3 header is at 14 or, behind a tag in the data, 18: constant offsets each */
	void *l3 = f->l3_off == XDPBR_ETH_HLEN ? data + XDPBR_ETH_HLEN : data + XDPBR_ETH_HLEN + XDPBR_VLAN_HLEN;
	__u64 sum = 0;
	__u16 *field = NULL;
	int r;

	if (f->l3_proto == ETH_P_IP_BE)
		r = ipv4_l4(l3, data_end, &sum, &field);
	else if (f->l3_proto == ETH_P_IPV6_BE)
		r = ipv6_l4(l3, data_end, &sum, &field);
	else
		return 0;
	if (r >= 0)
		return r;
	return *field == csum_fold_raw(sum);
}

#endif
