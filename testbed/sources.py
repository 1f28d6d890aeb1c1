"""Which traffic source a benchmark uses, and one way to open it.

live    LiveFrames (testbed/trafficgen.py): BPF_PROG_RUN in live-frames mode, 5-9 Mframes/s
        from one CPU; refused by locked-down kernels (and before 5.18).
packet  PacketFrames (testbed/packetgen.py): AF_PACKET, ~0.56 Mframes/s: rate-bounded use.
bounce  BounceLoop (testbed/bounceloop.py): a closed loop through the switch (veth paths) or
        through a relay (its TAP or AF_XDP endpoints), seeded by AF_PACKET: capacity figures
        and the relays' feed without live frames.
`auto` probes live frames once: live where the kernel allows them, else the loop for capacity
figures and for feeding the userspace relays (bench/taps.py RelayLoop: the loop runs through
the relay; AF_PACKET's ~0.3-0.5 Mframes/s fed them less than they move) and AF_PACKET for
rate-bounded scenarios.
"""

from dataclasses import asdict, dataclass

from xdpbr.loader.errors import UsageError
from xdpbr.loader.netns import existing_index

from testbed.packetgen import PacketFrames
from testbed.trafficgen import LiveFrames

GENERATORS = ("auto", "live", "packet", "bounce")


@dataclass
class Choice:
    requested: str
    capacity: str  # the veth paths' frame rates and the relays' feed: live, bounce or packet
    rate_bounded: str  # restart, the latency background: live or packet
    live_frames: str  # "allowed", or the kernel's refusal

    def as_dict(self):
        return asdict(self)


def choose(requested="auto"):
    """The sources for `--generator requested`; live frames probed once (cached)."""
    from xdpbr.loader.probe import live_frames_refusal

    if requested not in GENERATORS:
        raise UsageError(f"--generator {requested}: expected one of {', '.join(GENERATORS)}")
    refusal = live_frames_refusal()
    live = "allowed" if refusal is None else refusal
    if requested == "live" and refusal:
        raise UsageError(f"--generator live: {refusal}; use --generator auto, packet or bounce")
    if requested == "auto":
        requested_capacity = "live" if refusal is None else "bounce"
    else:
        requested_capacity = requested
    rate_bounded = "live" if requested_capacity == "live" else "packet"
    return Choice(requested, requested_capacity, rate_bounded, live)


def open_source(kind, programs, netns, ifname, traffic):
    """An open-loop source of `kind` (live or packet) sending `traffic` out of `ifname`:
    send(count), run_for(seconds, rate=, count=), sent, close()."""
    if kind == "live":
        return LiveFrames(programs, netns, existing_index(netns, ifname), traffic)
    if kind == "packet":
        return PacketFrames(netns, ifname, traffic)
    raise ValueError(f"{kind!r} is not an open-loop source")
