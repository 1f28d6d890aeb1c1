/* Benchmark helpers, not part of the fast path.
 *
 * gen_tx:    a live-frames traffic generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES
 *            and ctx.ingress_ifindex = a veth sends the test frame out of that veth, `repeat`
 *            times per call (what xdp-trafficgen does).
 * sink:      counts frames per CPU and drops them (the receiving end of a measurement).
 * limit:     redirects every frame to DEVMAP slot 0: the ceiling any XDP switch reaches here.
 */
#include <uapi/linux/bpf.h>

BPF_PERCPU_ARRAY(sink_count, __u64, 1);
BPF_DEVMAP(limit_ports, 1);

int gen_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

int sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *count = sink_count.lookup(&zero);
	if (count)
		(*count)++; /* per-CPU slot: no atomics needed */
	return XDP_DROP;
}

int limit(struct xdp_md *ctx)
{
	return limit_ports.redirect_map(0, 0);
}
