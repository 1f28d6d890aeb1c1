"""`xdpbr bench latency`: UDP round trips between two veth hosts through each path.

Per path (the bridge, xdpbr `xdp`, the default mode `auto`) one lab: a client, a server and a
third host as the background source, plus a sink for that background, all ports of one bridge.
The server (one Python process in its namespace, via nsenter) echoes every datagram; the
client (another) sends a 60 B frame's worth of UDP payload, waits for the echo and times the
round trip with time.perf_counter_ns, one at a time, SAMPLES times in CHUNKS runs (each bounded
by SECONDS; a datagram not answered within TIMEOUT_S counts as lost), the paths' runs
interleaved in an order reversed every other chunk. Idle first, then under background
load: AF_PACKET frames from the third host to the sink (which drops them at XDP) at half the
bridge's one-direction capacity measured in the same run. The client, the server and the
background port's NAPI run on CPU 1, the background source on CPU 0.
"""

import json
import subprocess
import sys
import threading
import time

from bench.scenario import Scenario
from control import attachment
from loader.netns import netns_path, nsenter_prefix
from testbed.lab import sh
from testbed.napi import pin_napi_threads
from testbed.sources import open_source
from testbed.trafficgen import Traffic, attach_sinks

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


def summary(rtts, lost, background=None):
    out = percentiles(rtts) | {"samples": len(rtts), "lost": lost}
    return out | ({"background_fps": background} if background is not None else {})


def percentiles(samples_ns):
    """p50, p99 and p99.9 (nearest rank) of round trips in ns, in microseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"p50_us": None, "p99_us": None, "p999_us": None}

    def rank(q):
        index = max(0, -(-int(q * 1000) * len(ordered) // 100_000) - 1)  # ceil(q% of n) - 1
        return ordered[min(index, len(ordered) - 1)] / 1000

    return {"p50_us": rank(50), "p99_us": rank(99), "p999_us": rank(99.9)}


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
        self.undo.push(attach_sinks(self.programs, self.sink.netns, "eth0"))
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.load.port, "gro", "on")
        if self.mode:
            attachment.attach(lab.bridge, lab.switch, mode=self.mode, grace_s=86400)
        pin_napi_threads(lab.switch, self.load.port, cpu=SWITCH_CPU)
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
        """(round trips in ns, lost, background frames/s sent): idle, or with `background_fps`
        frames/s from the third host for the whole run."""
        stop, sent = threading.Event(), {}

        def background():
            traffic = Traffic(self.load.mac, self.sink.mac, self.load.ip, self.sink.ip, size=60)
            gen = open_source(self.generator, self.programs, self.load.netns, "eth0", traffic)
            try:
                total, start = 0, time.monotonic()
                while not stop.is_set():  # 0.5 s slices: the run stops within one
                    total += gen.run_for(0.5, rate=background_fps)
                sent["frames"], sent["seconds"] = total, time.monotonic() - start
            finally:
                gen.close()

        thread = threading.Thread(target=background, daemon=True) if background_fps else None
        if thread:
            thread.start()
        try:
            out = self._round_trips(samples)
        finally:
            stop.set()
            if thread:
                thread.join(5)
        return out["rtts"], out["lost"], sent.get("frames", 0) / max(sent.get("seconds", 0), 1e-9)

    def _stop_server(self):
        if self.server.poll() is None:
            self.server.terminate()
            self.server.wait(10)
