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

/* Does this IPv4/IPv6 TCP or UDP frame carry a checksum an offload has not finished yet?
 * With CHECKSUM_PARTIAL (veth tx-checksumming, virtio NEEDS_CSUM) the checksum field holds the
 * folded pseudo-header sum. XDP turns the frame into an xdp_frame and the checksum is never
 * completed, so the receiver drops it (KERNEL-FACTS). Sums are of raw 16-bit loads: one's
 * complement addition is byte-order independent as long as every term is in network order.
 * Returns 1 pending (or not parseable: let the kernel handle it), 0 complete. */
static __always_inline int l4_checksum_pending(struct frame *f)
{
	void *data = f->data, *data_end = f->data_end;
	__u64 sum = 0;
	__u16 *csum_field;
	__u8 proto;
	__u32 l4len;

	if (f->l3_proto == ETH_P_IP_BE) {
		struct iphdr *ip = data + (f->l3_off & 0xff);
		if ((void *)(ip + 1) > data_end)
			return 1;
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0; /* later fragment: no L4 header */
		__u32 ihl = (ip->ihl & 0xf) * 4;
		if (ihl < sizeof(*ip))
			return 1;
		l4len = bpf_ntohs(ip->tot_len);
		if (l4len < ihl)
			return 1;
		l4len -= ihl;
		proto = ip->protocol;
		__u16 *addr = (__u16 *)&ip->saddr;
		sum = addr[0] + addr[1] + addr[2] + addr[3];
		void *l4 = (void *)ip + ihl;
		if (proto == IPPROTO_TCP) {
			csum_field = l4 + 16;
		} else if (proto == IPPROTO_UDP) {
			csum_field = l4 + 6;
		} else {
			return 0; /* ICMP and the rest are checksummed by their senders */
		}
		if ((void *)(csum_field + 1) > data_end)
			return 1;
		if (proto == IPPROTO_UDP && *csum_field == 0)
			return 0; /* IPv4 UDP without checksum */
	} else if (f->l3_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6 = data + (f->l3_off & 0xff);
		if ((void *)(ip6 + 1) > data_end)
			return 1;
		proto = ip6->nexthdr;
		l4len = bpf_ntohs(ip6->payload_len);
		__u16 *addr = (__u16 *)&ip6->saddr;
#pragma unroll
		for (int i = 0; i < 16; i++)
			sum += addr[i];
		void *l4 = (void *)(ip6 + 1);
		if (proto == IPPROTO_TCP)
			csum_field = l4 + 16;
		else if (proto == IPPROTO_UDP)
			csum_field = l4 + 6;
		else if (proto == IPPROTO_ICMPV6)
			return 0;
		else
			return 1; /* extension headers: not walked, so not known to be complete */
		if ((void *)(csum_field + 1) > data_end)
			return 1;
	} else {
		return 0;
	}
	sum += bpf_htons((__u16)proto) + bpf_htons((__u16)l4len) + bpf_htons((__u16)(l4len >> 16));
	return *csum_field == csum_fold_raw(sum);
}

#endif
