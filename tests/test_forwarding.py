"""End to end: two VMs (TAP endpoints driven by a guest kernel, NEEDS_CSUM and GSO frames
through the vnet header) and two containers (veth, default offloads) on one accelerated bridge.
Ping, UDP and TCP must arrive intact in every mode, and the counters must say which path
carried them."""

import time

import pytest
from xdpbr.control.datapath import attachment, state

from tests.helpers import accelerate, counters, counting
from tests.traffic import tcp_transfer, udp_exchange


def pairs(lab):
    return [(lab.vm1, lab.c1), (lab.c1, lab.vm1), (lab.vm1, lab.vm2), (lab.c1, lab.c2)]


def _everything_arrives(lab):
    for a, b in pairs(lab):
        assert a.ping(b.ip), f"ping {a.name} -> {b.name}"
    for a, b in pairs(lab):
        assert udp_exchange(a, b) == 100, f"UDP {a.name} -> {b.name} lost or corrupted datagrams"
    for a, b in pairs(lab):
        assert tcp_transfer(a, b), f"TCP {a.name} -> {b.name} did not arrive intact"


def _forwards_on_one_attach_point(lab, daemon, mode, hosts):
    """Attach in `mode` (xdp or tc) with a daemon, send everything: each of `hosts`' ports
    forwarded unicast on that attach point, and the other attach point never ran. Returns the
    counters."""
    other = {"xdp": "tc", "tc": "xdp"}[mode]
    accelerate(lab, daemon, mode=mode)
    _everything_arrives(lab)
    c = counters(lab)
    for host in hosts:
        assert c.get((host.port, mode, "forward"), 0) > 0, f"{host.port}: no unicast on the {mode} fast path"
    assert not any(k[1] == other for k in c), f"{mode} mode must not run the {other} program"
    return c


@pytest.mark.root
def test_xdp_mode_forwards_unicast_and_passes_what_xdp_cannot_deliver(bridge_lab, daemon):
    lab = bridge_lab
    c = _forwards_on_one_attach_point(lab, daemon, "xdp", (lab.vm1, lab.c1))
    assert (
        c.get((lab.vm1.port, "xdp", "broadcast"), 0) + c.get((lab.vm1.port, "xdp", "unknown_source"), 0) > 0
    )
    # the guest's TSO super-frames and NEEDS_CSUM frames reached XDP and went to the bridge
    assert c.get((lab.vm1.port, "xdp", "too_long"), 0) > 0
    assert c.get((lab.vm1.port, "xdp", "checksum_partial"), 0) > 0
    assert c.get((lab.c1.port, "xdp", "checksum_partial"), 0) > 0


@pytest.mark.root
def test_tc_mode_forwards_with_offloads_intact(bridge_lab, daemon):
    lab = bridge_lab
    c = _forwards_on_one_attach_point(lab, daemon, "tc", (lab.vm1, lab.vm2, lab.c1, lab.c2))
    assert not any(k[2] == "checksum_partial" for k in c), "TC keeps CHECKSUM_PARTIAL: nothing to pass"


@pytest.mark.root
def test_xdp_tc_mode_hands_gso_and_partial_checksums_from_xdp_to_tc(bridge_lab, daemon):
    lab = bridge_lab
    accelerate(lab, daemon, mode="xdp+tc")
    with counting(lab) as added:
        assert tcp_transfer(lab.vm1, lab.c1)
    port = lab.vm1.port
    passed = added.get((port, "xdp", "too_long"), 0) + added.get((port, "xdp", "checksum_partial"), 0)
    assert passed > 0
    assert added.get((port, "tc", "forward"), 0) >= passed, "TC must forward what XDP passed"
    _everything_arrives(lab)


@pytest.mark.root
def test_auto_mode_runs_tc_on_veth_and_xdp_tc_on_tap(bridge_lab, daemon):
    lab = bridge_lab
    accelerate(lab, daemon)
    ports = {p["port"]: p for p in state.show(lab.bridge, lab.switch)[0]["ports"]}
    assert (ports[lab.c1.port]["mode"], ports[lab.c1.port]["why"]) == ("tc", "auto")
    assert (ports[lab.vm1.port]["mode"], ports[lab.vm1.port]["why"]) == ("xdp+tc", "auto")
    assert ports[lab.vm1.port]["xdp_mode"] == "native"
    # a TAP redirects with XDP into the containers' veths: their peers need NAPI (GRO)
    assert ports[lab.c1.port]["xdp_egress"] and ports[lab.c1.port]["peer_gro_set"]
    _everything_arrives(lab)
    c = counters(lab)
    assert c.get((lab.vm1.port, "xdp", "forward"), 0) > 0
    assert c.get((lab.c1.port, "tc", "forward"), 0) > 0


@pytest.mark.root
def test_container_offloads_are_untouched_in_auto_mode(bridge_lab):
    lab = bridge_lab
    before = lab.c1.run("ethtool", "-k", "eth0").stdout
    attachment.attach(lab.bridge, lab.switch)
    after = lab.c1.run("ethtool", "-k", "eth0").stdout
    changed = [
        (a, b)
        for a, b in zip(before.splitlines(), after.splitlines(), strict=True)
        if a != b and not a.startswith("generic-receive-offload")
    ]
    assert changed == [], "only GRO may change on a container's interface"
    attachment.detach(lab.bridge, lab.switch)
    assert lab.c1.run("ethtool", "-k", "eth0").stdout == before, "detach restores GRO"


@pytest.mark.root
def test_a_learned_mac_is_fast_pathed_and_broadcast_stays_on_the_bridge(bridge_lab, daemon):
    lab = bridge_lab
    accelerate(lab, daemon, mode="xdp")
    with counting(lab) as added:
        assert lab.vm1.ping(lab.vm2.ip, count=5)
    assert added.get((lab.vm1.port, "xdp", "forward"), 0) >= 4
    with counting(lab) as added:
        lab.c2.run("ping", "-c1", "-b", "-W", "1", "10.200.0.255", check=False)
    assert added.get((lab.c2.port, "xdp", "broadcast"), 0) >= 1


@pytest.mark.root
def test_an_egress_qdisc_is_honoured_by_the_tc_fast_path(bridge_lab, daemon):
    lab = bridge_lab
    lab.in_switch(
        "tc",
        "qdisc",
        "add",
        "dev",
        lab.c2.port,
        "root",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "32kb",
        "latency",
        "50ms",
    )
    accelerate(lab, daemon, mode="tc")
    ports = {p["port"]: p for p in state.show(lab.bridge, lab.switch)[0]["ports"]}
    assert ports[lab.c1.port]["peer_redirect"] and not ports[lab.c2.port]["peer_redirect"]
    assert lab.c1.ping(lab.c2.ip)
    start = time.monotonic()
    assert tcp_transfer(lab.c1, lab.c2, nbytes=4 << 20)
    elapsed = time.monotonic() - start
    assert elapsed > 1.0, f"4 MB through a 20 Mbit/s qdisc took {elapsed:.2f} s: the qdisc was bypassed"
    assert counters(lab).get((lab.c1.port, "tc", "forward"), 0) > 0
