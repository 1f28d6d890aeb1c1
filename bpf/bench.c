/* Benchmark helpers, not part of the fast path.
 *
 * gen_tx:    a live-frames traffic generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES
 *            and ctx.ingress_ifindex = a veth (or TAP) sends the test frame out of that
 *            device, `repeat` times per call (what xdp-trafficgen does). With gen_config.flows
 *            > 1 it writes a UDP source port per frame, cycling through `flows` ports (the
 *            frame's UDP checksum is 0, "none" in IPv4, so the rewrite needs no fix-up).
 * sink:      counts the generator's frames (UDP/IPv4 to port SINK_PORT, untagged or behind one
 *            VLAN tag) per CPU and drops them: the receiving end of a measurement. Anything
 *            else (ARP, the hosts' own chatter) goes on to the kernel and is not counted.
 * tc_sink:   the same at TC ingress, for frames that skip the device's XDP (bpf_redirect_peer
 *            hands a frame straight to a veth peer's ingress).
 * limit:     redirects every frame to DEVMAP slot 0: the ceiling any XDP switch reaches here.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

struct gen_config {
	__u32 flows;
	__u32 sport_offset; /* of the UDP source port in the frame: 34, or 38 behind a VLAN tag */
	__u32 base_sport;
};

BPF_ARRAY(gen_config, struct gen_config, 1);
BPF_PERCPU_ARRAY(gen_seq, __u32, 1);
BPF_PERCPU_ARRAY(sink_count, __u64, 1);
BPF_DEVMAP(limit_ports, 1);

int gen_tx(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_config *cfg = gen_config.lookup(&zero);
	__u32 *seq = gen_seq.lookup(&zero);
	if (!cfg || !seq || cfg->flows < 2)
		return XDP_TX;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 *sport = data + (cfg->sport_offset & 63);
	if ((void *)(sport + 1) > data_end)
		return XDP_TX;
	*sport = bpf_htons(cfg->base_sport + *seq % cfg->flows);
	*seq += 1;
	return XDP_TX;
}

#define SINK_PORT 2000 /* loader/packets.py udp_frame()'s destination port */

/* Is this the generator's frame? Fixed offsets: IPv4 without options, one tag at most. */
static __always_inline int generated(void *data, void *data_end)
{
	__u8 *p = data;
	if ((void *)(p + 14 + 4 + 20 + 8) > data_end)
		return 0;
	int l3 = 14;
	if (p[12] == 0x81 && p[13] == 0x00)
		l3 = 18;
	if (p[l3 - 2] != 0x08 || p[l3 - 1] != 0x00 || p[l3] != 0x45 || p[l3 + 9] != 17)
		return 0;
	__u8 *udp = p + l3 + 20;
	return udp[2] == (SINK_PORT >> 8) && udp[3] == (SINK_PORT & 0xff);
}

static __always_inline void count_one(void)
{
	__u32 zero = 0;
	__u64 *count = sink_count.lookup(&zero);
	if (count)
		(*count)++; /* per-CPU slot: no atomics needed */
}

int sink(struct xdp_md *ctx)
{
	if (!generated((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		return XDP_PASS;
	count_one();
	return XDP_DROP;
}

int tc_sink(struct __sk_buff *skb)
{
	if (!generated((void *)(long)skb->data, (void *)(long)skb->data_end))
		return TC_ACT_OK;
	count_one();
	return TC_ACT_SHOT;
}

int limit(struct xdp_md *ctx)
{
	return limit_ports.redirect_map(0, 0);
}
