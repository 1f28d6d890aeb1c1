"""Kernel-side traffic generation and counting for benchmarks.

`LiveFrames` sends a frame out of a veth N times per BPF_PROG_TEST_RUN call in live-frames mode
(BPF_F_TEST_XDP_LIVE_FRAMES, as xdp-trafficgen does; Debian's xdp-tools 1.3.1 binaries fail on
this kernel). Each call also costs a synchronize_rcu (~30 ms), so calls are sized to ~0.3 s of
traffic flat out, or to ~30 ms of frames when a rate is set. `XdpSink` counts what arrives at
an interface per CPU and drops it. `LimitRedirect` is the minimal XDP redirect: the ceiling.
"""

import ctypes
import os
import time

from loader import attach as at
from loader import bpfsys
from loader.compile import BPF_DIR, bcc_compile
from loader.netns import entered

BENCH_SOURCE = os.path.join(BPF_DIR, "bench.c")


class BenchPrograms:
    """One bcc compile of bpf/bench.c (its maps are private to this instance)."""

    def __init__(self):
        from bcc import BPF

        self.bpf = bcc_compile("the benchmark programs", src_file=BENCH_SOURCE)
        self.gen = self.bpf.load_func(b"gen_tx", BPF.XDP)
        self.sink = self.bpf.load_func(b"sink", BPF.XDP)
        self.limit = self.bpf.load_func(b"limit", BPF.XDP)
        self.ncpu = bpfsys.possible_cpus()

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
    """Send `frame` out of veth `ifname` in `netns`, bounded in count and time."""

    def __init__(self, programs, netns, ifindex, frame):
        self.programs, self.netns, self.ifindex, self.frame = programs, netns, ifindex, frame
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

    def run_for(self, seconds, per_call, rate=None):
        """Send for about `seconds` (flat out, or at `rate` frames/s); returns frames sent."""
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < seconds:
            self.send(per_call)
            sent += per_call
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
