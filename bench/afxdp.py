"""afxdp-loop: the seed's userspace loop, but between two AF_XDP endpoints (rings, no syscall
per frame), next to tap-loop in the same run.

The kernel feeds endpoint A (live-frames XDP_TX into a veth whose peer runs the XSKMAP
program: what the bridge sends to the VM); a Python process on CPU 1 relays in batches, RX of
socket A to TX of socket B: the two share one UMEM (XDP_SHARED_UMEM), so the loop moves
descriptors and copies no frame; an XDP sink counts what leaves B at the far end of B's veth.
"""

import select
import time

from bench.taps import RelayLoop
from bench.veth import ifindex
from control.attachment import Journal
from control.lab import Lab, sh
from loader.afxdp import XskRedirect, XskSocket, forward, new_socket
from loader.trafficgen import BenchPrograms, attach_program

RING = 16384


def relay(ns, redirect, deadline):
    """Child process: sockets on xa and xb sharing one UMEM, then RX(A) -> TX(B) as
    descriptors, in batches, until the deadline."""
    sock_a, sock_b = new_socket(ns), new_socket(ns)
    redirect.put(0, sock_a)
    # rings deep enough for the generator's bursts (it sends ~30 ms of frames a call)
    a = XskSocket(sock_a, ifindex(ns, "xa"), 0, frames=2 * RING, ring_size=RING)
    b = XskSocket(sock_b, ifindex(ns, "xb"), 0, ring_size=RING, share=a)
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
        self.lab = Lab(prefix="xdpbr-bench-afxdp")
        self.programs = BenchPrograms()
        self.redirect = XskRedirect()
        self.undo = Journal()
        self.undo.push(self.redirect.close)
        try:
            self.ns = ns = self.lab.netns("xsk")
            for gen, vmm in (("ga", "xa"), ("gb", "xb")):
                sh("ip", "-n", ns, "link", "add", gen, "type", "veth", "peer", vmm)
                for ifname in (gen, vmm):
                    sh("ip", "-n", ns, "link", "set", ifname, "up")
            self.undo.push(attach_program(ns, "xa", self.redirect.prog.fd))
            self.undo.push(attach_program(ns, "gb", self.programs.sink.fd))
            self.source_ifindex = ifindex(ns, "ga")
        except BaseException:
            self.close()
            raise

    def relay(self, deadline):
        return relay(self.ns, self.redirect, deadline)
