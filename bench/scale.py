"""Scale: one port sending to many destinations on a big bridge (`xdpbr bench scale`).

The bridge has 64 veth ports and 4,096 static FDB entries (`master static`: nothing ages out
during a run) spread evenly over ports 1-63; port 0's host sends. The traffic source is the
closed loop of testbed/bounceloop.py: the sender's veth and the 63 receivers' veths live in one
namespace, a bouncer on every receiver sends each frame that crossed the switch round again out
of the sender, and (`destinations` > 1) gives it the next destination MAC in turn on the way,
so the switch sees frames from one port to `destinations` MACs spread over the other 63 ports,
every destination used in rotation. The same bridge with one destination is the reference; the
Linux bridge on a twin topology is measured alongside (the ratio every figure carries).

Where the cost goes (perf on the switch's CPU, 2026-12-06): with the destinations spread, a
NAPI poll's 64 frames go to up to 63 ports, each devmap flush hands most ports a single frame,
and each such frame wakes that port's idle receiver: __napi_schedule (waking a NAPI thread on
the other CPU, an IPI in this VM) took 73 % of the switch's CPU, xdpbr's program and its FDB
lookups about 6 %; the bouncers' CPU went to switching between 63 NAPI threads. The Linux
bridge pays the same wake-ups. That is the fan-out's cost, not the FDB's, so a third layout
isolates the FDB and the flow cache: the same number of destinations, all behind port 1
(another `destinations` static entries, on top of the 4,096), against one destination behind
port 1.

Also measured on the xdpbr bridge, each with a target (bench/report.py):
- attach of that bridge, compile and the 4,096 entries' mirror included (detach in between);
- the sync lag under that load: `xdpbr daemon` running, a frame from a new source MAC sent into
  port 1 while the loop runs to `destinations`, the time until the MAC is in the fast path's FDB
  mirror (AF_PACKET send to map entry), LAG_SAMPLES times, p99 by nearest rank.
"""

import os
import socket
import statistics
import time

from xdpbr.control.datapath import attachment
from xdpbr.control.datapath.session import Session
from xdpbr.loader.netns import entered

from bench.control_plane import learn_lag
from bench.figures import nearest_rank
from bench.scenario import Scenario
from bench.veth import GENERATOR_CPU, SWITCH_CPU, loop_figure
from testbed.bounceloop import BounceLoop
from testbed.frames import udp_frame
from testbed.lab import batch, sh
from testbed.napi import pin_napi_threads
from testbed.trafficgen import Traffic

PORTS = 64
FDB_ENTRIES = 4096
DEFAULT_DESTINATIONS = 1024
LAG_SAMPLES = 200
SENDER_MAC = "02:00:00:ca:00:01"
SENDER_IP, RECEIVER_IP = "10.202.0.1", "10.202.0.2"


def destination_mac(k):
    """The k-th static FDB entry's MAC (on port 1 + k % 63)."""
    return f"02:00:00:d0:{k >> 8:02x}:{k & 0xFF:02x}"


def one_port_mac(k):
    """The k-th MAC of the diagnostic set: as many static entries again, all on port 1."""
    return f"02:00:00:d1:{k >> 8:02x}:{k & 0xFF:02x}"


# How the destinations lie: "spread" over ports 1-63 (the one the target is for) or all behind
# port 1 ("one-port": the FDB's and flow cache's cost without the fan-out's, see the docstring)
LAYOUTS = {"spread": destination_mac, "one-port": one_port_mac}


class ScaleLoop(Scenario):
    """A 64-port bridge with 4,096 static entries, the closed loop from port 0 through it, in
    namespaces of its own; `mode` None is the Linux bridge, else the xdpbr mode attached."""

    def __init__(self, mode, flows=1, one_port=0):
        self.mode, self.flows, self.one_port = mode, flows, one_port
        self.attached = False
        super().__init__(f"xdpbr-bench-scale-{mode or 'bridge'}", programs=True)

    def _build(self):
        lab = self.lab
        lab.make_bridge()
        self.hosts = lab.netns("h")
        for conf in ("all", "default"):  # no chatter from the hosts' stack
            sh("ip", "netns", "exec", self.hosts, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
        self.receivers = [f"r{i}" for i in range(1, PORTS)]
        names = ["snd", *self.receivers]
        batch(
            "ip",
            lab.switch,
            [f"link add p{i} type veth peer {name} netns {self.hosts}" for i, name in enumerate(names)]
            + [f"link set p{i} master {lab.bridge} up" for i in range(PORTS)],
        )
        batch(
            "ip",
            self.hosts,
            [f"link set snd address {SENDER_MAC}"] + [f"link set {name} up" for name in names],
        )
        batch(
            "bridge",
            lab.switch,
            [f"fdb replace {SENDER_MAC} dev p0 master static"]
            + [
                f"fdb replace {destination_mac(k)} dev p{1 + k % (PORTS - 1)} master static"
                for k in range(FDB_ENTRIES)
            ]
            + [f"fdb replace {one_port_mac(k)} dev p1 master static" for k in range(self.one_port)],
        )
        lab.wait_forwarding()
        # frames enter port 0 from the sender's ndo_xdp_xmit: it needs NAPI (GRO on), as in
        # bench/veth.py
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", "p0", "gro", "on")
        if self.mode:
            self.attach_seconds()
        pin_napi_threads(lab.switch, "p0", cpu=SWITCH_CPU)
        self.loop = BounceLoop(self.programs, self.hosts, "snd", self.receivers, GENERATOR_CPU)
        self.undo.push(self.loop.close)

    def attach_seconds(self):
        """Seconds `xdpbr attach` of this bridge takes (compile and mirror of the FDB
        included), after a detach if it is attached."""
        bridge, netns = self.lab.bridge, self.lab.switch
        if self.attached:
            attachment.detach(bridge, netns)
            self.attached = False
        start = time.monotonic()
        attachment.attach(bridge, netns, mode=self.mode, grace_s=86400)
        self.attached = True
        return time.monotonic() - start

    def traffic(self, size):
        return Traffic(SENDER_MAC, destination_mac(0), SENDER_IP, RECEIVER_IP, size=size, flows=self.flows)

    def measure(self, destinations, size, window, layout="spread"):
        """One figure: frames/s from port 0 to `destinations` MACs (one direction) laid out as
        LAYOUTS[layout] says."""
        mac = LAYOUTS[layout]
        self.loop.spread([mac(k) for k in range(destinations)] if destinations > 1 else [])
        return loop_figure(self.loop.measure(self.traffic(size), window, busy_cpu=SWITCH_CPU))

    def sync_lag(self, destinations, samples=LAG_SAMPLES, size=60):
        """Milliseconds from a new MAC's first frame to its fast-path FDB entry, `xdpbr daemon`
        running and the loop carrying frames to `destinations`; returns (lags, frames/s the
        loop carried meanwhile, frames lost from the loop). A lag of None: never mirrored.
        This process polls from any CPU: pinned beside the 63 bouncers' NAPI threads it would
        wait its turn among them, and time its own scheduling, not the daemon's sync."""
        self.start_daemon()
        session = Session(self.lab.bridge, self.lab.switch).open_pins()
        with entered(self.hosts):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        affinity = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, set(range(os.cpu_count())))
            sock.bind((self.receivers[0], 0))
            time.sleep(1.0)  # the daemon adopts the bridge
            self.loop.spread([destination_mac(k) for k in range(destinations)])
            seeded = self.loop.fill(self.traffic(size))
            before, start = self.loop.counts().bounced, time.monotonic()
            lags = []
            for i in range(samples):
                mac = f"02:78:00:00:{i >> 8:02x}:{i & 0xFF:02x}"
                frame = udp_frame(SENDER_MAC, mac, RECEIVER_IP, SENDER_IP, size)
                lag = learn_lag(sock, session, frame, mac)
                lags.append(None if lag is None else lag * 1000)
            rate = (self.loop.counts().bounced - before) / (time.monotonic() - start)
            lost = seeded - self.loop.drain()
        finally:
            os.sched_setaffinity(0, affinity)
            sock.close()
            session.close()
        return lags, rate, lost


def lag_summary(lags):
    seen = [lag for lag in lags if lag is not None]
    if not seen:
        return {"median": None, "p99": None, "max": None, "n": 0, "missed": len(lags)}
    return {
        "median": statistics.median(seen),
        "p99": nearest_rank(sorted(seen), 99),
        "max": max(seen),
        "n": len(seen),
        "missed": len(lags) - len(seen),
    }
