"""AF_XDP sockets driven from Python: frames in through an XSKMAP redirect, frames out of TX."""

import select

import pytest
from xdpbr.loader.afxdp import XskRedirect, XskSocket, new_socket
from xdpbr.loader.errors import XdpbrError

from testbed.frames import udp_frame
from testbed.lab import Lab, sh
from testbed.trafficgen import attach_program
from tests.traffic import frames_on, packet_socket, xsk_frames

EP_MAC, PEER_MAC = "02:00:00:00:0c:01", "02:00:00:00:0c:02"


@pytest.fixture(params=["handed-over", "libxdp"])
def endpoint(request):
    """A veth `xep` (namespace A) with the XSKMAP program and a bound socket on queue 0, set up
    by hand as a VMM does with a handed-over fd, or made by libxdp; its peer `xpeer` in
    namespace B with an AF_PACKET socket."""
    with Lab(prefix="xdpbr-test-xsk") as lab:
        a, b = lab.netns("a"), lab.netns("b")
        sh(
            "ip",
            "link",
            "add",
            "xep",
            "netns",
            a,
            "address",
            EP_MAC,
            "type",
            "veth",
            "peer",
            "xpeer",
            "netns",
            b,
        )
        sh("ip", "-n", b, "link", "set", "xpeer", "address", PEER_MAC)
        for ns, ifname in ((a, "xep"), (b, "xpeer")):
            # no IPv6 chatter: the kernel's own MLD report leaves xep from EP_MAC too, and a
            # test that reads what leaves xep would count it among the socket's frames
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        redirect = XskRedirect()
        detach = attach_program(a, "xep", redirect.prog.fd)
        if request.param == "libxdp":
            xsk = XskSocket.create("xep", 0, netns=a)
            redirect.put(0, xsk.sock)
        else:
            sock = new_socket(a)
            redirect.put(0, sock)  # into the map before it is bound, as the broker does
            ifindex = int(sh("ip", "-n", a, "-o", "link", "show", "xep").split(":")[0])
            xsk = XskSocket(sock, ifindex, 0)
        peer = packet_socket(b, "xpeer")
        try:
            yield xsk, peer, a
        finally:
            peer.close()
            xsk.close()
            detach()
            redirect.close()


@pytest.mark.root
def test_frames_redirected_to_the_socket_arrive_intact(endpoint):
    xsk, peer, _ = endpoint
    frames = [udp_frame(EP_MAC, PEER_MAC, "10.9.0.2", "10.9.0.1", size) for size in (60, 200, 1514)]
    for frame in frames:
        peer.send(frame)
    assert xsk_frames(xsk, len(frames)) == frames


@pytest.mark.root
def test_frames_sent_on_the_tx_ring_leave_the_interface(endpoint):
    xsk, peer, _ = endpoint
    frames = [udp_frame(PEER_MAC, EP_MAC, "10.9.0.1", "10.9.0.2", 60 + i) for i in range(64)]
    assert xsk.send(frames) == len(frames)
    assert frames_on(peer, len(frames), src=EP_MAC) == frames
    xsk.reclaim()
    assert xsk.statistics()["tx_invalid_descs"] == 0


@pytest.mark.root
def test_many_frames_in_batches_with_the_buffers_recycled(endpoint):
    xsk, peer, _ = endpoint
    total, got = 5000, 0  # more than the fill ring holds: buffers must come back
    frame = udp_frame(EP_MAC, PEER_MAC, "10.9.0.2", "10.9.0.1", 60)
    for i in range(total):
        peer.send(frame)
        if i % 256 == 255:
            got += len(xsk.recv())
    for _ in range(50):
        got += len(xsk.recv(timeout=0.02))
        if got >= total:
            break
    stats = xsk.statistics()
    assert got + stats["rx_dropped"] + stats["rx_ring_full"] + stats["rx_fill_ring_empty_descs"] >= total
    assert got >= total * 0.9, stats


@pytest.mark.root
def test_a_busy_queue_is_retried_briefly_then_refused_with_the_fix(endpoint):
    _, _, netns = endpoint
    with pytest.raises(XdpbrError, match="queue 0.*EBUSY.*another socket bound there"):
        XskSocket.create("xep", 0, netns=netns)


@pytest.mark.root
@pytest.mark.parametrize("how", ["handed-over", "libxdp"])
def test_a_relay_over_a_shared_umem_forwards_descriptors_and_frames_arrive_intact(how):
    """Endpoint A's RX to endpoint B's TX without a copy (XDP_SHARED_UMEM), as afxdp-loop does."""
    from xdpbr.loader.afxdp import forward

    with Lab(prefix="xdpbr-test-xskfwd") as lab:
        ns = lab.netns("x")
        for gen, vmm in (("ga", "xa"), ("gb", "xb")):
            sh("ip", "-n", ns, "link", "add", gen, "type", "veth", "peer", vmm)
            for ifname in (gen, vmm):
                sh("ip", "-n", ns, "link", "set", ifname, "up")
        redirect = XskRedirect()
        detach = attach_program(ns, "xa", redirect.prog.fd)
        index = {n: int(sh("ip", "-n", ns, "-o", "link", "show", n).split(":")[0]) for n in ("xa", "xb")}
        if how == "libxdp":  # xsk_socket__create, then xsk_socket__create_shared
            a = XskSocket.create("xa", 0, netns=ns)
            b = XskSocket.create("xb", 0, netns=ns, share=a)
        else:
            a = XskSocket(new_socket(ns), index["xa"], 0)
            b = XskSocket(new_socket(ns), index["xb"], 0, share=a)
        redirect.put(0, a.sock)
        ga, gb = packet_socket(ns, "ga", receive=False), packet_socket(ns, "gb")
        try:
            frames = [udp_frame(PEER_MAC, EP_MAC, "10.9.0.1", "10.9.0.2", 60 + i) for i in range(100)]
            for frame in frames:
                ga.send(frame)
            moved = 0
            for _ in range(100):
                moved += forward(a, b)
                if moved >= len(frames):
                    break
                select.select([a.fd], [], [], 0.01)
            assert moved >= len(frames)  # and maybe the links' own IPv6 multicast
            assert frames_on(gb, len(frames), dst=PEER_MAC) == frames
        finally:
            ga.close()
            gb.close()
            b.close()
            a.close()
            detach()
            redirect.close()
