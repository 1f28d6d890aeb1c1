"""Control-plane speed: attaching a 64-port bridge (compile included), how long after the
bridge learns a MAC the fast path has it (the daemon running, as in production), and how long
`xdpbr show` and `xdpbr stats` take from the shell on that bridge."""

import socket
import subprocess
import sys
import time

from xdpbr.control.datapath import attachment
from xdpbr.control.datapath.fdb import mirror_key
from xdpbr.control.datapath.session import Session
from xdpbr.loader import bpfsys
from xdpbr.loader.layouts import FdbEntry
from xdpbr.loader.netns import entered

from bench.scenario import ROOT, Scenario
from testbed.frames import udp_frame
from testbed.lab import batch


def add_veth_ports(lab, count):
    """`count` veth pairs, one end of each a port of the lab's bridge (one `ip -batch`)."""
    batch(
        "ip",
        lab.switch,
        [f"link add p{i} type veth peer q{i}" for i in range(count)]
        + [f"link set p{i} master {lab.bridge} up" for i in range(count)]
        + [f"link set q{i} up" for i in range(count)],
    )


def learn_lag(sock, session, frame, mac, timeout=2.0):
    """Seconds from sending `frame` (from the new source `mac`) on `sock` to `mac`'s entry in
    the fast path's FDB mirror (`session`'s pins); None if it is not there within `timeout`."""
    start = time.monotonic()
    sock.send(frame)
    while time.monotonic() - start < timeout:
        if bpfsys.map_lookup(session.maps["xdpbr_fdb"], mirror_key(mac, 0), FdbEntry()):
            return time.monotonic() - start
        time.sleep(0.0002)
    return None


def cli_seconds(netns, *argv, runs=20):
    """Wall-clock seconds of `xdpbr -n NETNS ARGV...` as an operator runs it (a new Python
    process each time, imports included), `runs` times; this checkout's CLI, the bench's
    instance (XDPBR_INSTANCE is inherited)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "xdpbr.control.cli", "-n", netns, *argv],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=30,
        )
        times.append(time.perf_counter() - start)
    return times


class Attach64(Scenario):
    """`xdpbr attach` of a bridge with 64 veth ports, compile included, detached in between."""

    name = "attach-64"

    def __init__(self, ports=64):
        super().__init__("xdpbr-bench-attach", ports)

    def _build(self, ports):
        self.lab.make_bridge()
        add_veth_ports(self.lab, ports)

    def measure(self):
        start = time.monotonic()
        attachment.attach(self.lab.bridge, self.lab.switch, grace_s=86400)
        elapsed = time.monotonic() - start
        attachment.detach(self.lab.bridge, self.lab.switch)
        return elapsed


class LearnLag(Scenario):
    """Frames from new source MACs enter an accelerated bridge with `xdpbr daemon` running; the
    time from sending each one to its entry being in the fast path's FDB mirror."""

    name = "learn"

    def __init__(self):
        self.next_mac = 0
        super().__init__("xdpbr-bench-learn")

    def _build(self):
        self.lab.make_bridge()
        self.c1, self.c2 = self.lab.container("c1"), self.lab.container("c2")
        self.lab.wait_forwarding()
        attachment.attach(self.lab.bridge, self.lab.switch, grace_s=86400)
        self.start_daemon()
        self.session = Session(self.lab.bridge, self.lab.switch).open_pins()
        self.undo.push(self.session.close)
        with entered(self.c1.netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self.undo.push(self.sock.close)
            self.sock.bind(("eth0", 0))
        time.sleep(1.0)  # the daemon adopts the bridge

    def measure(self):
        """Seconds from sending a frame from a new MAC to its mirror entry (None: never)."""
        self.next_mac += 1
        mac = f"02:77:00:00:{self.next_mac >> 8:02x}:{self.next_mac & 0xFF:02x}"
        frame = udp_frame(self.c2.mac, mac, self.c1.ip, self.c2.ip, 60)
        return learn_lag(self.sock, self.session, frame, mac)
