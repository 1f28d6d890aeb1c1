/* Redirect errors: they happen after the fast path returned XDP_REDIRECT, so only the xdp
 * tracepoints see them (this kernel has tracepoints but no kprobes). One program per host,
 * attached through pinned perf-event links so it outlives the process that attached it.
 *
 * Key: (devmap id, ingress ifindex) for xdp:xdp_redirect_err, which names the map and so the
 * bridge; (0, ingress ifindex) for the frames xdp:xdp_devmap_xmit reports dropped, which names
 * devices only (an ifindex is per namespace: loader/redirect_errors.py documents the limit).
 */
#include <uapi/linux/bpf.h>

#ifndef XDPBR_ROOT
#error "XDPBR_ROOT must name xdpbr's bpffs directory"
#endif

struct xdpbr_redirect_key {
	__u32 map_id;
	__u32 ifindex;
};

BPF_TABLE_PINNED("percpu_hash", struct xdpbr_redirect_key, __u64, xdpbr_redirect_errors, 4096,
		 XDPBR_ROOT "/xdpbr_redirect_errors");

/* Tracepoint records as /sys/kernel/tracing/events/xdp/<name>/format lays them out. */
struct xdp_redirect_err_args {
	__u64 common;
	int prog_id;
	__u32 act;
	int ifindex;
	int err;
	int to_ifindex;
	__u32 map_id;
	int map_index;
};

struct xdp_devmap_xmit_args {
	__u64 common;
	int from_ifindex;
	__u32 act;
	int to_ifindex;
	int drops;
	int sent;
	int err;
};

static __always_inline void add(__u32 map_id, __u32 ifindex, __u64 n)
{
	struct xdpbr_redirect_key key = {.map_id = map_id, .ifindex = ifindex};
	__u64 zero = 0;
	__u64 *count = xdpbr_redirect_errors.lookup_or_try_init(&key, &zero);
	if (count)
		*count += n; /* per-CPU value: no atomics needed */
}

int count_redirect_err(struct xdp_redirect_err_args *args)
{
	add(args->map_id, args->ifindex, 1);
	return 0;
}

int count_devmap_xmit(struct xdp_devmap_xmit_args *args)
{
	if (args->drops > 0)
		add(0, args->from_ifindex, args->drops);
	return 0;
}
