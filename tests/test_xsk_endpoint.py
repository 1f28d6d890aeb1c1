"""The Python AF_XDP endpoint: ARP and ping answered as a guest kernel would (crafted frames),
and, on a real bridge, two AF_XDP endpoints, a TAP endpoint and a container talking."""

import socket
import struct

import pytest
from xdpbr.loader.packets import csum16, ether, ipv4, mac, udp4
from xdpbr.loader.xsk_endpoint import AfxdpEndpoint

from tests.helpers import accelerate, wait_for

GUEST_MAC, GUEST_IP = "52:54:00:00:00:51", "10.200.0.51"
PEER_MAC, PEER_IP = "02:00:00:00:00:61", "10.200.0.61"


def arp_request(target_ip, op=1):
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac(PEER_MAC), socket.inet_aton(PEER_IP), bytes(6),
        socket.inet_aton(target_ip),
    )  # fmt: skip
    return ether("ff:ff:ff:ff:ff:ff", PEER_MAC, 0x0806, arp)


def echo_request(dst_mac=GUEST_MAC, dst_ip=GUEST_IP, payload=b"0123456789abcdef", corrupt=False):
    body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 7) + payload
    body = body[:2] + struct.pack("!H", (0xFFFF ^ csum16(body)) ^ (1 if corrupt else 0)) + body[4:]
    return ether(dst_mac, PEER_MAC, 0x0800, ipv4(PEER_IP, dst_ip, 1, body) + body)


@pytest.fixture
def guest():
    return AfxdpEndpoint([], GUEST_MAC, GUEST_IP)  # no sockets: answer() alone


def test_an_arp_request_for_its_address_gets_a_reply(guest):
    reply = guest.answer(arp_request(GUEST_IP))
    assert reply[:6] == mac(PEER_MAC) and reply[6:12] == mac(GUEST_MAC) and reply[12:14] == b"\x08\x06"
    op, sha, spa, tha, tpa = struct.unpack_from("!6xH6s4s6s4s", reply, 14)
    assert (op, sha, spa) == (2, mac(GUEST_MAC), socket.inet_aton(GUEST_IP))
    assert (tha, tpa) == (mac(PEER_MAC), socket.inet_aton(PEER_IP))
    assert guest.arp_replies == 1


@pytest.mark.parametrize("frame", [arp_request("10.200.0.99"), arp_request(GUEST_IP, op=2)])
def test_other_arp_is_not_answered(guest, frame):
    assert guest.answer(frame) is None


def test_an_echo_request_gets_a_reply_with_the_same_payload_and_valid_checksums(guest):
    reply = guest.answer(echo_request())
    assert reply[:6] == mac(PEER_MAC) and reply[6:12] == mac(GUEST_MAC)
    ip, icmp = reply[14:34], reply[34:]
    assert (
        csum16(ip) == 0xFFFF
        and ip[12:16] == socket.inet_aton(GUEST_IP)
        and ip[16:20] == socket.inet_aton(PEER_IP)
    )
    assert icmp[0] == 0 and csum16(icmp) == 0xFFFF
    assert icmp[4:] == echo_request()[38:]  # identifier, sequence and payload unchanged
    assert guest.echo_replies == 1


@pytest.mark.parametrize(
    "frame",
    [
        echo_request(corrupt=True),  # bad ICMP checksum
        echo_request(dst_ip="10.200.0.99"),  # not our address
        echo_request(dst_mac=PEER_MAC),  # not our MAC
        echo_request()[:40],  # truncated
        b"\x00" * 13,
        b"",
    ],
)
def test_malformed_or_foreign_frames_are_not_answered(guest, frame):
    assert guest.answer(frame) is None


def test_without_an_address_nothing_is_answered():
    assert AfxdpEndpoint([], GUEST_MAC).answer(arp_request(GUEST_IP)) is None


# --- on a real bridge ------------------------------------------------------------------------

G1, IP1 = "52:54:00:00:00:71", "10.200.0.71"
G2, IP2 = "52:54:00:00:00:72", "10.200.0.72"
G3 = "52:54:00:00:00:73"  # the TAP endpoint's guest


def forwarded(lab, port):
    from xdpbr.control.datapath import state

    return state.forwarded(lab.bridge, lab.switch, port)


def udp_payloads(frames, dport):
    """The payloads of IPv4/UDP frames to `dport` whose IP and UDP checksums are right."""
    out = []
    for f in frames:
        if (
            len(f) < 42
            or f[12:14] != b"\x08\x00"
            or f[23] != 17
            or struct.unpack_from("!H", f, 36)[0] != dport
        ):
            continue
        ip, length = f[14:34], struct.unpack_from("!H", f, 38)[0]
        udp = f[34 : 34 + length]
        pseudo = ip[12:20] + struct.pack("!HH", 17, length)
        assert csum16(ip) == 0xFFFF and csum16(pseudo + udp) == 0xFFFF, "checksum broken on the way"
        out.append(udp[8:])
    return out


@pytest.fixture
def guests(two_containers, daemon):
    """Bridge br0: containers c1, c2; AF_XDP endpoints vm1 and vm2 served by Python endpoints
    that got their sockets from the daemon's broker; TAP endpoint vm3 opened as QEMU does."""
    import os

    from xdpbr.control.endpoints import lifecycle as endpoints
    from xdpbr.control.endpoints.client import request, socket_path
    from xdpbr.loader.tap import TapEndpoint

    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)  # the bridge learns the containers
    made, lab.guests = [], {}
    try:
        for name, guest_mac, path in (("vm1", G1, "afxdp"), ("vm2", G2, "afxdp"), ("vm3", G3, "tap")):
            endpoints.add(lab.bridge, lab.switch, name, mac=guest_mac, path=path)
            made.append(name)
        lab.guests["vm3"] = TapEndpoint("vm3", lab.switch)  # the persistent TAP, by name: carrier
        lab.wait_forwarding()
        accelerate(lab, daemon)
        sock = socket_path(lab.bridge, lab.switch)
        assert wait_for(lambda: os.path.exists(sock)), "no broker socket"
        for name, guest_mac, ip in (("vm1", G1, IP1), ("vm2", G2, IP2)):
            reply, fds = request(sock, name)
            assert reply["ok"], reply
            lab.guests[name] = AfxdpEndpoint.adopt(reply, fds, guest_mac, ip).start()
        yield lab
    finally:
        for guest in lab.guests.values():
            guest.close()
        for name in made:
            endpoints.delete(lab.bridge, lab.switch, name)


@pytest.mark.root
def test_containers_ping_the_python_afxdp_endpoints_on_the_fast_path(guests):
    lab = guests
    vm1, vm2 = lab.guests["vm1"], lab.guests["vm2"]
    before = {port: forwarded(lab, port) for port in (lab.c1.port, "vm1-p", "vm2-p")}
    assert lab.c1.ping(IP1, count=5)  # ARP first: answered by the endpoint
    assert lab.c2.ping(IP2, count=5)
    assert vm1.arp_replies >= 1 and vm2.arp_replies >= 1
    assert vm1.echo_replies >= 5 and vm2.echo_replies >= 5
    assert forwarded(lab, lab.c1.port) >= before[lab.c1.port] + 4  # requests: fast path
    assert forwarded(lab, "vm1-p") >= before["vm1-p"] + 4  # replies: fast path
    assert forwarded(lab, "vm2-p") >= before["vm2-p"] + 4


@pytest.mark.root
def test_udp_both_ways_between_a_container_and_an_afxdp_endpoint_arrives_intact(guests):
    lab = guests
    vm1 = lab.guests["vm1"]
    payloads = [f"to-vm1-{i:03d}".encode() * (1 + i % 20) for i in range(50)]
    before_c1, before_vm1 = forwarded(lab, lab.c1.port), forwarded(lab, "vm1-p")
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"[s.sendto(f'to-vm1-{{i:03d}}'.encode()*(1+i%20),('{IP1}',4000)) for i in range(50)]\n"
    )
    assert lab.c1.ping(IP1, count=1)  # ARP first: frames queued on an unresolved neighbour
    lab.c1.run("python3", "-c", script)  # may leave after later ones (seen in a fresh-host run)
    got = []
    assert wait_for(lambda: len(got.__iadd__(udp_payloads(vm1.take(), 4000))) >= 50)
    assert sorted(got) == sorted(payloads)  # each one intact, none lost or extra; UDP has no order
    assert forwarded(lab, lab.c1.port) >= before_c1 + 50  # container -> endpoint: fast path

    # endpoint -> container: a real UDP socket in c1 receives every datagram
    proc = lab.c1.udp_listener(4001, 50)
    try:
        back = [f"to-c1-{i:03d}" * (1 + i % 20) for i in range(50)]
        c1_mac = lab.c1.mac
        frames = [vm1.udp(c1_mac, lab.c1.ip, p.encode(), dport=4001) for p in back]
        assert vm1.send(frames) == 50
        assert [bytes.fromhex(proc.stdout.readline()).decode() for _ in range(50)] == back
    finally:
        proc.kill()
        proc.wait()
    assert forwarded(lab, "vm1-p") >= before_vm1 + 50  # endpoint -> container: fast path


@pytest.mark.root
def test_frames_between_two_afxdp_endpoints_and_a_tap_endpoint_arrive_intact(guests):
    lab = guests
    vm1, vm2, tap = lab.guests["vm1"], lab.guests["vm2"], lab.guests["vm3"]
    ours = lambda dst: lambda f: f[:6] == mac(dst)  # noqa: E731 (not the hosts' multicast)
    # AF_XDP -> AF_XDP, both ways
    to_vm2 = [vm1.udp(G2, IP2, b"a" * (10 + i)) for i in range(40)]
    to_vm1 = [vm2.udp(G1, IP1, b"b" * (10 + i)) for i in range(40)]
    before = forwarded(lab, "vm1-p"), forwarded(lab, "vm2-p")
    assert vm1.send(to_vm2) == 40 and vm2.send(to_vm1) == 40
    got2, got1 = [], []
    assert wait_for(lambda: len(got2.__iadd__(vm2.take(ours(G2)))) >= 40)
    assert wait_for(lambda: len(got1.__iadd__(vm1.take(ours(G1)))) >= 40)
    assert (got2, got1) == (to_vm2, to_vm1)
    assert forwarded(lab, "vm1-p") >= before[0] + 40 and forwarded(lab, "vm2-p") >= before[1] + 40
    # TAP (vnet header, writev) -> AF_XDP, and back
    from_tap = [ether(G1, G3, 0x0800, udp4("10.200.0.73", IP1, bytes([i]) * 30)) for i in range(20)]
    for frame in from_tap:
        assert tap.send(frame)
    got = []
    assert wait_for(lambda: len(got.__iadd__(vm1.take(ours(G1)))) >= 20)
    assert got == from_tap
    to_tap = [vm1.udp(G3, "10.200.0.73", bytes([i]) * 50) for i in range(20)]
    assert vm1.send(to_tap) == 20
    seen = []
    while len(seen) < 20:
        item = tap.recv(timeout=2)
        assert item is not None, f"only {len(seen)} of 20 frames reached the TAP endpoint"
        if item[1][:6] == mac(G3):
            seen.append(item[1])
    assert seen == to_tap
    assert vm1.statistics()["rx_dropped"] == 0
