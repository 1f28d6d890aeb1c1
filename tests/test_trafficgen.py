"""The benchmark traffic generator: frames as configured, exact counts sent and received."""

import os
import struct

import pytest

from loader import bpfsys
from testbed.lab import Lab, sh
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


@pytest.mark.root
@pytest.mark.live_frames
def test_what_is_sent_is_counted_exactly_and_received(programs):
    with Lab(prefix="xdpbr-test-gen") as lab:
        a, b = lab.netns("a"), lab.netns("b")
        for ns in (a, b):  # no IPv6 autoconfiguration frames: the sink counts every frame
            for conf in ("all", "default"):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
        sh("ip", "link", "add", "gen0", "netns", a, "type", "veth", "peer", "sink0", "netns", b)
        sh("ip", "-n", a, "link", "set", "gen0", "up")
        sh("ip", "-n", b, "link", "set", "sink0", "up")
        detach = attach_program(b, "sink0", programs.sink.fd)
        try:
            ifindex = int(sh("ip", "-n", a, "-o", "link", "show", "gen0").split(":")[0])
            gen = LiveFrames(programs, a, ifindex, Traffic(**TRAFFIC, size=60, flows=4))
            before = programs.sink_total()
            sent = gen.run_for(5.0, rate=100_000, count=20_000)
            assert sent == gen.sent == 20_000
            # a veth at a modest rate loses nothing: every frame sent arrives
            assert programs.sink_total() - before == 20_000
        finally:
            detach()
