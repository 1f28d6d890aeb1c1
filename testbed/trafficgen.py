"""Kernel-side traffic generation and counting for benchmarks.

`LiveFrames` sends UDP frames out of a veth or TAP N times per BPF_PROG_TEST_RUN call in
live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, as xdp-trafficgen does; Debian's xdp-tools
1.3.1 binaries fail on this kernel), flat out or at a rate, bounded in count and time, and
counts exactly what it sent. Each call also costs a synchronize_rcu (~30 ms), so calls are
sized to ~0.3 s of traffic flat out, or to ~30 ms of frames when a rate is set. The `sink`
program counts what arrives at an interface per CPU and drops it; `limit` is the minimal XDP
redirect, the ceiling. All three come from bpf/bench.c (`BenchPrograms`).
"""

import ctypes
import os
import time
from dataclasses import dataclass

from xdpbr.loader import attach as at
from xdpbr.loader import bpfsys
from xdpbr.loader.compile import BPF_DIR, bcc_compile
from xdpbr.loader.netns import entered

from testbed.frames import udp_frame

MIN_FRAME, MAX_FRAME = 60, 1514


@dataclass
class Traffic:
    """What the generator sends: UDP/IPv4 frames of `size` bytes (60-1514, FCS excluded), from
    `flows` source ports, optionally behind an 802.1Q tag."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    size: int = MIN_FRAME
    flows: int = 1
    vlan: int | None = None
    base_sport: int = 10000

    def frame(self):
        if not MIN_FRAME <= self.size <= MAX_FRAME:
            raise ValueError(f"frame size {self.size}: expected {MIN_FRAME} to {MAX_FRAME} bytes")
        if not 1 <= self.flows <= 65536 - self.base_sport:
            raise ValueError(f"flows {self.flows}: expected 1 to {65536 - self.base_sport}")
        tag = 4 if self.vlan is not None else 0
        frame = udp_frame(
            self.dst_mac,
            self.src_mac,
            self.src_ip,
            self.dst_ip,
            self.size - tag,
            sport=self.base_sport,
            csum="none" if self.flows > 1 else "full",
        )
        if self.vlan is not None:
            frame = frame[:12] + (0x8100).to_bytes(2, "big") + self.vlan.to_bytes(2, "big") + frame[12:]
        return frame

    @property
    def sport_offset(self):
        return 14 + (4 if self.vlan is not None else 0) + 20


class GenConfig(ctypes.Structure):
    """struct gen_config in bpf/bench.h."""

    _fields_ = [
        ("flows", ctypes.c_uint32),
        ("sport_offset", ctypes.c_uint32),
        ("base_sport", ctypes.c_uint32),
    ]


BENCH_SOURCE = os.path.join(BPF_DIR, "bench.c")


class BenchPrograms:
    """One bcc compile of bpf/bench.c (its maps are private to this instance)."""

    def __init__(self):
        from bcc import BPF

        self.bpf = bcc_compile("the benchmark programs", src_file=BENCH_SOURCE)
        self.gen = self.bpf.load_func(b"gen_tx", BPF.XDP)
        self.sink = self.bpf.load_func(b"sink", BPF.XDP)
        self.tc_sink = self.bpf.load_func(b"tc_sink", BPF.SCHED_CLS)
        self.limit = self.bpf.load_func(b"limit", BPF.XDP)
        self.bounce = self.bpf.load_func(b"bounce", BPF.XDP)
        self.tc_bounce = self.bpf.load_func(b"tc_bounce", BPF.SCHED_CLS)
        self.ncpu = bpfsys.possible_cpus()

    def configure(self, traffic):
        """Set the generator's flows for `traffic` (one program: one traffic at a time)."""
        config = GenConfig(
            flows=traffic.flows, sport_offset=traffic.sport_offset, base_sport=traffic.base_sport
        )
        bpfsys.map_update(self.bpf[b"gen_config"].map_fd, ctypes.c_uint32(0), config)

    def sink_total(self):
        values = (ctypes.c_uint64 * self.ncpu)()
        bpfsys.map_lookup(self.bpf[b"sink_count"].map_fd, ctypes.c_uint32(0), values)
        return sum(values)

    def set_limit_egress(self, netns, ifindex):
        with entered(netns):  # DEVMAP ifindexes resolve in the writer's namespace
            bpfsys.map_update(self.bpf[b"limit_ports"].map_fd, ctypes.c_uint32(0), ctypes.c_int32(ifindex))

    def close(self):
        self.bpf.cleanup()


class LiveFrames:
    """Send `traffic` (a Traffic, or one frame as bytes) out of the device with `ifindex` in
    `netns`, bounded in count and time. `sent` counts every frame handed to the device."""

    def __init__(self, programs, netns, ifindex, traffic):
        self.programs, self.netns, self.ifindex = programs, netns, ifindex
        if isinstance(traffic, Traffic):
            programs.configure(traffic)
            self.frame = traffic.frame()
        else:
            self.frame = bytes(traffic)
        self.sent = 0

    def send(self, count, batch_size=64):
        ctx = bpfsys.XdpMd(data=0, data_end=len(self.frame), ingress_ifindex=self.ifindex)
        with entered(self.netns):
            bpfsys.prog_test_run(
                self.programs.gen.fd,
                self.frame,
                repeat=count,
                ctx=ctx,
                flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES,
                batch_size=batch_size,
            )
        self.sent += count

    def run_for(self, seconds, per_call=None, rate=None, count=None):
        """Send for about `seconds` (flat out, or at `rate` frames/s), at most `count` frames;
        returns the frames sent."""
        per_call = per_call or (max(1, int(rate * 0.03)) if rate else 1_000_000)

        def send(n, _deadline):
            self.send(n)
            return n  # every frame handed over counts

        return paced(send, seconds, per_call, rate, count)

    def close(self):
        """Nothing to release (the programs belong to BenchPrograms): as PacketFrames."""


def paced(send, seconds, per_call, rate=None, count=None):
    """Call send(n, deadline) -> frames sent, `per_call` frames at a time, for about `seconds`
    (at `rate` frames/s when given, sleeping when ahead), at most `count` frames in all; returns
    the frames sent. The one loop behind every traffic source's run_for()."""
    start = time.monotonic()
    deadline = start + seconds
    sent = 0
    while time.monotonic() < deadline and (count is None or sent < count):
        n = per_call if count is None else min(per_call, count - sent)
        sent += send(n, deadline)
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    return sent


def attach_program(netns, ifname, prog_fd, mode="native"):
    """Attach a benchmark XDP program (native), returning a detach callable."""
    ipr = at.open_netlink(netns)
    index = ipr.link_lookup(ifname=ifname)[0]
    at.attach_xdp(ipr, index, ifname, prog_fd, mode)

    def detach():
        at.detach_xdp(ipr, index, mode)
        ipr.close()

    return detach


def attach_sinks(programs, netns, ifname):
    """The XDP sink and the TC sink on one interface (frames count once: XDP drops what it
    sees); returns a detach callable."""
    detach_xdp = attach_program(netns, ifname, programs.sink.fd)
    ipr = at.open_netlink(netns)
    index = ipr.link_lookup(ifname=ifname)[0]
    at.add_clsact(ipr, index)
    at.attach_tc(ipr, index, ifname, programs.tc_sink.fd)

    def detach():
        at.del_clsact(ipr, index)
        ipr.close()
        detach_xdp()

    return detach
