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
 * bounce:    the closed loop's bouncer on the receiving host's veth (testbed/bounceloop.py):
 *            a generator's frame that crossed the switch is counted and redirected out of
 *            the sending host's veth (DEVMAP slot 0), so it enters the switch again, as the
 *            same frame (no field changes: it is still from the sender to the receiver),
 *            unless bounce_config.destinations spreads the loop over bounce_dests (scale).
 *            XDP_REDIRECT, not XDP_TX: the frame must enter the switch's ingress port, and
 *            ndo_xdp_xmit's flush wakes that port's NAPI even when it runs no XDP program.
 * tc_bounce: the same at TC ingress (bpf_redirect_peer skips the receiver's XDP).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "bench.h"

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

BPF_ARRAY(bounce_config, struct bounce_config, 1);
BPF_PERCPU_ARRAY(bounce_count, struct bounce_counts, 1);
BPF_DEVMAP(bounce_out, 1);

/* XDP_DROP, XDP_PASS or -1 (bounce it) for one frame; counts per CPU. */
static __always_inline int bounce_verdict(void *data, void *data_end)
{
	__u32 zero = 0;
	if (!generated(data, data_end))
		return XDP_PASS;
	struct bounce_config *cfg = bounce_config.lookup(&zero);
	struct bounce_counts *n = bounce_count.lookup(&zero);
	if (!cfg || !n)
		return XDP_PASS;
	if (cfg->drain) {
		n->drained++;
		return XDP_DROP;
	}
	if (cfg->inject_loss) {
		__sync_fetch_and_add(&cfg->inject_loss, -1);
		n->injected++;
		return XDP_DROP;
	}
	n->bounced++;
	return -1;
}

BPF_ARRAY(bounce_dests, struct bounce_mac, BOUNCE_MAX_DESTS);

/* The scale scenario spreads the loop over many destinations: frame k sent round from this CPU
 * goes to destination k % destinations, so every one of them is used in turn (a closed loop
 * otherwise keeps each seeded frame's destination for ever). The rewrite runs here, on the
 * bouncer's CPU, not on the switch's. */
static __always_inline void next_destination(void *data, void *data_end)
{
	__u32 zero = 0;
	struct bounce_config *cfg = bounce_config.lookup(&zero);
	struct bounce_counts *n = bounce_count.lookup(&zero);
	if (!cfg || !n || cfg->destinations < 2 || data + 6 > data_end)
		return;
	__u32 index = n->bounced % cfg->destinations;
	struct bounce_mac *mac = bounce_dests.lookup(&index);
	if (mac)
		__builtin_memcpy(data, mac->addr, 6);
}

int bounce(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int verdict = bounce_verdict(data, data_end);
	if (verdict >= 0)
		return verdict;
	next_destination(data, data_end);
	return bounce_out.redirect_map(0, 0);
}

BPF_ARRAY(tc_bounce_out, __u32, 1); /* the sender's ifindex: bpf_redirect takes no DEVMAP */

int tc_bounce(struct __sk_buff *skb)
{
	int verdict = bounce_verdict((void *)(long)skb->data, (void *)(long)skb->data_end);
	if (verdict == XDP_PASS)
		return TC_ACT_OK;
	if (verdict == XDP_DROP)
		return TC_ACT_SHOT;
	__u32 zero = 0;
	__u32 *out = tc_bounce_out.lookup(&zero);
	return out ? bpf_redirect(*out, 0) : TC_ACT_SHOT;
}
