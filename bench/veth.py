"""Frames per second through two veth ports of a bridge: the Linux bridge, xdpbr in each mode,
and the ceiling.

Each path lives in namespaces of its own (sysctls such as bridge-nf-call-iptables change only
there): a generator container, a switch namespace with the bridge, a sink container. Method
(KERNEL-FACTS): the live-frames generator runs on CPU 0 and sends UDP frames out of the
generator's veth, whose peer is the switch's ingress port; that port's NAPI runs threaded,
pinned to CPU 1; the sink counts per CPU at XDP (and at TC ingress, for frames that
bpf_redirect_peer hands straight to the sink's ingress) and drops.
"""

import glob
import os
import subprocess
import time

from control import attachment
from loader.journal import Journal
from loader.netns import existing_index
from testbed.lab import Lab, sh
from testbed.trafficgen import BenchPrograms, LiveFrames, Traffic, attach_program, attach_sinks

# path -> (what it is, xdpbr mode or None)
PATHS = {
    "bridge": ("Linux bridge, bridge-nf-call-iptables=0", None),
    "bridge+nf": ("Linux bridge, bridge-nf-call-iptables=1 (no rules)", None),
    "xdp": ("xdpbr, mode xdp", "xdp"),
    "tc": ("xdpbr, mode tc", "tc"),
    "xdp+tc": ("xdpbr, mode xdp+tc", "xdp+tc"),
    "auto": ("xdpbr, default mode (auto)", "auto"),
    "limit": ("minimal XDP redirect to the other port: the ceiling", None),
}
PER_CALL = 1_000_000  # ~0.2-0.3 s of frames flat out: amortises the ~30 ms a call costs
GENERATOR_CPU, SWITCH_CPU = 0, 1


def _napi_threads(ifname):
    """{pid} of the kernel threads named napi/<ifname>-<napi id>, in any namespace."""
    pids = set()
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as f:
                if f.read().strip().startswith(f"napi/{ifname}-"):
                    pids.add(int(comm.split("/")[2]))
        except OSError:
            continue
    return pids


def pin_napi_threads(netns, ifname, cpu):
    """Threaded NAPI for an interface, its kthreads pinned to `cpu`. Only the threads that
    switching it on created are touched: another namespace's interface of the same name (the
    host's own) keeps its threads where they are."""
    before = _napi_threads(ifname)
    subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"], check=True
    )
    for pid in _napi_threads(ifname) - before:
        try:
            os.sched_setaffinity(pid, {cpu % os.cpu_count()})
        except OSError:
            continue


class VethPath:
    """A generator, a bridge with two veth ports and a sink, in namespaces of their own."""

    def __init__(self, name, index, flows=1):
        self.name, self.flows = name, flows
        self.mode = PATHS[name][1]
        self.lab = Lab(prefix=f"xdpbr-bench-{name.replace('+', '')}")
        self.programs = BenchPrograms()
        self.undo = Journal()
        try:
            self._build(index)
        except BaseException:
            self.close()
            raise

    def _build(self, i):
        lab = self.lab
        lab.make_bridge(nf_call_iptables=self.name == "bridge+nf")
        self.gen = lab.container(f"g{i}", ip=f"10.201.{i}.1")
        self.sink = lab.container(f"s{i}", ip=f"10.201.{i}.2")
        lab.wait_forwarding()
        for host in (self.gen, self.sink):  # no flooding, no aging out during a window
            sh("bridge", "-n", lab.switch, "fdb", "replace", host.mac, "dev", host.port, "master", "static")
        self.undo.push(attach_sinks(self.programs, self.sink.netns, "eth0"))
        # the generator's XDP_TX needs NAPI at the switch port: GRO on, as for any veth that
        # receives XDP frames (modes with an XDP program there would have it anyway)
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.gen.port, "gro", "on")
        if self.mode:
            attachment.attach(lab.bridge, lab.switch, mode=self.mode, grace_s=86400)
        elif self.name == "limit":
            self.programs.set_limit_egress(lab.switch, existing_index(lab.switch, self.sink.port))
            self.undo.push(attach_program(lab.switch, self.gen.port, self.programs.limit.fd))
        pin_napi_threads(lab.switch, self.gen.port, cpu=SWITCH_CPU)
        self.gen_ifindex = existing_index(self.gen.netns, "eth0")

    def traffic(self, size):
        return Traffic(self.gen.mac, self.sink.mac, self.gen.ip, self.sink.ip, size=size, flows=self.flows)

    def measure(self, size, window, warmup=1.0):
        """(frames/s received, frames/s offered) over one window, after a warm-up."""
        gen = LiveFrames(self.programs, self.gen.netns, self.gen_ifindex, self.traffic(size))
        gen.run_for(warmup, PER_CALL)
        before, start = self.programs.sink_total(), time.monotonic()
        offered = gen.run_for(window, PER_CALL)
        elapsed = time.monotonic() - start
        return (self.programs.sink_total() - before) / elapsed, offered / elapsed

    def close(self):
        self.undo.rollback()
        self.programs.close()
        self.lab.close()
