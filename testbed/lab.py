"""Throwaway namespace topologies on this host: a bridge, containers (veth) and VMs (TAP).

Used by `make demo`, the tests and the benchmarks. Every namespace name starts with the lab's
unique prefix; close() deletes them all, stops the VM loops and removes xdpbr pins of bridges
in them, also after a failure (use it as a context manager).
"""

import contextlib
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time

from xdpbr.control import config
from xdpbr.control.datapath import attachment
from xdpbr.loader import pins, tracepoints
from xdpbr.loader.bridge_id import BridgeId
from xdpbr.loader.netns import entered, netns_path, nsenter_prefix
from xdpbr.loader.tap import TapEndpoint

from testbed.vm import GuestRelay


def sh(*argv, check=True, netns=None):
    cmd = ["ip", "-n", netns, *argv[1:]] if netns and argv[0] == "ip" else list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


def batch(tool, netns, lines):
    """`tool -n NETNS -batch` of `lines` (ip or bridge): one process for thousands of commands."""
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        subprocess.run([tool, "-n", netns, "-batch", f.name], check=True, capture_output=True)
    finally:
        os.unlink(f.name)


class Host:
    """A container or VM: a namespace with one interface and an address."""

    def __init__(self, name, netns, ifname, ip, port):
        self.name, self.netns, self.ifname, self.ip, self.port = name, netns, ifname, ip, port

    @property
    def mac(self):
        return sh("ip", "-n", self.netns, "-br", "link", "show", self.ifname).split()[2]

    def run(self, *argv, check=True, timeout=60):
        res = subprocess.run(
            [*nsenter_prefix(netns_path(self.netns)), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: {res.stdout}{res.stderr}".strip())
        return res

    def ping(self, ip, count=3, size=56):
        res = self.run(
            "ping", "-c", str(count), "-i", "0.05", "-W", "1", "-s", str(size), "-q", ip, check=False
        )
        return res.returncode == 0

    def udp_listener(self, port, count, timeout=3.0):
        """A process in this host that receives up to `count` UDP datagrams on `port` (until
        `timeout` s pass without one) and prints each payload in hex, one a line (the output
        is flushed when it exits). Returned once its socket is bound."""
        script = (
            "import socket\n"
            f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', {port}))\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\n"
            f"s.settimeout({timeout}); print('ready', flush=True)\n"
            "try:\n"
            f"    for _ in range({count}): print(s.recv(65536).hex())\n"
            "except socket.timeout:\n"
            "    pass\n"
        )
        proc = subprocess.Popen(
            [*nsenter_prefix(netns_path(self.netns)), sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            text=True,
        )
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{self.name}: the UDP listener on port {port} did not start")
        return proc

    @contextlib.contextmanager
    def iperf3_server(self, port, timeout=10.0):
        """`iperf3 -s -1` in this host for one test, ready when entered; on exit this process,
        and no other iperf3 on the host, is stopped if it is still running."""
        proc = subprocess.Popen(
            [*nsenter_prefix(netns_path(self.netns)), "iperf3", "-s", "-1", "-p", str(port), "--forceflush"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline, seen = time.monotonic() + timeout, b""
            while b"Server listening" not in seen:  # raw reads: select() cannot see a file's buffer
                left = deadline - time.monotonic()
                if proc.poll() is not None or left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                    raise RuntimeError(
                        f"{self.name}: iperf3 -s -p {port} did not start: {seen.decode().strip()}"
                    )
                seen += os.read(proc.stdout.fileno(), 4096)
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()

    def __repr__(self):
        return f"Host({self.name}, {self.ip})"


class Lab:
    """Namespaces named with a unique prefix; close() deletes them, which takes every xdpbr
    program with their devices, and unpins the bridges that lived in them (no detach needed)."""

    def __init__(self, prefix="xdpbr-lab"):
        self.id = f"{prefix}-{secrets.token_hex(3)}"
        self.namespaces = []
        self.relays = []
        self.taps = []
        self.switch = None
        self.bridge = None
        self._next_ip = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def netns(self, role):
        """A namespace whose links stay quiet: IPv6 is off for every link made in it, so no
        DAD, router solicitation or MLD report (about 20 frames in a link's first seconds)
        lands among the frames a test or benchmark counts. A test that needs IPv6 turns it on
        for its link (`enable_ipv6`)."""
        name = f"{self.id}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        with entered(name):
            for conf in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("1")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def enable_ipv6(netns, ifname):
        with entered(netns):
            for conf in ("all", ifname):
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("0")

    def make_bridge(self, name="br0", nf_call_iptables=False):
        self.switch = self.netns("sw")
        self.bridge = name
        sh("ip", "-n", self.switch, "link", "add", name, "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", name, "up")
        self.set_nf_call(nf_call_iptables)
        return self.switch

    def set_nf_call(self, on):
        """br_netfilter's sysctls are per namespace: this changes only the lab's switch."""
        with entered(self.switch):
            for name in ("iptables", "ip6tables", "arptables"):
                path = f"/proc/sys/net/bridge/bridge-nf-call-{name}"
                if os.path.exists(path):
                    with open(path, "w") as f:
                        f.write("1" if on else "0")

    def in_switch(self, tool, *argv):
        """Run ip, tc or bridge against the switch namespace (`tool -n SWITCH ...`)."""
        return sh(tool, "-n", self.switch, *argv)

    def _ip(self):
        ip = f"10.200.0.{self._next_ip}"
        self._next_ip += 1
        return ip

    def container(self, name, ip=None):
        """A veth endpoint: its peer is a port of the bridge, named after it."""
        ns = self.netns(name)
        ip = ip or self._ip()
        port = f"v{name}"[:15]
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "eth0", "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return Host(name, ns, "eth0", ip, port)

    def vm(self, name, ip=None):
        """A TAP endpoint in the switch namespace, driven by a guest kernel through a relay."""
        ns = self.netns(name)
        ip = ip or self._ip()
        port = f"t{name}"[:15]
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "nic")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "nic", "up")
        tap = TapEndpoint(port, self.switch)
        self.taps.append(tap)
        sh("ip", "-n", self.switch, "link", "set", port, "master", self.bridge, "up")
        relay = GuestRelay(tap, ns, "nic").start()
        self.relays.append(relay)
        return Host(name, ns, "eth0", ip, port)

    def introduce(self, *hosts):
        """Each host pings the first: the bridge learns every station (its ARP and ICMP), as it
        would from hosts that have spoken. A quiet lab learns nothing by itself, and `attach`
        without a daemon copies only what the bridge knew then."""
        first, *others = hosts
        for host in others:
            if not host.ping(first.ip, count=1):
                raise RuntimeError(f"{host.name} cannot reach {first.name} through {self.bridge}")

    def wait_forwarding(self, timeout=5.0, ports=None):
        """Ports come up in STP 'disabled'/'listening' briefly; wait until they (all) forward."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = sh("bridge", "-n", self.switch, "link", "show")
            states = [
                line
                for line in out.splitlines()
                if f"master {self.bridge}" in line
                and (ports is None or line.split()[1].split("@")[0].rstrip(":") in ports)
            ]
            if states and all("state forwarding" in line for line in states):
                return
            time.sleep(0.05)
        raise RuntimeError(f"bridge ports not forwarding: {out}")

    def close(self):
        for relay in self.relays:
            relay.stop()
        for tap in self.taps:
            tap.close()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for bridge, netns in pins.attached_bridges():
            if netns in self.namespaces:
                attachment.forget(bridge, netns)
        from xdpbr.control.endpoints import lifecycle as endpoints

        for ns in self.namespaces:  # endpoints on the lab's bridges
            endpoints.forget_namespace(ns)
        if os.path.isdir(config.held_dir()):  # `xdpbr detach` of the lab's bridges
            for label in os.listdir(config.held_dir()):
                if BridgeId.parse(label).netns in self.namespaces:
                    config.hold(label, False)
        if not pins.attached_bridges():
            tracepoints.remove()
        self.relays, self.taps, self.namespaces = [], [], []
