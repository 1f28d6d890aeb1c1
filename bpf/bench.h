/* Structs shared by bpf/bench.c and testbed/trafficgen.py (mirrored there with ctypes). */
#ifndef BENCH_H
#define BENCH_H

struct gen_config {
	__u32 flows;
	__u32 sport_offset; /* of the UDP source port in the frame: 34, or 38 behind a VLAN tag */
	__u32 base_sport;
};

/* The closed loop's bouncer (testbed/bounceloop.py). */
struct bounce_config {
	__u32 drain;        /* 1: drop and count every loop frame (the end of a window) */
	__u32 inject_loss;  /* drop this many loop frames without counting them (tests) */
	__u32 destinations; /* >1: each frame sent round gets the next of bounce_dests' MACs */
};

/* The scale scenario's destinations (bench/scale.py): as many as the bridge's static FDB. */
#define BOUNCE_MAX_DESTS 4096

struct bounce_mac {
	__u8 addr[6];
	__u8 pad[2];
};

struct bounce_counts {
	__u64 bounced;  /* frames sent round again: each crossed the switch once */
	__u64 drained;  /* frames taken out of the loop while draining */
	__u64 injected; /* frames dropped on purpose (inject_loss) */
};

#endif
