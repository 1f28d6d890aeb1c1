/* VLAN classification as the bridge does it with vlan_filtering (br_allowed_ingress,
 * br_allowed_egress, br_handle_vlan). Only 802.1Q with one tag is modelled. */
#ifndef XDPBR_VLAN_H
#define XDPBR_VLAN_H

/* Membership flags of (port, vid), or -1 when the port is not a member. */
static __always_inline int vlan_membership(__u32 ifindex, __u16 vid)
{
	struct xdpbr_vlan_key key = {.ifindex = ifindex, .vid = vid};
	__u8 *flags = vlan_get(&key);
	return flags ? *flags : -1;
}

/* Give the frame the VLAN the bridge would: its tag, or the ingress port's PVID. */
static __always_inline int vlan_classify_ingress(struct frame *f, struct xdpbr_bridge *br,
						 struct xdpbr_port *in)
{
	if (!br->vlan_filtering) {
		f->vid = 0; /* tags are payload to a VLAN-unaware bridge */
		return 0;
	}
	if (f->tagged) {
		if (f->tag_vid == 0)
			return PASS_VLAN_UNSUPPORTED; /* priority tag: the bridge maps it to the PVID */
		f->vid = f->tag_vid;
	} else {
		if (!in->pvid)
			return PASS_VLAN_MISMATCH; /* untagged without PVID: the bridge drops it */
		f->vid = in->pvid;
	}
	if (vlan_membership(f->ifindex, f->vid) < 0)
		return PASS_VLAN_MISMATCH;
	return 0;
}

/* Egress membership; *retag is 1 when the egress wants the tag the other way round
 * (pushed for a tagged member, popped for an untagged one). */
static __always_inline int vlan_check_egress(struct frame *f, struct xdpbr_bridge *br,
					     __u32 egress_ifindex, int *retag)
{
	*retag = 0;
	if (!br->vlan_filtering)
		return 0;
	int flags = vlan_membership(egress_ifindex, f->vid);
	if (flags < 0)
		return PASS_VLAN_MISMATCH;
	int want_tagged = !(flags & XDPBR_VLAN_UNTAGGED);
	*retag = want_tagged != f->tagged;
	return 0;
}

#endif
