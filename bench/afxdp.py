"""afxdp-loop: the userspace loop of QEMU's TAP path (tap-loop), but between two AF_XDP endpoints
(rings, no syscall per frame), next to tap-loop in the same run.

The kernel feeds endpoint A (live-frames XDP_TX into a veth whose peer runs the XSKMAP
program: what the bridge sends to the VM; or, without live frames, the closed loop: what B
sends is bounced into A again, bench/taps.py RelayLoop); a Python process on CPU 1 relays in
batches, RX of socket A to TX of socket B: the two share one UMEM (XDP_SHARED_UMEM), so the
loop moves descriptors and copies no frame; an XDP sink (or the bouncer) counts what leaves B
at the far end of B's veth.
"""

import select
import time

from xdpbr.loader.afxdp import XskRedirect, XskSocket, forward

from bench.taps import RelayLoop
from bench.veth import GENERATOR_CPU, pin_napi_threads
from testbed.lab import sh
from testbed.trafficgen import attach_program

RING = 16384


def build_endpoint_veths(path):
    """The generator's veth ga with endpoint A's side xa, and endpoint B's side xb with the
    sink's veth gb (XDP sink attached), in path.ns."""
    ns = path.ns
    for gen, endpoint in (("ga", "xa"), ("gb", "xb")):
        sh("ip", "-n", ns, "link", "add", gen, "type", "veth", "peer", endpoint)
        for ifname in (gen, endpoint):
            sh("ip", "-n", ns, "link", "set", ifname, "up")
    path.attach_sink("gb")
    path.source_ifname = "ga"
    # The sink is the measurement, not the relay's work: frames B sends reach gb as skbs that
    # veth copies into page-pool pages for XDP (skb_pp_cow_data); in softirq on the relay's
    # CPU that took a third of it (perf). tap-loop's sink runs inline in writev() but costs
    # ~1% (XDP on the TAP's buffer, before any skb). So gb's NAPI runs threaded on the
    # generator's CPU.
    pin_napi_threads(ns, "gb", cpu=GENERATOR_CPU)


def relay(ns, redirect, deadline):
    """Child process: sockets on xa and xb sharing one UMEM, then RX(A) -> TX(B) as
    descriptors, in batches, until the deadline."""
    # made by libxdp (xsk_socket__create, then __create_shared), rings deep enough for the
    # generator's bursts (it sends ~30 ms of frames a call)
    a = XskSocket.create("xa", 0, netns=ns, frames=2 * RING, ring_size=RING)
    b = XskSocket.create("xb", 0, netns=ns, ring_size=RING, share=a)
    redirect.put(0, a.sock)
    relayed = 0
    try:
        while time.monotonic() < deadline:
            moved = forward(a, b)
            relayed += moved
            if not moved:
                select.select(
                    [a.fd], [], [], 0.001
                )  # nothing arrived: a short poll (completions free fill buffers)
    finally:
        b.close()
        a.close()
    return relayed


class AfxdpLoop(RelayLoop):
    """Kernel -> AF_XDP endpoint A -> Python relay -> AF_XDP endpoint B -> XDP sink."""

    name = "afxdp-loop"

    def __init__(self):
        super().__init__("xdpbr-bench-afxdp", programs=True)

    def _build(self):
        self.redirect = XskRedirect()
        self.undo.push(self.redirect.close)
        self.ns = ns = self.lab.netns("xsk")
        build_endpoint_veths(self)
        self.undo.push(attach_program(ns, "xa", self.redirect.prog.fd))

    def relay(self, deadline):
        return relay(self.ns, self.redirect, deadline)
