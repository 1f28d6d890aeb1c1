"""`xdpbr bench latency`: UDP round trips between two veth hosts through each path.

Per path (the bridge, xdpbr `xdp`, the default mode `auto`) one lab: a client, a server and a
third host as the background source, plus a sink for that background, all ports of one bridge.
The server (one Python process in its namespace, via nsenter) echoes every datagram; the
client (another) sends a 60 B frame's worth of UDP payload, waits for the echo and times the
round trip with time.perf_counter_ns, one at a time, SAMPLES times in CHUNKS runs (each bounded
by SECONDS; a datagram not answered within TIMEOUT_S counts as lost), the paths' runs
interleaved in an order reversed every other chunk. Idle first, then under background load:
AF_PACKET frames from the third host to the sink at half the bridge's one-direction capacity
measured in the same run, an open-loop offer (a frame the switch port's full ring refuses is
dropped, counted and not sent again, so a slow path does not slow the source down); each run
reports the background offered, refused and carried (counted by the sink's TC program) and
how busy each CPU was.

Where the work runs: the client, the server and the background port's NAPI on CPU 1 (the
switch's); the background source and the sink's NAPI on CPU 0. Four set-up choices make the
background land on CPU 1 alike on every path (each one's absence measured, 2026-12-06):
- the source's eth0 has TSO off: veth hands a TSO-capable sender's frames to netif_rx on the
  sending CPU instead of the port's NAPI, so on the bridge (which leaves the peer's TSO on;
  xdpbr's XDP turns it off) all the background's forwarding ran on CPU 0 (47,618 NET_RX
  softirqs there, none on CPU 1, the port's NAPI thread idle): the bridge's "loaded" round
  trips met no load (p99 33 us against 30 idle) while `xdp`'s shared CPU 1 with it (106 us);
- the port's and the sink's NAPI kthreads run SCHED_FIFO (lowest priority), ahead of tasks as
  NAPI in softirq is: as ordinary tasks they shared CPU 1 with the client and server, the ring
  filled while the kthread waited, and the background carried depended on who won the CPU (with
  the client running, 483 kframes/s on the bridge and 113 k on `xdp`, 164 k/s refused);
- the source builds its messages once (filling them in Python cost ~1 us a frame);
- the sink counts at TC ingress behind its NAPI (GRO on, the switch side's TSO off), no XDP
  (an XDP sink had veth copy each of the bridge's skbs).
Still not alike: CPU 0. The sink's NAPI costs it ~1.0 us a frame on the bridge path (skbs
through GRO) against ~0.6 on `xdp` (xdp_frames), so the source and the sink together offered
the bridge 490 k frames/s where `xdp` and `auto` got 573 k (2026-12-06, target 581 k): the
bridge carried less background than the paths compared with it, which flatters the bridge.
The report gives every path's offered, refused and carried rate and each CPU's busy fraction.

What a background frame costs CPU 1 (1 s of background alone, perf -C 1, 2026-12-06): the
bridge 1.0-1.3 us (GRO, br_handle_frame, veth_xmit); `auto` (tc with bpf_redirect_peer) 0.87 us,
the sink's TC program included (redirect_peer delivers inline); `xdp` 1.30 us, of which 55 %
is veth copying each socket-made skb into a page-pool buffer so XDP can run on it
(skb_pp_cow_data: its headroom is under XDP_PACKET_HEADROOM and its head is kmalloc'ed), 4 %
xdpbr's program and 8 % the redirect. That copy is the kernel's, on every frame a container
sends into an XDP veth port, which is why `auto` picks tc on veth.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

from xdpbr.control.datapath import attachment
from xdpbr.loader import attach as at
from xdpbr.loader.netns import netns_path, nsenter_prefix

from bench.figures import nearest_rank
from bench.scenario import Scenario
from testbed import cpustat
from testbed.lab import sh
from testbed.napi import pin_napi_threads
from testbed.sources import open_source
from testbed.trafficgen import Traffic

PATHS = {"bridge": None, "xdp": "xdp", "auto": "auto"}  # path -> xdpbr mode
SAMPLES = 20_000  # a path's, in CHUNKS runs taken in alternating path order (drift hits all)
CHUNKS = 4
SECONDS = 10.0  # a run's bound; fewer samples are reported as such
TIMEOUT_S = 0.2
PAYLOAD = 18  # 14 Ethernet + 20 IPv4 + 8 UDP + 18 = a 60 B frame
PORT = 7007
# the background port's NAPI, as the frame-rate paths' (bench/veth.py), and the echo client and
# server: the latency traffic shares the switch's CPU with the background's forwarding, and
# CPU 0 is left to the background source (a client inheriting the bench's CPU 0 would slow it)
SWITCH_CPU = 1
SINK_CPU = 0  # the background's receiving host: its work is not the switch's

SERVER = """
import os, socket
os.sched_setaffinity(0, {{{cpu}}})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {port}))
s.settimeout({idle})
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
except socket.timeout:
    pass
"""

CLIENT = """
import json, os, socket, time
os.sched_setaffinity(0, {{{cpu}}})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("{ip}", {port}))
s.settimeout({timeout})
rtts, lost, seq = [], 0, 0
clock = time.perf_counter_ns
deadline = clock() + int({seconds} * 1e9)
for _ in range({warmup}):  # ARP, caches, the fast path's flow entries
    s.send(b"w" * {payload})
    try:
        s.recv(2048)
    except socket.timeout:
        pass
while len(rtts) < {samples} and clock() < deadline:
    seq += 1
    msg = seq.to_bytes(8, "big") + b"x" * ({payload} - 8)
    t0 = clock()
    s.send(msg)
    try:
        while s.recv(2048)[:8] != msg[:8]:  # a late echo of a datagram counted as lost
            pass
    except socket.timeout:
        lost += 1
        continue
    rtts.append(clock() - t0)
print(json.dumps({{"rtts": rtts, "lost": lost}}))
"""


def summary(runs):
    """One path's figures at one load from its runs (LatencyPath.measure's answers): the
    percentiles of all round trips, the CPUs' busy fraction and, loaded, the background offered,
    refused by the switch port and carried to the sink (frames/s, medians of the runs)."""
    rtts = [t for r in runs for t in r["rtts"]]
    out = percentiles(rtts) | {"samples": len(rtts), "lost": sum(r["lost"] for r in runs)}
    cpus = sorted({cpu for r in runs for cpu in r["cpu_busy"]})
    out["cpu_busy"] = {str(c): statistics.median(r["cpu_busy"].get(c, 0) for r in runs) for c in cpus}
    if runs and "offered" in runs[0]:
        out["background"] = {
            f"{k}_fps": statistics.median(r[k] for r in runs) for k in ("offered", "refused", "carried")
        }
    return out


def percentiles(samples_ns):
    """p50, p99 and p99.9 (nearest rank) of round trips in ns, in microseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"p50_us": None, "p99_us": None, "p999_us": None}

    return {
        f"p{name}_us": nearest_rank(ordered, q) / 1000 for name, q in (("50", 50), ("99", 99), ("999", 99.9))
    }


def _tc_sink(programs, netns, ifname):
    """The TC sink alone on `ifname` (counts and drops at ingress); returns a detach callable."""
    ipr = at.open_netlink(netns)
    index = ipr.link_lookup(ifname=ifname)[0]
    at.add_clsact(ipr, index)
    at.attach_tc(ipr, index, ifname, programs.tc_sink.fd)
    return lambda: (at.del_clsact(ipr, index), ipr.close())


def _as_softirq(pids):
    """NAPI kthreads ahead of every task, as NAPI in softirq is (the lowest real-time priority):
    as ordinary tasks they shared the CPU with the echo client and server, so how much
    background a path carried depended on how the scheduler split the CPU, not on the path."""
    for pid in pids:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))


class LatencyPath(Scenario):
    def __init__(self, name, index, generator="packet"):
        self.name, self.mode, self.generator = name, PATHS[name], generator
        super().__init__(f"xdpbr-bench-lat-{name}", index, programs=True)

    def _build(self, i):
        lab = self.lab
        lab.make_bridge()
        net = f"10.204.{i}"
        self.client, self.echo = lab.container("c", ip=f"{net}.1"), lab.container("e", ip=f"{net}.2")
        self.load, self.sink = lab.container("l", ip=f"{net}.3"), lab.container("k", ip=f"{net}.4")
        lab.wait_forwarding()
        for host in (self.client, self.echo, self.load, self.sink):  # no flooding, no aging
            sh("bridge", "-n", lab.switch, "fdb", "replace", host.mac, "dev", host.port, "master", "static")
        self.undo.push(_tc_sink(self.programs, self.sink.netns, "eth0"))
        # the sink takes frames through its NAPI (threaded below) on every path, as skbs without
        # an XDP copy: an XDP sink copied each of the bridge's skbs (1.1 us a frame on CPU 0,
        # which then fell short of the offer), `xdp`'s xdp_frames not
        sh("ip", "netns", "exec", self.sink.netns, "ethtool", "-K", "eth0", "gro", "on")
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.sink.port, "tso", "off")
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.load.port, "gro", "on")
        # the background enters the switch port's NAPI on every path: a TSO-capable sender's
        # frames are not GRO-eligible, and veth hands those to netif_rx on the sending CPU
        sh("ip", "netns", "exec", self.load.netns, "ethtool", "-K", "eth0", "tso", "off")
        _as_softirq(pin_napi_threads(self.sink.netns, "eth0", cpu=SINK_CPU))
        if self.mode:
            attachment.attach(lab.bridge, lab.switch, mode=self.mode, grace_s=86400)
        _as_softirq(pin_napi_threads(lab.switch, self.load.port, cpu=SWITCH_CPU))
        assert self.client.ping(self.echo.ip), f"{self.name}: no connectivity"
        script = SERVER.format(port=PORT, idle=SECONDS * 6, cpu=SWITCH_CPU)
        self.server = subprocess.Popen(
            [*nsenter_prefix(netns_path(self.echo.netns)), sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.undo.push(self._stop_server)
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.name}: the echo server did not start")

    def _round_trips(self, samples):
        script = CLIENT.format(
            ip=self.echo.ip, port=PORT, timeout=TIMEOUT_S, seconds=SECONDS, warmup=200,
            payload=PAYLOAD, samples=samples, cpu=SWITCH_CPU,
        )  # fmt: skip
        res = subprocess.run(
            [*nsenter_prefix(netns_path(self.client.netns)), sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=SECONDS + 30,
        )
        if res.returncode != 0:
            raise RuntimeError(f"{self.name}: latency client: {res.stderr.strip().splitlines()[-1:]}")
        return json.loads(res.stdout)

    def measure(self, samples, background_fps=None):
        """One run of `samples` round trips, idle or with `background_fps` frames/s offered from
        the third host for the whole run: {rtts (ns), lost, cpu_busy}, and for a loaded run the
        background's `offered`, `refused` (the port's ring full) and `carried` (counted at the
        sink) frames/s."""
        stop, bg = threading.Event(), {}

        def background():
            traffic = Traffic(self.load.mac, self.sink.mac, self.load.ip, self.sink.ip, size=60)
            gen = open_source(self.generator, self.programs, self.load.netns, "eth0", traffic)
            retry = {"retry": False} if self.generator == "packet" else {}
            try:
                offered, start = 0, time.monotonic()
                while not stop.is_set():  # 0.5 s slices: the run stops within one
                    offered += gen.run_for(0.5, rate=background_fps, **retry)
                bg["offered"], bg["refused"] = offered, getattr(gen, "refused", 0)
            finally:
                gen.close()
                bg["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=background, daemon=True) if background_fps else None
        sunk, s0 = self.programs.sink_total(), cpustat.snapshot()
        if thread:
            thread.start()
        try:
            out = self._round_trips(samples)
        finally:
            stop.set()
            if thread:
                thread.join(5)
        out["cpu_busy"] = cpustat.busy(s0, cpustat.snapshot())
        if thread:
            seconds = max(bg.get("seconds", 0), 1e-9)
            out["offered"] = bg.get("offered", 0) / seconds
            out["refused"] = bg.get("refused", 0) / seconds
            out["carried"] = (self.programs.sink_total() - sunk) / seconds
        return out

    def _stop_server(self):
        if self.server.poll() is None:
            self.server.terminate()
            self.server.wait(10)
