"""The TAP endpoint behaves like QEMU's TAP backend, and what a virtio guest writes through it
(NEEDS_CSUM, GSO) crosses an accelerated bridge intact."""

import socket
import struct
import subprocess
import time

import pytest
from xdpbr.control.datapath import attachment
from xdpbr.loader.netns import entered
from xdpbr.loader.tap import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    TapEndpoint,
    VnetHdr,
)

from tests import frames as F
from tests.helpers import counters
from tests.traffic import packet_socket

VIRTIO_NET_HDR_GSO_UDP_L4 = 5
TAP_MAC = "02:00:00:00:77:01"
TAP_IP = "10.200.0.77"


@pytest.fixture
def tap_lab(lab):
    lab.make_bridge()
    lab.c1 = lab.container("c1")
    lab.tap = TapEndpoint("tapx", lab.switch)
    lab.taps.append(lab.tap)
    lab.in_switch("ip", "link", "set", "tapx", "master", "br0", "up")
    lab.wait_forwarding()
    # the container knows the "guest" without ARP, and the bridge knows where both live
    lab.c1.run("ip", "neigh", "add", TAP_IP, "lladdr", TAP_MAC, "dev", "eth0")
    lab.in_switch("bridge", "fdb", "replace", TAP_MAC, "dev", "tapx", "master", "static")
    lab.in_switch("bridge", "fdb", "replace", lab.c1.mac, "dev", lab.c1.port, "master", "static")
    return lab


def udp_socket(lab, port):
    with entered(lab.c1.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((lab.c1.ip, port))
    s.settimeout(2)
    return s


def udp_frame(lab, payload, csum, port):
    l4 = F.udp4(TAP_IP, lab.c1.ip, payload, csum=csum, sport=4000, dport=port)
    return F.ether(lab.c1.mac, TAP_MAC, F.IPV4, l4)


@pytest.mark.root
def test_tap_is_opened_like_qemu_does(tap_lab):
    out = subprocess.run(
        ["ip", "-n", tap_lab.switch, "-d", "link", "show", "tapx"], capture_output=True, text=True
    ).stdout
    assert "tun type tap pi off vnet_hdr on" in out


@pytest.mark.root
@pytest.mark.parametrize("mode", ["xdp", "tc", "xdp+tc", "auto"])
def test_a_needs_csum_frame_from_the_guest_arrives_with_a_valid_checksum(tap_lab, mode):
    lab = tap_lab
    attachment.attach(lab.bridge, lab.switch, mode=mode)
    rx = udp_socket(lab, 6000)
    payload = b"needs-csum" * 50
    frame = udp_frame(lab, payload, "partial", 6000)
    hdr = VnetHdr(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=14 + 20, csum_offset=6)
    assert lab.tap.send(frame, hdr)
    assert rx.recv(4096) == payload
    rx.close()
    if mode in ("xdp", "xdp+tc", "auto"):
        assert counters(lab).get(("tapx", "xdp", "checksum_partial"), 0) == 1
    if mode in ("tc", "xdp+tc", "auto"):
        assert counters(lab).get(("tapx", "tc", "forward"), 0) == 1


@pytest.mark.root
@pytest.mark.parametrize("mode", ["xdp", "xdp+tc"])
def test_a_gso_super_frame_from_the_guest_arrives_as_whole_datagrams(tap_lab, mode):
    lab = tap_lab
    attachment.attach(lab.bridge, lab.switch, mode=mode)
    rx = udp_socket(lab, 6001)
    segment, count = 1400, 14
    payload = bytes(range(256)) * (segment * count // 256) + b"\0" * (segment * count % 256)
    frame = udp_frame(lab, payload, "partial", 6001)
    # a 20 KB UDP super-frame (USO): the kernel cuts it into `count` datagrams of `segment` bytes
    hdr = VnetHdr(
        flags=VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type=VIRTIO_NET_HDR_GSO_UDP_L4,
        hdr_len=14 + 20 + 8,
        gso_size=segment,
        csum_start=14 + 20,
        csum_offset=6,
    )
    assert lab.tap.send(frame, hdr)
    got = [rx.recv(4096) for _ in range(count)]
    rx.close()
    assert b"".join(got) == payload
    assert counters(lab).get(("tapx", "xdp", "too_long"), 0) == 1, (
        "XDP must hand the super-frame on, not redirect it"
    )


@pytest.mark.root
def test_frames_xdp_redirects_into_the_tap_carry_complete_checksums(tap_lab):
    lab = tap_lab
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    # a frame with its checksum complete (as from a NIC without offload): XDP may redirect it
    frame = F.ether(TAP_MAC, lab.c1.mac, F.IPV4, F.udp4(lab.c1.ip, TAP_IP, b"to-the-guest", csum="full"))
    with packet_socket(lab.c1.netns, "eth0", receive=False) as tx:
        tx.send(frame)
    got, deadline = None, time.monotonic() + 5.0
    while got is None and time.monotonic() < deadline:  # matched by content: other frames may come first
        item = lab.tap.recv(timeout=max(0.01, deadline - time.monotonic()))
        if item and item[1] == frame:
            got = item
    assert got, "the frame did not reach the TAP intact"
    hdr, _ = got
    assert hdr.flags == 0 and hdr.gso_type == 0, "an XDP frame carries no offload metadata"
    udp = frame[34:]
    assert F.csum16(frame[26:34] + struct.pack("!HH", 17, len(udp)) + udp) == 0xFFFF
    assert counters(lab).get((lab.c1.port, "xdp", "forward"), 0) == 1


@pytest.mark.root
def test_eagain_queues_frames_until_the_tap_is_writable(tap_lab):
    lab = tap_lab
    rx = udp_socket(lab, 6002)
    # A slow egress holds written frames (and the TAP's send buffer) like a busy host does:
    # with QEMU's sndbuf= small, the next write says EAGAIN until the kernel lets go.
    lab.in_switch(
        "tc",
        "qdisc",
        "add",
        "dev",
        lab.c1.port,
        "root",
        "tbf",
        "rate",
        "8kbit",
        "burst",
        "100",
        "latency",
        "10s",
    )
    lab.tap.set_sndbuf(2048)  # room for a couple of frames in flight
    bodies = [f"frame-{i}".encode() for i in range(8)]
    results = [lab.tap.send(udp_frame(lab, body, "full", 6002)) for body in bodies]
    assert results[0] is True
    assert False in results, "a full send buffer must give EAGAIN"
    first_queued = results.index(False)
    assert all(r is False for r in results[first_queued:]), "after EAGAIN later frames queue behind, in order"
    assert lab.tap.eagain >= 1 and len(lab.tap.backlog) == len(bodies) - first_queued
    assert lab.tap.flush(timeout=5.0), "POLLOUT must come once the kernel frees the buffer"
    assert [rx.recv(100) for _ in bodies] == bodies
    rx.close()
