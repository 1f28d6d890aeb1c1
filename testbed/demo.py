"""`make demo`: a bridge with two VMs (TAP endpoints driven by a guest kernel, as QEMU would),
one container (veth) and one AF_XDP endpoint (sockets from the daemon's broker, served by the
Python endpoint as a VMM with `-netdev af-xdp` would), accelerated by xdpbr; ping, UDP and TCP
between them, then the per-port counters of the fast path and the slow path. Everything is
removed at the end."""

import json
import re
import subprocess
import sys
import time

from xdpbr.control.cli import render
from xdpbr.control.datapath import attachment, state
from xdpbr.control.endpoints import lifecycle as endpoints
from xdpbr.control.endpoints.client import request, socket_path
from xdpbr.loader import instance
from xdpbr.loader.errors import XdpbrError
from xdpbr.loader.xsk_endpoint import AfxdpEndpoint

from testbed.lab import Lab

XSK_NAME, XSK_MAC, XSK_IP = "vm3", "52:54:00:00:00:03", "10.200.0.103"
UDP_COUNT = 1000


def _say(text):
    print(f"\n== {text}", flush=True)


def _iperf(client, server, udp=False):
    argv = ["iperf3", "-c", server.ip, "-p", "5299", "-t", "2", "-J"] + (["-u", "-b", "100M"] if udp else [])
    with server.iperf3_server(5299):
        res = client.run(*argv, check=False, timeout=30)
    try:
        end = json.loads(res.stdout)["end"]
    except (ValueError, KeyError):
        return "failed"
    if udp:
        s = end["sum"]
        return f"{s['packets'] - s['lost_packets']}/{s['packets']} datagrams arrived"
    return f"{end['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s"


INSTANCE = "demo"  # the demo's own pins, run dir and daemon: never the host's xdpbr


def main():
    instance.select(INSTANCE)
    failures = []
    with Lab(prefix="xdpbr-demo") as lab:
        _say(f"building namespaces {lab.id}-*: bridge br0, VMs vm1 and vm2 (TAP), container ct1 (veth)")
        lab.make_bridge()
        vm1, vm2, ct1 = lab.vm("vm1"), lab.vm("vm2"), lab.container("ct1")
        lab.wait_forwarding()
        for host in (vm1, vm2, ct1):
            print(f"  {host.name:4} {host.ip:12} port {host.port}")

        _say(f"xdpbr -n {lab.switch} endpoint add br0 {XSK_NAME} --afxdp --mac {XSK_MAC}")
        endpoints.add("br0", lab.switch, XSK_NAME, mac=XSK_MAC)
        _say(f"xdpbr -n {lab.switch} attach br0")
        attachment.attach("br0", lab.switch)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "xdpbr.control.cli", "daemon"], stderr=subprocess.DEVNULL
        )
        xsk = None
        try:
            xsk = _afxdp_guest(lab)
            render.emit(state.show("br0", lab.switch), False, render.show_text)
            _cli("-n", lab.switch, "endpoint", "show", "br0")

            pairs = [(vm1, vm2), (vm1, ct1), (ct1, vm2)]
            _say("ping")
            for a, b in pairs:
                print(f"  {a.name} -> {b.name}: {_verdict(failures, a.ping(b.ip, count=5))}")
            _say("UDP (iperf3, 100 Mbit/s for 2 s)")
            for a, b in pairs:
                print(f"  {a.name} -> {b.name}: {_counted(failures, _iperf(a, b, udp=True))}")
            _say("TCP (iperf3, one stream for 2 s; the guests write TSO super-frames with NEEDS_CSUM)")
            for a, b in pairs:
                print(f"  {a.name} -> {b.name}: {_counted(failures, _iperf(a, b))}")

            _say(f"AF_XDP endpoint {XSK_NAME} ({XSK_IP}): ARP and ping answered by the Python endpoint")
            for a in (ct1, vm1):
                print(f"  {a.name} -> {XSK_NAME}: {_verdict(failures, a.ping(XSK_IP, count=5))}")
            print(f"  {XSK_NAME} answered {xsk.arp_replies} ARP requests and {xsk.echo_replies} pings")
            print(
                f"  {ct1.name} -> {XSK_NAME}: {_counted(failures, _udp_to_endpoint(ct1, xsk))} UDP datagrams"
            )
            back = _counted(failures, _udp_from_endpoint(xsk, ct1))
            print(f"  {XSK_NAME} -> {ct1.name}: {back} UDP datagrams")
            print(f"  socket statistics (XDP_STATISTICS, held by the consumer): {xsk.statistics()}")

            _say(f"xdpbr -n {lab.switch} stats br0   (forward = fast path; every other reason = slow path)")
            render.emit(state.stats("br0", lab.switch), False, render.stats_text)
            _say("per port: packets on the fast path vs handed to the bridge")
            modes = {p["port"]: p["mode"] for p in state.show("br0", lab.switch)[0]["ports"]}
            for port, (fast, slow) in sorted(path_totals(state.stats("br0", lab.switch), modes).items()):
                print(f"  {port:8} {modes.get(port, '?'):7} fast path {fast:9}   bridge {slow:7}")
        finally:
            if xsk:
                xsk.close()
            daemon.terminate()
            daemon.wait(10)
            _say("deleting the endpoint, detaching and removing the namespaces")
            endpoints.delete("br0", lab.switch, XSK_NAME)
            attachment.detach("br0", lab.switch)
    if failures:
        print(f"\nxdpbr demo: {len(failures)} check(s) FAILED", file=sys.stderr)
        return 1
    return 0


def _verdict(failures, ok):
    if not ok:
        failures.append(1)
    return "ok" if ok else "FAILED"


def _counted(failures, result):
    """An iperf3 or datagram result: 'failed', or 'N/M' with under 90 % arrived (UDP may lose a
    few to a busy host; a path that is broken loses them all), is a failure."""
    counts = re.match(r"(\d+)/(\d+)", result)
    if result == "failed" or (counts and int(counts[1]) < 0.9 * int(counts[2])):
        failures.append(1)
        return f"{result} FAILED"
    return result


def _cli(*argv):
    subprocess.run([sys.executable, "-m", "xdpbr.control.cli", *argv], check=False)


def _afxdp_guest(lab):
    """What a VM launcher does: ask the daemon's broker for the endpoint's sockets; the Python
    endpoint then sets up its UMEM and rings on them and binds, as QEMU would."""
    path = socket_path("br0", lab.switch)
    deadline = time.monotonic() + 10
    while True:
        try:
            reply, fds = request(path, XSK_NAME)
            break
        except OSError:  # the daemon is still starting
            if time.monotonic() > deadline:
                raise XdpbrError(f"no broker at {path}", fix="see `xdpbr daemon` errors") from None
            time.sleep(0.1)
    if not reply.get("ok"):
        raise XdpbrError(f"the broker refused {XSK_NAME}: {reply.get('error')}")
    print(f"  broker {path}: {json.dumps(reply)} + {len(fds)} socket(s)")
    return AfxdpEndpoint.adopt(reply, fds, XSK_MAC, XSK_IP).start()


def _udp_to_endpoint(host, xsk):
    script = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"for i in range({UDP_COUNT}): s.sendto(b'x'*64,('{XSK_IP}',4000))\n"
    )
    host.run("python3", "-c", script)
    got, deadline = 0, time.monotonic() + 2
    while got < UDP_COUNT and time.monotonic() < deadline:
        got += sum(1 for f in xsk.take() if f[12:14] == b"\x08\x00" and f[23] == 17)
        time.sleep(0.05)
    return f"{got}/{UDP_COUNT}"


def _udp_from_endpoint(xsk, host):
    proc = host.udp_listener(4001, UDP_COUNT, timeout=1.0)
    try:
        host_mac = host.mac  # one `ip link` call, not one a frame
        frames = [xsk.udp(host_mac, host.ip, b"y" * 64, dport=4001) for _ in range(UDP_COUNT)]
        sent = 0
        for start in range(0, UDP_COUNT, 50):  # paced: the receiver is a Python loop too
            sent += xsk.send(frames[start : start + 50])
            time.sleep(0.005)
        out, _ = proc.communicate(timeout=10)
        return f"{len(out.split())}/{sent}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
