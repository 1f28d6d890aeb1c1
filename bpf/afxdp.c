/* The XDP program on the VMM side of an AF_XDP endpoint (a veth): every frame goes to the
 * AF_XDP socket of its rx queue in xdpbr_xsks; with no socket there, the kernel stack gets it.
 * xdpbr_xsk_stats counts per CPU: [0] frames handed to a socket, [1] frames that found none
 * (delivery failures after the redirect show on the xdp:xdp_redirect_err tracepoint). */
#include <uapi/linux/bpf.h>
#include "xdpbr_aux.h"

BPF_XSKMAP(xdpbr_xsks, 64);
BPF_PERCPU_ARRAY(xdpbr_xsk_stats, struct xdpbr_xsk_counter, 2);

int xsk_redirect(struct xdp_md *ctx)
{
	int verdict = xdpbr_xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
	__u32 idx = verdict == XDP_REDIRECT ? 0 : 1;
	struct xdpbr_xsk_counter *c = xdpbr_xsk_stats.lookup(&idx);
	if (c) {
		c->packets++;
		c->bytes += ctx->data_end - ctx->data;
	}
	return verdict;
}
