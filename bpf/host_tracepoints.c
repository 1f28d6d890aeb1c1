/* Host-wide tracepoint programs: what xdpbr measures outside its own programs (this kernel has
 * tracepoints but no kprobes). One copy per host, attached through pinned perf-event links so
 * it outlives the process that attached it (loader/tracepoints.py).
 *
 * Redirect errors happen after the fast path returned XDP_REDIRECT, so only the xdp
 * tracepoints see them. Key: (devmap id, ingress ifindex) for xdp:xdp_redirect_err, which names
 * the map and so the bridge; (0, ingress ifindex) for the frames xdp:xdp_devmap_xmit reports
 * dropped, which names devices only (an ifindex is per namespace).
 *
 * FDB learn times: bridge:br_fdb_update fires where the bridge learns or moves a MAC, just
 * before it sends the RTM_NEWNEIGH the daemon mirrors; the daemon subtracts this time from the
 * moment the mirror has the entry (xdpbr_fdb_sync_lag_seconds).
 */
#include <uapi/linux/bpf.h>
#include "xdpbr_aux.h"

#ifndef XDPBR_ROOT
#error "XDPBR_ROOT must name xdpbr's bpffs directory"
#endif

BPF_TABLE_PINNED("percpu_hash", struct xdpbr_redirect_key, __u64, xdpbr_redirect_errors, 4096,
		 XDPBR_ROOT "/xdpbr_redirect_errors");

/* A measurement, not the mirror: LRU so an unmirrored flood of MACs only ages out old times. */
BPF_TABLE_PINNED("lru_hash", struct xdpbr_learn_key, __u64, xdpbr_fdb_learned, 16384,
		 XDPBR_ROOT "/xdpbr_fdb_learned");

/* Tracepoint records as /sys/kernel/tracing/events/<system>/<name>/format lays them out. */
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

struct br_fdb_update_args {
	__u64 common;
	__u32 br_dev; /* __data_loc strings */
	__u32 dev;
	__u8 addr[6];
	__u16 vid;
	unsigned long flags;
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

int note_fdb_learned(struct br_fdb_update_args *args)
{
	struct xdpbr_learn_key key = {.vid = args->vid};
	__builtin_memcpy(key.mac, args->addr, sizeof(key.mac));
	__u64 now = bpf_ktime_get_ns(); /* CLOCK_MONOTONIC, as time.monotonic_ns() in the daemon */
	xdpbr_fdb_learned.update(&key, &now);
	return 0;
}
