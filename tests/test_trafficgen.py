"""The benchmark traffic generator: frames as configured, exact counts sent and received."""

import contextlib
import json
import os
import struct

import pytest
from xdpbr.loader import bpfsys

from testbed.bounceloop import KICKS, BounceLoop
from testbed.lab import Lab, sh
from testbed.packetgen import PacketFrames, flow_frames
from testbed.trafficgen import BenchPrograms, LiveFrames, Traffic, attach_program

TRAFFIC = dict(src_mac="02:00:00:00:0a:01", dst_mac="02:00:00:00:0a:02", src_ip="10.9.0.1", dst_ip="10.9.0.2")


@pytest.fixture(scope="module")
def programs():
    p = BenchPrograms()
    yield p
    p.close()


@pytest.mark.parametrize("size", [60, 1514])
@pytest.mark.parametrize("vlan", [None, 42])
def test_frames_have_the_size_and_tag_asked_for(size, vlan):
    frame = Traffic(**TRAFFIC, size=size, vlan=vlan).frame()
    assert len(frame) == size
    assert frame[12:14] == (b"\x81\x00" if vlan else b"\x08\x00")
    if vlan:
        assert struct.unpack("!H", frame[14:16])[0] == vlan


def test_sizes_outside_ethernet_are_refused():
    for size in (59, 1515):
        with pytest.raises(ValueError, match="frame size"):
            Traffic(**TRAFFIC, size=size).frame()


@pytest.mark.root
@pytest.mark.parametrize("vlan", [None, 7])
def test_the_generator_cycles_through_the_flows(programs, vlan):
    traffic = Traffic(**TRAFFIC, size=128, flows=3, vlan=vlan)
    programs.configure(traffic)
    frame = traffic.frame()
    ports = []
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the sequence is per CPU
    try:
        for _ in range(6):  # BPF_PROG_TEST_RUN without live frames returns the frame it would send
            verdict, out, _ = bpfsys.prog_test_run(programs.gen.fd, frame)
            assert verdict == 3  # XDP_TX
            assert out[: traffic.sport_offset] == frame[: traffic.sport_offset]
            ports.append(struct.unpack_from("!H", out, traffic.sport_offset)[0])
    finally:
        os.sched_setaffinity(0, cpus)
    # one source port a frame, in turn
    assert all(nxt == 10000 + (prev - 10000 + 1) % 3 for prev, nxt in zip(ports, ports[1:], strict=False))
    assert sorted(set(ports)) == [10000, 10001, 10002]


def _quiet(ns):
    """No IPv6 autoconfiguration frames: the sink counts every frame."""
    for conf in ("all", "default"):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")


@pytest.fixture
def gen_and_sink(programs):
    """(lab, generator namespace, sink namespace): a veth gen0 -> sink0, the XDP sink on sink0."""
    with Lab(prefix="xdpbr-test-gen") as lab:
        a, b = lab.netns("a"), lab.netns("b")
        for ns in (a, b):
            _quiet(ns)
        sh("ip", "link", "add", "gen0", "netns", a, "type", "veth", "peer", "sink0", "netns", b)
        sh("ip", "-n", a, "link", "set", "gen0", "up")
        sh("ip", "-n", b, "link", "set", "sink0", "up")
        detach = attach_program(b, "sink0", programs.sink.fd)
        try:
            yield lab, a, b
        finally:
            detach()


@pytest.mark.root
@pytest.mark.live_frames
def test_what_is_sent_is_counted_exactly_and_received(programs, gen_and_sink):
    _, a, _ = gen_and_sink
    ifindex = int(sh("ip", "-n", a, "-o", "link", "show", "gen0").split(":")[0])
    gen = LiveFrames(programs, a, ifindex, Traffic(**TRAFFIC, size=60, flows=4))
    before = programs.sink_total()
    sent = gen.run_for(5.0, rate=100_000, count=20_000)
    assert sent == gen.sent == 20_000
    # a veth at a modest rate loses nothing: every frame sent arrives
    assert programs.sink_total() - before == 20_000


def test_packet_frames_cycle_through_the_flows():
    traffic = Traffic(**TRAFFIC, size=60, flows=3, vlan=5)
    ports = [struct.unpack_from("!H", f, traffic.sport_offset)[0] for f in flow_frames(traffic)]
    assert ports == [10000, 10001, 10002]


@pytest.mark.root
def test_af_packet_sent_is_counted_exactly_and_received(programs, gen_and_sink):
    _, a, _ = gen_and_sink
    gen = PacketFrames(a, "gen0", Traffic(**TRAFFIC, size=60, flows=4))
    try:
        before = programs.sink_total()
        sent = gen.run_for(5.0, rate=100_000, count=20_000)
    finally:
        gen.close()
    assert sent == gen.sent == 20_000
    assert programs.sink_total() - before == 20_000


@contextlib.contextmanager
def _loop(programs, receivers):
    """A bridge whose ports' peers g0 and `receivers` (s0, t0, ...) share a namespace, the
    bouncer on the receivers: the closed loop of testbed/bounceloop.py, FDB static before any
    frame (each receiver's own MAC, 02:00:00:00:0a:0N, on its port)."""
    with Lab(prefix="xdpbr-test-loop") as lab:
        lab.make_bridge()
        ns = lab.netns("h")
        _quiet(ns)
        for n, ifname in enumerate(["g0", *receivers], start=1):
            port, mac = f"v{ifname[0]}", f"02:00:00:00:0a:0{n}"
            sh("ip", "-n", lab.switch, "link", "add", port, "type", "veth", "peer", ifname, "netns", ns)
            sh("ip", "-n", ns, "link", "set", ifname, "address", mac, "up")
            sh("ip", "-n", lab.switch, "link", "set", port, "master", lab.bridge, "up")
            sh("bridge", "-n", lab.switch, "fdb", "replace", mac, "dev", port, "master", "static")
        lab.wait_forwarding()
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", "vg", "gro", "on")  # ndo_xdp_xmit needs NAPI
        bounce = BounceLoop(programs, ns, "g0", receivers, cpu=0)
        try:
            yield lab, bounce
        finally:
            bounce.close()


@pytest.fixture
def loop(programs):
    with _loop(programs, ["s0"]) as (_, bounce):
        yield bounce


@pytest.mark.root
def test_the_loop_returns_every_frame_it_was_seeded_with(loop):
    traffic = Traffic(**TRAFFIC, size=60, flows=2)
    before = loop.counts()
    w = loop.window(traffic, in_flight=32, seconds=0.3, warmup=0.1)
    after = loop.counts()
    assert w.in_flight == 32
    assert w.lost == 0  # the drain took out all 32
    assert after.drained - before.drained == 32
    assert w.rate > 10_000  # frames went round, through the bridge
    assert after.bounced - before.bounced >= w.rate * w.seconds
    assert set(w.cpu_busy) >= {0}


@pytest.mark.root
def test_frames_lost_from_the_loop_are_counted(loop):
    traffic = Traffic(**TRAFFIC, size=60)
    before = loop.counts()
    w = loop.window(traffic, in_flight=32, seconds=0.2, warmup=0.1, inject_loss=5)
    assert loop.counts().injected - before.injected == 5
    assert w.lost == 5
    # a window that lost frames is measured again, with fewer in flight
    first = loop.counts().injected
    w = loop.measure(traffic, 0.2, in_flight=32, attempts=2, inject_loss=3)
    assert loop.counts().injected - first == 3
    assert (w.attempts, w.in_flight, w.lost) == (2, 24, 0)


@pytest.mark.root
def test_kick_frames_that_flush_a_relay_are_drained_but_not_counted(loop):
    # OVS holds frames in its TX ring until it has more to send: the drain sends kick frames
    # round (drained, like the loop's) and must not count them as the loop's
    traffic = Traffic(**TRAFFIC, size=60)
    loop.kick_frames = 8
    try:
        before = loop.counts()
        w = loop.window(traffic, in_flight=32, seconds=0.2, warmup=0.1)
        assert (w.in_flight, w.lost) == (32, 0)
        assert loop.counts().drained - before.drained == 32 + KICKS * 8
    finally:
        loop.kick_frames = 0


@pytest.mark.root
@pytest.mark.parametrize("relay", ["tap-loop", "afxdp-loop"])
def test_a_relay_fed_by_the_closed_loop_carries_every_frame_round(relay):
    # the relays' feed without live frames: the bouncer sends what endpoint B delivered into
    # endpoint A again, so the relay (a child process) is fed by its own output
    from bench.afxdp import AfxdpLoop
    from bench.taps import TapLoop

    with {"tap-loop": TapLoop, "afxdp-loop": AfxdpLoop}[relay]() as path:
        path.feed = "bounce"
        fig = path.measure(60, 0.5)
    assert (fig["in_flight"], fig["lost"]) == (224, 0)
    assert fig["rate"] > 50_000  # the relays move hundreds of thousands a second here


@pytest.mark.root
def test_the_vm_guests_write_through_the_bridge_and_read_what_arrives():
    # bench/guest.c, compiled by the scenario: guest A writes into TAP A, the bridge forwards,
    # guest B counts what reaches TAP B for it
    from bench.taps import VmPath

    with VmPath(None) as path:
        fig = path.measure(60, 0.5, warmup=0.2)
    assert fig["rate"] > 20_000
    # guest B receives what guest A wrote (rates: a little jitter between the two clocks)
    assert 0.5 * fig["written"] <= fig["rate"] <= 1.1 * fig["written"]
    assert 0 < fig["cpu_busy"] <= 1


def _tx_packets(lab, port):
    out = sh("ip", "-n", lab.switch, "-s", "-j", "link", "show", port)
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


@pytest.mark.root
def test_the_loop_spreads_frames_over_the_destinations_in_turn(programs):
    """The scale scenario's rotation: two destinations behind two ports, each port carries
    half the frames; with the rotation off, the seeded destination keeps them all."""
    with _loop(programs, ["s0", "t0"]) as (lab, bounce):
        traffic = Traffic(**TRAFFIC, size=60)  # seeded towards s0 (02:00:00:00:0a:02)
        bounce.spread(["02:00:00:00:0a:02", "02:00:00:00:0a:03"])
        s0, t0 = _tx_packets(lab, "vs"), _tx_packets(lab, "vt")
        w = bounce.window(traffic, in_flight=32, seconds=0.3, warmup=0.1)
        to_s, to_t = _tx_packets(lab, "vs") - s0, _tx_packets(lab, "vt") - t0
        assert w.lost == 0 and to_s > 1000
        assert 0.8 < to_t / to_s < 1.25  # each destination in turn
        bounce.spread([])
        s0, t0 = _tx_packets(lab, "vs"), _tx_packets(lab, "vt")
        w = bounce.window(traffic, in_flight=32, seconds=0.2, warmup=0.1)
        assert w.lost == 0 and _tx_packets(lab, "vs") - s0 > 1000
        assert _tx_packets(lab, "vt") - t0 < 10  # at most the hosts' own chatter
