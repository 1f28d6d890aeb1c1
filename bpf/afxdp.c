/* The XDP program on the VMM side of an AF_XDP endpoint (a veth): every frame goes to the
 * AF_XDP socket of its rx queue in xdpbr_xsks; with no socket there, the kernel stack gets it. */
#include <uapi/linux/bpf.h>

BPF_XSKMAP(xdpbr_xsks, 64);

int xsk_redirect(struct xdp_md *ctx)
{
	return xdpbr_xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
}
