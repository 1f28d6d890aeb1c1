"""Frames per second through two veth ports of a bridge: the Linux bridge, xdpbr in each mode,
and the ceiling.

Each path lives in namespaces of its own (sysctls such as bridge-nf-call-iptables change only
there). The switch's ingress port's NAPI runs threaded, pinned to SWITCH_CPU; the traffic
source works on GENERATOR_CPU. Sources (`generator`):
- live:   the live-frames generator (docs/kernel-notes.md, "Test runs and traffic sources")
          sends UDP frames out of a generator container's veth, flat out (open loop); a sink
          container counts per CPU at XDP (and at TC ingress, for frames that
          bpf_redirect_peer hands straight to its ingress).
- packet: the same containers, AF_PACKET instead of live frames: ~0.56 Mframes/s at most,
          below the bridge, so its figures are marked generator-bound.
- bounce: the closed loop of testbed/bounceloop.py: both hosts' veths in one namespace, the
          receiver's bouncer (on GENERATOR_CPU) sends every frame round again.
Each figure says how busy SWITCH_CPU was while it was measured.
"""

import time

from xdpbr.control.datapath import attachment
from xdpbr.loader.netns import existing_index

from bench.figures import figure
from bench.scenario import Scenario
from testbed import cpustat
from testbed.bounceloop import BounceLoop
from testbed.lab import Host, sh
from testbed.napi import pin_napi_threads
from testbed.sources import open_source
from testbed.trafficgen import Traffic, attach_program, attach_sinks

__all__ = ["GENERATOR_CPU", "PATHS", "SWITCH_CPU", "VethPath", "loop_figure", "pin_napi_threads"]

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
PER_CALL = 1_000_000  # live frames: ~0.2-0.3 s flat out, amortises the ~30 ms a call costs
GENERATOR_CPU, SWITCH_CPU = 0, 1
GENERATORS = ("live", "packet", "bounce")


def loop_figure(w):
    """The figure of a closed-loop window (testbed.bounceloop.Window)."""
    return figure(
        w.rate,
        w.cpu_busy[SWITCH_CPU],
        in_flight=w.in_flight,
        lost=w.lost,
        attempts=w.attempts,
        source_cpu_busy=w.cpu_busy[GENERATOR_CPU],
    )


def open_loop_window(programs, send):
    """One open-loop figure: send() offers frames for a window and returns how many; the sink
    counts what arrived, /proc/stat how busy the switch's and the source's CPUs were."""
    before, s0, start = programs.sink_total(), cpustat.snapshot(), time.monotonic()
    offered = send()
    elapsed = time.monotonic() - start
    busy = cpustat.busy(s0, cpustat.snapshot())
    received = programs.sink_total() - before
    return figure(
        received / elapsed,
        busy[SWITCH_CPU],
        offered=offered / elapsed,
        source_cpu_busy=busy[GENERATOR_CPU],
    )


class VethPath(Scenario):
    """Traffic through a bridge with two veth ports, in namespaces of its own."""

    def __init__(self, name, index, flows=1, generator="live"):
        if generator not in GENERATORS:
            raise ValueError(f"generator {generator!r}: expected one of {', '.join(GENERATORS)}")
        self.name, self.flows, self.generator = name, flows, generator
        self.mode = PATHS[name][1]
        self.loop = None
        super().__init__(f"xdpbr-bench-{name.replace('+', '')}", index, programs=True)

    def _hosts(self, i):
        """The sender and the receiver: containers of their own, or (closed loop) two veths
        in one namespace, so that the bouncer can send what arrives at one out of the other."""
        lab = self.lab
        if self.generator != "bounce":
            return lab.container(f"g{i}", ip=f"10.201.{i}.1"), lab.container(f"s{i}", ip=f"10.201.{i}.2")
        ns = lab.netns(f"h{i}")
        for conf in ("all", "default"):  # no chatter from the hosts' stack
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
        hosts = []
        for role, n in (("g", 1), ("s", 2)):
            port, ifname = f"v{role}{i}", f"{role}0"
            sh("ip", "-n", lab.switch, "link", "add", port, "type", "veth", "peer", ifname, "netns", ns)
            sh("ip", "-n", ns, "link", "set", ifname, "address", f"02:00:00:c9:{i:02x}:{n:02x}", "up")
            sh("ip", "-n", lab.switch, "link", "set", port, "master", lab.bridge, "up")
            hosts.append(Host(role, ns, ifname, f"10.201.{i}.{n}", port))
        return hosts

    def _build(self, i):
        lab = self.lab
        lab.make_bridge(nf_call_iptables=self.name == "bridge+nf")
        self.gen, self.sink = self._hosts(i)
        lab.wait_forwarding()
        for host in (self.gen, self.sink):  # no flooding, no aging out during a window
            sh("bridge", "-n", lab.switch, "fdb", "replace", host.mac, "dev", host.port, "master", "static")
        if self.generator != "bounce":
            self.undo.push(attach_sinks(self.programs, self.sink.netns, "eth0"))
        # frames enter the switch port from XDP (XDP_TX or ndo_xdp_xmit): it needs NAPI, GRO
        # on, as for any veth that receives XDP frames (modes with an XDP program there would
        # have it anyway)
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.gen.port, "gro", "on")
        if self.mode:
            attachment.attach(lab.bridge, lab.switch, mode=self.mode, grace_s=86400)
        elif self.name == "limit":
            self.programs.set_limit_egress(lab.switch, existing_index(lab.switch, self.sink.port))
            self.undo.push(attach_program(lab.switch, self.gen.port, self.programs.limit.fd))
        pin_napi_threads(lab.switch, self.gen.port, cpu=SWITCH_CPU)
        if self.generator == "bounce":
            self.loop = BounceLoop(
                self.programs, self.gen.netns, self.gen.ifname, self.sink.ifname, GENERATOR_CPU
            )
            self.undo.push(self.loop.close)

    def traffic(self, size):
        return Traffic(self.gen.mac, self.sink.mac, self.gen.ip, self.sink.ip, size=size, flows=self.flows)

    def measure(self, size, window, warmup=1.0, in_flight=None):
        """One figure (see `figure`) over one window, after a warm-up."""
        traffic = self.traffic(size)
        if self.loop:
            kwargs = {"in_flight": in_flight} if in_flight else {}
            return loop_figure(self.loop.measure(traffic, window, busy_cpu=SWITCH_CPU, **kwargs))
        gen = open_source(self.generator, self.programs, self.gen.netns, self.gen.ifname, traffic)
        per_call = {"per_call": PER_CALL} if self.generator == "live" else {}
        try:
            gen.run_for(warmup, **per_call)
            return open_loop_window(self.programs, lambda: gen.run_for(window, **per_call))
        finally:
            gen.close()
