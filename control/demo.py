"""`make demo`: a bridge with two VMs (TAP endpoints driven by a guest kernel, as QEMU would)
and one container (veth), accelerated by xdpbr; ping, UDP and TCP between them, then the
per-port counters of the fast path and the slow path. Everything is removed at the end."""

import json
import subprocess
import sys
import time

from control import attachment, render, state
from control.lab import Lab
from loader.errors import XdpbrError


def _say(text):
    print(f"\n== {text}", flush=True)


def _iperf(client, server, udp=False):
    server.run("iperf3", "-s", "-1", "-D", "-p", "5299")
    time.sleep(0.3)
    argv = ["iperf3", "-c", server.ip, "-p", "5299", "-t", "2", "-J"] + (["-u", "-b", "100M"] if udp else [])
    res = client.run(*argv, check=False, timeout=30)
    server.run("pkill", "-f", "iperf3 -s -1", check=False)
    try:
        end = json.loads(res.stdout)["end"]
    except (ValueError, KeyError):
        return "failed"
    if udp:
        s = end["sum"]
        return f"{s['packets'] - s['lost_packets']}/{s['packets']} datagrams arrived"
    return f"{end['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s"


def main():
    with Lab(prefix="xdpbr-demo") as lab:
        _say(f"building namespaces {lab.id}-*: bridge br0, VMs vm1 and vm2 (TAP), container ct1 (veth)")
        lab.make_bridge()
        vm1, vm2, ct1 = lab.vm("vm1"), lab.vm("vm2"), lab.container("ct1")
        lab.wait_forwarding()
        for host in (vm1, vm2, ct1):
            print(f"  {host.name:4} {host.ip:12} port {host.port}")

        _say(f"xdpbr -n {lab.switch} attach br0")
        attachment.attach("br0", lab.switch)
        daemon = subprocess.Popen([sys.executable, "-m", "control.cli", "daemon"], stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            render.emit(state.show("br0", lab.switch), False, render.show_text)

            pairs = [(vm1, vm2), (vm1, ct1), (ct1, vm2)]
            _say("ping")
            for a, b in pairs:
                print(f"  {a.name} -> {b.name}: {'ok' if a.ping(b.ip, count=5) else 'FAILED'}")
            _say("UDP (iperf3, 100 Mbit/s for 2 s)")
            for a, b in pairs:
                print(f"  {a.name} -> {b.name}: {_iperf(a, b, udp=True)}")
            _say("TCP (iperf3, one stream for 2 s; the guests write TSO super-frames with NEEDS_CSUM)")
            for a, b in pairs:
                print(f"  {a.name} -> {b.name}: {_iperf(a, b)}")

            _say(f"xdpbr -n {lab.switch} stats br0   (forward = fast path; every other reason = slow path)")
            render.emit(state.stats("br0", lab.switch), False, render.stats_text)
            _say("per port: packets on the fast path vs handed to the bridge")
            modes = {p["port"]: p["mode"] for p in state.show("br0", lab.switch)[0]["ports"]}
            for port, (fast, slow) in sorted(path_totals(state.stats("br0", lab.switch), modes).items()):
                print(f"  {port:8} {modes.get(port, '?'):7} fast path {fast:9}   bridge {slow:7}")
        finally:
            daemon.terminate()
            daemon.wait(10)
            _say("detaching and removing the namespaces")
            attachment.detach("br0", lab.switch)
    return 0


def path_totals(rows, modes):
    """{port: [fast, slow]}: in xdp+tc what XDP passes goes on to TC, so the bridge gets TC's
    passes; in xdp mode it gets XDP's."""
    totals = {}
    for row in rows:
        if row["port"] not in modes:
            continue  # frames of an interface that was not (yet) a port: slot 0
        counts = totals.setdefault(row["port"], [0, 0])
        last = "tc" if modes.get(row["port"]) in ("tc", "xdp+tc") else "xdp"
        if row["reason"] == "forward":
            counts[0] += row["packets"]
        elif row["attach"] == last:
            counts[1] += row["packets"]
    return totals


if __name__ == "__main__":
    try:
        sys.exit(main())
    except XdpbrError as exc:
        print(f"xdpbr demo: {exc}", file=sys.stderr)
        sys.exit(1)
