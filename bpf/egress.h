/* The checks the bridge makes before it delivers to a port (br_forward.c should_deliver). */
#ifndef XDPBR_EGRESS_H
#define XDPBR_EGRESS_H

static __always_inline int egress_allowed(struct frame *f, struct xdpbr_port *in,
					  struct xdpbr_port *out, __u32 egress_ifindex)
{
	if (out->mode == XDPBR_MODE_BRIDGE)
		return PASS_EGRESS_NOT_ACCELERATED;
	if (!(out->flags & XDPBR_PORT_FORWARDING))
		return PASS_EGRESS_STATE;
	if (egress_ifindex == f->ifindex && !(out->flags & XDPBR_PORT_HAIRPIN))
		return PASS_HAIRPIN; /* the bridge never sends a frame back where it came from */
	if ((in->flags & XDPBR_PORT_ISOLATED) && (out->flags & XDPBR_PORT_ISOLATED))
		return PASS_ISOLATED;
	return 0;
}

#endif
