/* Structs of the programs beside the fast path, defined once: the AF_XDP endpoint program
 * (afxdp.c) and the host tracepoint programs (host_tracepoints.c). loader/layouts.py mirrors
 * each one and tests/test_layouts.py checks sizes and offsets against the compiler's, as for
 * xdpbr_maps.h (which includes this header, so the layout probe sees them too). */
#ifndef XDPBR_AUX_H
#define XDPBR_AUX_H

/* xdpbr_xsk_stats (per CPU): [0] frames handed to an AF_XDP socket, [1] frames that found none. */
struct xdpbr_xsk_counter {
	__u64 packets;
	__u64 bytes;
};

/* xdpbr_redirect_errors: (devmap id, ingress ifindex), or (0, ifindex) for devmap xmit drops. */
struct xdpbr_redirect_key {
	__u32 map_id;
	__u32 ifindex;
};

/* xdpbr_fdb_learned: when the bridge learned (mac, vid). */
struct xdpbr_learn_key {
	__u8 mac[6];
	__u16 vid;
};

#endif
