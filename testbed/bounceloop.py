"""`BounceLoop`: a closed-loop traffic source through a switch, for kernels that refuse live
frames.

How the loop works. The sender's veth S and the receiver's veth R live in one namespace; their
peers are the two ports of the switch under test. A frame that leaves S crosses the switch and
arrives at R, where the bouncer (bpf/bench.c `bounce`, or `tc_bounce` when the switch hands
frames straight to R's ingress with bpf_redirect_peer) counts it and redirects it out of S,
unchanged: it enters the switch again as the same frame, from the sender to the receiver. So
the switch sees exactly one direction, as with live frames, and frames enter its ingress port
as xdp_frames (ndo_xdp_xmit), as live frames' XDP_TX put them there. The loop is seeded once
per window with `in_flight` frames by an AF_PACKET burst (testbed/packetgen.py), the FDB known
before (the caller's static entries); the figure is the bouncer's count over the window:
frames per second through the switch in one direction.

Where the cost goes: R's NAPI runs threaded on the bouncer's CPU, the switch's ingress port's
NAPI on the switch's CPU; each window reports both CPUs' busy fraction (/proc/stat). Where the
switch delivers with bpf_redirect_peer (xdpbr's tc path), R's ingress runs inside the switch's
softirq: tc_bounce then runs on the switch's CPU and its cost counts against the path, as the
live-frames sink's did. With live frames, the sink's XDP ran on the switch's CPU on every path;
here the bouncer runs on its own CPU, so fast paths measure higher than with live frames.

Robustness:
- `in_flight` stays below a veth ring (256 frames): the loop holds no more frames than any one
  ring can take, so no ring overflows however the frames bunch up.
- XDP_REDIRECT, not XDP_TX: veth kicks a peer's NAPI after XDP_TX only if the peer runs XDP;
  ndo_xdp_xmit's flush wakes a port with GRO alone (the bridge's ports).
- Every window ends with a drain: the bouncer drops and counts what still circulates, so
  `lost` = seeded - drained is exact; a window that lost frames is discarded and measured again
  with fewer in flight (`attempts`), and each window starts from an empty loop (no leftovers
  from the one before, no refill drift).
- Bounded: a window is `seconds` long, the drain waits at most DRAIN_S.
"""

import contextlib
import ctypes
import time
from dataclasses import dataclass, field

from xdpbr.loader import attach as at
from xdpbr.loader import bpfsys
from xdpbr.loader.journal import Journal
from xdpbr.loader.netns import entered, existing_index
from xdpbr.loader.packets import mac as mac_bytes

from testbed import cpustat
from testbed.lab import sh
from testbed.napi import pin_napi_threads
from testbed.packetgen import PacketFrames

VETH_RING = 256  # drivers/net/veth.c VETH_RING_SIZE
# As many as a veth ring takes with room to spare: ptr_ring frees consumed slots 16 at a time
# and a devmap flush carries up to 16. Fewer leave the fast paths' loop latency-bound (both
# CPUs waiting on wake-ups: limit gave 1.4, 2.5 and ~10 Mframes/s with 64, 128 and 192-224).
DEFAULT_IN_FLIGHT = 224
BUSY_ENOUGH = 0.90
DRAIN_S = 1.0
LOSS_TOLERATED = 0  # frames a valid window may lose
KICKS = 4  # drain(): rounds of kick frames, each at most 32 of a relay's held frames released


class BounceConfig(ctypes.Structure):
    """struct bounce_config in bpf/bench.h."""

    _fields_ = [
        ("drain", ctypes.c_uint32),
        ("inject_loss", ctypes.c_uint32),
        ("destinations", ctypes.c_uint32),
    ]


class BounceMac(ctypes.Structure):
    """struct bounce_mac in bpf/bench.h."""

    _fields_ = [("addr", ctypes.c_uint8 * 6), ("pad", ctypes.c_uint8 * 2)]


MAX_DESTINATIONS = 4096  # BOUNCE_MAX_DESTS in bpf/bench.h


class BounceCounts(ctypes.Structure):
    """struct bounce_counts in bpf/bench.h."""

    _fields_ = [("bounced", ctypes.c_uint64), ("drained", ctypes.c_uint64), ("injected", ctypes.c_uint64)]


@dataclass
class Window:
    rate: float  # frames/s through the switch, one direction
    in_flight: int
    lost: int  # frames that left the loop during the window (seeded - drained)
    seconds: float
    cpu_busy: dict = field(default_factory=dict)  # {cpu: fraction busy}
    attempts: int = 1


class BounceLoop:
    """The loop between `sender` and `receivers` (interface names in `netns`; one name or a
    list, as in the scale scenario where the switch spreads the loop over many ports): attaches
    the bouncer to each receiver (XDP and TC), pins the receivers' NAPI to `cpu`."""

    def __init__(self, programs, netns, sender, receivers, cpu=0, veth=True):
        """`veth=False`: the sender and receivers are TAPs (the tap-loop relay's), which have
        no NAPI to pin and whose offloads belong to the fd's owner."""
        self.programs, self.netns, self.sender = programs, netns, sender
        receivers = [receivers] if isinstance(receivers, str) else list(receivers)
        self.destinations = 0
        self.kick_frames = 0  # drain(): frames a kick sends (relays that hold frames: 8)
        self.undo = Journal()
        try:
            self.sender_ifindex = existing_index(netns, sender)
            with entered(netns):  # DEVMAP ifindexes resolve in the writer's namespace
                bpfsys.map_update(
                    programs.bpf[b"bounce_out"].map_fd,
                    ctypes.c_uint32(0),
                    ctypes.c_int32(self.sender_ifindex),
                )
            bpfsys.map_update(
                programs.bpf[b"tc_bounce_out"].map_fd,
                ctypes.c_uint32(0),
                ctypes.c_uint32(self.sender_ifindex),
            )
            ipr = at.open_netlink(netns)
            self.undo.push(ipr.close)
            for receiver in receivers:
                index = ipr.link_lookup(ifname=receiver)[0]
                at.attach_xdp(ipr, index, receiver, programs.bounce.fd, "native")
                self.undo.push(lambda index=index: at.detach_xdp(ipr, index, "native"))
                at.add_clsact(ipr, index)
                self.undo.push(lambda index=index: at.del_clsact(ipr, index))
                at.attach_tc(ipr, index, receiver, programs.tc_bounce.fd)
                if veth:
                    pin_napi_threads(netns, receiver, cpu)
            if veth:
                # tc_bounce sends skbs out of the sender; veth hands them to the port's NAPI (the
                # switch's CPU) only if they are GRO-eligible, which a TSO-capable sender's are
                # not: they would go through netif_rx on the CPU that sent them, and the whole
                # loop would stay there
                sh("ip", "netns", "exec", netns, "ethtool", "-K", sender, "tso", "off")
            self.configure(drain=1)  # nothing circulates until a window fills the loop
        except BaseException:
            self.undo.rollback()
            raise

    def configure(self, drain=0, inject_loss=0):
        cfg = BounceConfig(drain=drain, inject_loss=inject_loss, destinations=self.destinations)
        bpfsys.map_update(self.programs.bpf[b"bounce_config"].map_fd, ctypes.c_uint32(0), cfg)

    def spread(self, macs):
        """Send the loop's frames to `macs` in turn (each frame sent round gets the next
        destination; one MAC or none: frames keep the destination they were seeded with).
        Takes effect with the next window."""
        if len(macs) > MAX_DESTINATIONS:
            raise ValueError(f"{len(macs)} destinations: at most {MAX_DESTINATIONS}")
        fd = self.programs.bpf[b"bounce_dests"].map_fd
        for i, mac in enumerate(macs):
            bpfsys.map_update(fd, ctypes.c_uint32(i), BounceMac(addr=(ctypes.c_uint8 * 6)(*mac_bytes(mac))))
        self.destinations = len(macs)

    def counts(self):
        """BounceCounts summed over CPUs."""
        values = (BounceCounts * self.programs.ncpu)()
        bpfsys.map_lookup(self.programs.bpf[b"bounce_count"].map_fd, ctypes.c_uint32(0), values)
        total = BounceCounts()
        for v in values:
            total.bounced += v.bounced
            total.drained += v.drained
            total.injected += v.injected
        return total

    def drain(self, traffic=None):
        """Stop the loop; returns the frames taken out (waits until none arrive, at most DRAIN_S).
        With `traffic` and `kick_frames` set, it then sends KICKS rounds of kick_frames frames
        through the loop (they are drained too, and not counted): a relay that transmits only
        when it has new frames to send (Open vSwitch: each sendto() moves at most 32 of its TX
        ring's frames in copy mode) still holds frames when the loop stops, and would release
        them into the next window (negative loss there, loss here)."""
        start = self.counts().drained
        self.configure(drain=1)
        self._until_quiet()
        if traffic is not None and self.kick_frames:
            kicker = PacketFrames(self.netns, self.sender, traffic)
            try:
                for _ in range(KICKS):
                    start += kicker.send(self.kick_frames, deadline=time.monotonic() + 0.2)
                    self._until_quiet()
            finally:
                kicker.close()
        return self.counts().drained - start

    def _until_quiet(self):
        deadline, last, stable_since = time.monotonic() + DRAIN_S, -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.counts().drained
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 0.05:
                break
            time.sleep(0.01)

    def fill(self, traffic, in_flight=DEFAULT_IN_FLIGHT, inject_loss=0):
        """Start the loop from empty with `in_flight` frames of `traffic`; returns how many were
        seeded. The caller ends it with drain(): lost = seeded - drained."""
        if not 1 <= in_flight < VETH_RING:
            raise ValueError(f"in_flight {in_flight}: expected 1 to {VETH_RING - 1} (a veth ring)")
        self.drain()  # an empty loop: nothing left from before
        self.configure(drain=0, inject_loss=inject_loss)
        seeder = PacketFrames(self.netns, self.sender, traffic)
        try:
            return seeder.send(in_flight, deadline=time.monotonic() + 1.0)
        finally:
            seeder.close()

    def window(self, traffic, in_flight, seconds, warmup=0.3, inject_loss=0):
        """One window: inject `in_flight` frames of `traffic`, let them settle, count for
        `seconds`, drain."""
        seeded = self.fill(traffic, in_flight, inject_loss)
        time.sleep(warmup)
        c0, s0, t0 = self.counts().bounced, cpustat.snapshot(), time.monotonic()
        time.sleep(seconds)
        c1, s1, t1 = self.counts().bounced, cpustat.snapshot(), time.monotonic()
        drained = self.drain(traffic)
        return Window(
            rate=(c1 - c0) / (t1 - t0),
            in_flight=seeded,
            lost=seeded - drained,
            seconds=t1 - t0,
            cpu_busy=cpustat.busy(s0, s1),
        )

    def measure(
        self,
        traffic,
        seconds,
        in_flight=DEFAULT_IN_FLIGHT,
        attempts=3,
        busy_cpu=None,
        inject_loss=0,
        around=contextlib.nullcontext,
    ):
        """A valid window, at most `attempts` windows; the last one is returned either way (its
        `lost`, `cpu_busy` and `attempts` say). A window is valid when it lost no frames (after
        a loss: again with a quarter fewer in flight) and, given `busy_cpu` (the switch's),
        when that CPU was at least BUSY_ENOUGH busy: otherwise the loop was bound by its own
        latency (both sides waiting on NAPI wake-ups, the frames bunched in one train) and
        measured itself, not the switch; a fresh fill bunches them differently. `inject_loss`
        frames are dropped in the first window (tests). `around()`, a context manager, is
        entered around each window (fill to drain): the relays run their userspace side in
        it."""
        for attempt in range(1, attempts + 1):
            with around():
                w = self.window(traffic, in_flight, seconds, inject_loss=inject_loss if attempt == 1 else 0)
            w.attempts = attempt
            if w.lost > LOSS_TOLERATED:
                in_flight = max(8, in_flight * 3 // 4)
            elif busy_cpu is None or w.cpu_busy.get(busy_cpu, 0) >= BUSY_ENOUGH:
                return w
        return w

    def close(self):
        self.undo.rollback()
