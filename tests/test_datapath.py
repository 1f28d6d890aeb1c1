"""The fast path's decisions, one per step of DESIGN.md, on crafted frames (BPF_PROG_TEST_RUN).

Each case gives the map state, a frame, and for each attach point the verdict, the reason
counter that must move by one, and the egress (recorded by the test-only map).
"""

import functools
import os
from dataclasses import dataclass

import pytest
from xdpbr.loader import bpfsys
from xdpbr.loader.layouts import (
    BRIDGE_FDB_FULL,
    PORT_FORWARDING,
    PORT_HAIRPIN,
    PORT_ISOLATED,
    PORT_PEER_REDIRECT,
    PORT_TC_INGRESS,
    PORT_XDP_EGRESS,
    U32,
)

from tests import frames as F
from tests.datapath import BRIDGE_MAC, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_PASS, XDP_REDIRECT, Datapath

A = "02:00:00:00:00:0a"  # a station behind p1
B = "02:00:00:00:00:0b"  # a station behind p2
OK = PORT_FORWARDING | PORT_XDP_EGRESS


@pytest.fixture(scope="module")
def dp():
    datapath = Datapath()
    yield datapath
    datapath.close()


def known(dp, vid=0):
    dp.fdb(A, "p1", vid)
    dp.fdb(B, "p2", vid)


def udp(dst=B, src=A, csum="full", **kw):
    return F.ether(dst, src, F.IPV4, F.udp4("10.0.0.1", "10.0.0.2", csum=csum), **kw)


def tcp(dst=B, src=A, csum="full", options=False, **kw):
    """IPv4 TCP, with IPv4 options in front of the TCP header if `options`."""
    l4 = (F.tcp4_with_options if options else F.tcp4)("10.0.0.1", "10.0.0.2", csum=csum)
    return F.ether(dst, src, F.IPV4, l4, **kw)


def tcp6(csum="full"):
    return F.ether(B, A, F.IPV6, F.tcp6("fd00::1", "fd00::2", csum=csum))


@dataclass
class Case:
    name: str
    frame: object
    outcome: dict  # attach point -> (verdict, reason, egress port or None)
    then: object = None  # dp -> map state beyond the stations
    learned: bool = True  # A behind p1 and B behind p2 are in the mirror first (in VLAN `vid`)
    vid: int = 0
    vlan_filtering: bool = False
    ingress: str = "p1"


# The three outcomes a frame can have
def forwarded(port="p2"):
    """Both attach points redirect the frame to `port`."""
    return {"xdp": (XDP_REDIRECT, "forward", port), "tc": (TC_ACT_REDIRECT, "forward", port)}


def passed(reason):
    """Both attach points hand the frame to the bridge, counted as `reason`."""
    return {"xdp": (XDP_PASS, reason, None), "tc": (TC_ACT_UNSPEC, reason, None)}


def tc_forwards(reason):
    """XDP hands the frame to the bridge, counted as `reason`; TC, which keeps the skb (GSO,
    pending checksums, tag push and pop), forwards it to p2."""
    return {"xdp": (XDP_PASS, reason, None), "tc": (TC_ACT_REDIRECT, "forward", "p2")}


# fmt: off
CASES = [  # a case a line or two, so the table reads down its columns
    Case("known unicast is redirected to its port", udp(), forwarded()),
    Case("a port with a large ifindex is found through the hash", udp(), forwarded(),
         lambda dp: (dp.fdb(A, "p4"), dp.fdb(B, "p2")), learned=False, ingress="p4"),
    Case("frame cut inside its VLAN tag is passed as malformed",
         bytes.fromhex("02000000000b02000000000a8100"), passed("malformed")),
    Case("stale heartbeat passes everything to the bridge", udp(), passed("stale_mirror"),
         lambda dp: dp.stale_heartbeat()),
    Case("netfilter block passes everything", udp(), passed("netfilter"), lambda dp: dp.bridge(flags=1)),
    Case("unknown source is passed so the bridge learns it", udp(), passed("unknown_source"),
         lambda dp: dp.fdb(B, "p2"), learned=False),
    Case("with a full mirror an unknown source is counted as fdb_full", udp(), passed("fdb_full"),
         lambda dp: (dp.fdb(B, "p2"), dp.bridge(flags=BRIDGE_FDB_FULL)), learned=False),
    Case("with a full mirror an unknown destination is counted as fdb_full", udp(dst="02:00:00:00:00:99"),
         passed("fdb_full"), lambda dp: dp.bridge(flags=BRIDGE_FDB_FULL)),
    Case("a full mirror does not stop known stations", udp(), forwarded(),
         lambda dp: dp.bridge(flags=BRIDGE_FDB_FULL)),
    Case("multicast source is passed as malformed", udp(src="03:00:00:00:00:01"), passed("malformed")),
    Case("broadcast is passed for flooding", udp(dst=F.BROADCAST), passed("broadcast")),
    Case("multicast is passed", udp(dst="01:00:5e:00:00:01"), passed("multicast")),
    Case("the bridge's own MAC goes to the host", udp(dst=BRIDGE_MAC), passed("local_destination"),
         lambda dp: dp.fdb(BRIDGE_MAC, 999, local=True)),
    Case("a local port address goes to the host", udp(dst="02:00:00:00:00:99"), passed("local_destination"),
         lambda dp: dp.fdb("02:00:00:00:00:99", "p2", local=True, static=True)),
    Case("unknown destination is passed for flooding", udp(dst="02:00:00:00:00:77"),
         passed("unknown_destination")),
    Case("a port under another tool's tc ingress policy forwards nothing", udp(), passed("tc_ingress"),
         lambda dp: dp.port("p1", flags=OK | PORT_TC_INGRESS)),
    Case("towards a port under tc ingress policy is forwarded (the policy is the sender's)", udp(),
         forwarded(), lambda dp: dp.port("p2", flags=OK | PORT_TC_INGRESS)),
    Case("two isolated ports do not talk directly", udp(), passed("isolated"),
         lambda dp: (dp.port("p1", flags=OK | PORT_ISOLATED), dp.port("p2", flags=OK | PORT_ISOLATED))),
    Case("an isolated port talks to a non-isolated one", udp(), forwarded(),
         lambda dp: dp.port("p1", flags=OK | PORT_ISOLATED)),
    Case("back out of the ingress port without hairpin is passed", udp(dst="02:00:00:00:00:0c"),
         passed("hairpin"), lambda dp: dp.fdb("02:00:00:00:00:0c", "p1")),
    Case("back out of the ingress port with hairpin on is forwarded", udp(dst="02:00:00:00:00:0c"),
         forwarded("p1"),
         lambda dp: (dp.fdb("02:00:00:00:00:0c", "p1"), dp.port("p1", flags=OK | PORT_HAIRPIN))),
    Case("longer than the egress MTU is passed in XDP, forwarded by TC only if GSO", udp(),
         passed("too_long"), lambda dp: dp.port("p2", mtu=40)),
    Case("a TCP checksum left to offload is passed in XDP, forwarded by TC", tcp(csum="partial"),
         tc_forwards("checksum_partial")),
    Case("a UDP checksum left to offload is passed in XDP", udp(csum="partial"),
         tc_forwards("checksum_partial")),
    Case("a complete TCP checksum is forwarded in XDP", tcp(), forwarded()),
    Case("IPv4 options in front of a pending TCP checksum: found and passed in XDP",
         tcp(csum="partial", options=True), tc_forwards("checksum_partial")),
    Case("IPv4 options in front of a complete TCP checksum: forwarded", tcp(options=True), forwarded()),
    Case("a pending checksum behind a VLAN tag is found", tcp(csum="partial", vlan=20),
         tc_forwards("checksum_partial")),
    Case("IPv4 UDP without checksum is forwarded", udp(csum="none"), forwarded()),
    Case("an IPv6 TCP checksum left to offload is passed in XDP", tcp6(csum="partial"),
         tc_forwards("checksum_partial")),
    Case("IPv6 with a complete TCP checksum is forwarded", tcp6(), forwarded()),
    Case("IPv6 extension headers are not walked: passed in XDP",
         F.ether(B, A, F.IPV6, F.ipv6_with_ext("fd00::1", "fd00::2")), tc_forwards("checksum_partial")),
    Case("a truncated TCP header is not known to be complete: passed in XDP",
         F.ether(B, A, F.IPV4, F.tcp4("10.0.0.1", "10.0.0.2")[:30]), tc_forwards("checksum_partial")),
    Case("an egress that cannot take XDP frames is passed in XDP", udp(), tc_forwards("egress_no_xdp"),
         lambda dp: dp.port("p2", flags=PORT_FORWARDING)),
    Case("an empty DEVMAP slot passes instead of dropping", udp(), tc_forwards("redirect_miss"),
         lambda dp: dp.port("p2", devmap=False)),
    Case("TC delivers straight to a veth peer when the egress allows it", udp(), forwarded(),
         lambda dp: dp.port("p2", flags=OK | PORT_PEER_REDIRECT)),
    # VLANs (vlan_filtering on): PVID/untagged access ports and tagged trunks.
    Case("access to access port in the same VLAN is forwarded", udp(), forwarded(),
         lambda dp: (dp.port("p1", pvid=10), dp.vlan("p1", 10, True), dp.vlan("p2", 10, True)), vid=10,
         vlan_filtering=True),
    Case("trunk to trunk keeps the tag", udp(vlan=20), forwarded(),
         lambda dp: (dp.vlan("p1", 20), dp.vlan("p2", 20)), vid=20, vlan_filtering=True),
    Case("access to trunk needs a tag push: XDP passes, TC pushes it", udp(), tc_forwards("vlan_tag_change"),
         lambda dp: (dp.port("p1", pvid=10), dp.vlan("p1", 10, True), dp.vlan("p2", 10)), vid=10,
         vlan_filtering=True),
    Case("trunk to access needs a tag pop: XDP passes, TC pops it", udp(vlan=10),
         tc_forwards("vlan_tag_change"), lambda dp: (dp.vlan("p1", 10), dp.vlan("p2", 10, True)), vid=10,
         vlan_filtering=True),
    Case("untagged frame on a port without PVID is passed", udp(), passed("vlan_mismatch"),
         lambda dp: dp.vlan("p2", 10, True), vid=10, vlan_filtering=True),
    Case("tagged frame for a VLAN the ingress is not in is passed", udp(vlan=30), passed("vlan_mismatch"),
         lambda dp: dp.vlan("p2", 30), vid=30, vlan_filtering=True),
    Case("egress not in the VLAN is passed", udp(vlan=20), passed("vlan_mismatch"),
         lambda dp: dp.vlan("p1", 20), vid=20, vlan_filtering=True),
    Case("the same MAC in another VLAN is unknown", udp(vlan=20), passed("unknown_source"),
         lambda dp: (dp.vlan("p1", 20), dp.vlan("p2", 20)), vid=10, vlan_filtering=True),
    Case("QinQ is not modelled", udp(vlan=20, outer=(0x88A8, 5)), passed("vlan_unsupported"),
         vlan_filtering=True),
    Case("stacked 802.1Q tags are not modelled", udp(vlan=20, outer=(0x8100, 5)), passed("vlan_unsupported"),
         vlan_filtering=True),
    Case("a priority tag (VID 0) is not modelled", udp(vlan=0), passed("vlan_unsupported"),
         lambda dp: dp.port("p1", pvid=10), vid=10, vlan_filtering=True),
    Case("without vlan_filtering a tag is payload: forwarded as it is", udp(vlan=20), forwarded()),
]
# fmt: on

# A port condition the fast path checks twice, on the ingress port (p1) and on the egress
# port (p2), counted under a reason of each side: (what, dp, port -> map state, reasons).
PORT_CONDITIONS = [
    ("unknown to xdpbr", lambda dp, p: dp.remove_port(p), "port_not_accelerated", "egress_not_accelerated"),
    (
        "in bridge mode",
        lambda dp, p: dp.port(p, mode="bridge"),
        "port_not_accelerated",
        "egress_not_accelerated",
    ),
    ("not forwarding (STP)", lambda dp, p: dp.port(p, flags=PORT_XDP_EGRESS), "port_state", "egress_state"),
]
CASES += [
    Case(f"{side} port {what} is passed", udp(), passed(reason), functools.partial(make, p=port))
    for what, make, *reasons in PORT_CONDITIONS
    for side, port, reason in zip(("ingress", "egress"), ("p1", "p2"), reasons, strict=True)
]


def _check(dp, case, attach, run):
    dp.reset(vlan_filtering=case.vlan_filtering)
    if case.learned:
        known(dp, case.vid)
    if case.then:
        case.then(dp)
    verdict, reason, egress = case.outcome[attach]
    # frames of an interface that is no port are counted in slot 0
    counter_port = None if case.name.startswith("ingress port unknown") else case.ingress
    before = dp.counter(counter_port, attach, reason)
    got, _ = run(case.frame, case.ingress)
    assert got == verdict, f"{case.name}: {attach} verdict {got}, want {verdict}"
    assert dp.counter(counter_port, attach, reason) == before + 1, (
        f"{case.name}: {attach} {reason} not counted"
    )
    assert dp.egress() == (dp.ifindex[egress] if egress else 0), f"{case.name}: {attach} egress"


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_xdp_decision(dp, case):
    _check(dp, case, "xdp", dp.run_xdp)


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tc_decision(dp, case):
    _check(dp, case, "tc", dp.run_tc)


@pytest.mark.root
def test_source_move_invalidates_the_old_entry(dp):
    dp.reset()
    known(dp)
    before = dp.counter("p3", "xdp", "source_moved")
    got, _ = dp.run_xdp(udp(dst=B, src=A), ingress="p3")
    assert got == XDP_PASS
    assert dp.counter("p3", "xdp", "source_moved") == before + 1
    assert dp.fdb_entry(A) is None, "a moved MAC must not stay mirrored on its old port"
    # frames to A now take the slow path instead of going to the old port
    got, _ = dp.run_xdp(udp(dst=A, src=B), ingress="p2")
    assert got == XDP_PASS


@pytest.mark.root
def test_static_entry_is_not_invalidated_by_a_spoofed_source(dp):
    dp.reset()
    dp.fdb(A, "p1", static=True)
    dp.fdb(B, "p2")
    got, _ = dp.run_tc(udp(dst=B, src=A), ingress="p3")
    assert got == TC_ACT_UNSPEC
    assert dp.fdb_entry(A) is not None and dp.fdb_entry(A).ifindex == dp.ifindex["p1"]


@pytest.mark.root
def test_fast_path_use_stamps_the_source_entry(dp):
    dp.reset()
    known(dp)
    assert dp.fdb_entry(A).last_seen == 0
    got, _ = dp.run_xdp(udp())
    assert got == XDP_REDIRECT
    assert dp.fdb_entry(A).last_seen > 0


@pytest.mark.root
def test_tc_forwards_gso_frames_longer_than_the_mtu(dp):
    dp.reset()
    known(dp)
    dp.port("p2", mtu=40)
    got, _ = dp.run_tc(udp(), gso_size=20)
    assert got == TC_ACT_REDIRECT


@pytest.mark.root
def test_tc_pushes_the_tag_an_egress_trunk_needs(dp):
    dp.reset(vlan_filtering=True)
    known(dp, 10)
    dp.port("p1", pvid=10)
    dp.vlan("p1", 10, True)
    dp.vlan("p2", 10)
    before = dp.counter("p1", "tc", "forward")
    got, _ = dp.run_tc(udp())
    # bpf_skb_vlan_push puts the tag in skb metadata, which PROG_TEST_RUN does not return:
    # what is checked here is that TC forwards instead of passing with vlan_tag_change.
    assert got == TC_ACT_REDIRECT
    assert dp.counter("p1", "tc", "forward") == before + 1


@pytest.mark.root
def test_tc_pops_the_tag_for_an_access_egress(dp):
    dp.reset(vlan_filtering=True)
    known(dp, 10)
    dp.vlan("p1", 10)
    dp.vlan("p2", 10, True)
    got, out = dp.run_tc(udp(vlan=10))
    assert got == TC_ACT_REDIRECT
    assert out == udp(), "the egress frame must be untagged"


@pytest.fixture
def one_cpu():
    """The flow cache is per CPU: keep the test runs on one."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    yield
    os.sched_setaffinity(0, saved)


@pytest.mark.root
def test_the_flow_cache_serves_repeated_frames(dp, one_cpu):
    dp.reset()
    known(dp)
    assert dp.run_xdp(udp())[0] == XDP_REDIRECT
    # an FDB write without a generation bump is invisible to a cached decision: this is what
    # makes the bump in FdbMirror.sync necessary, and shows the cache is in use
    count = U32()
    bpfsys.map_lookup(dp.fd["xdpbr_generation"], U32(0), count)
    dp.fdb(B, "p3")
    bpfsys.map_update(dp.fd["xdpbr_generation"], U32(0), count)
    dp.set_egress(0)
    assert dp.run_xdp(udp())[0] == XDP_REDIRECT
    assert dp.egress() == dp.ifindex["p2"], "a cache hit keeps the decision it cached"


@pytest.mark.root
@pytest.mark.parametrize("attach", ["xdp", "tc"])
def test_a_cached_flow_follows_the_control_planes_fdb_changes(dp, one_cpu, attach):
    run = dp.run_xdp if attach == "xdp" else dp.run_tc
    dp.reset()
    known(dp)
    run(udp())
    run(udp())
    assert dp.egress() == dp.ifindex["p2"]
    dp.fdb(B, "p3")  # with the generation bump, as FdbMirror.sync does
    dp.set_egress(0)
    run(udp())
    assert dp.egress() == dp.ifindex["p3"], "a stale cached decision was used"


@pytest.mark.root
def test_a_move_the_fast_path_sees_invalidates_cached_flows(dp, one_cpu):
    dp.reset()
    known(dp)
    dp.run_xdp(udp())  # A -> B cached: B is behind p2
    assert dp.egress() == dp.ifindex["p2"]
    # B shows up behind p3: the fast path forgets it and bumps its own generation
    assert dp.run_xdp(udp(dst=A, src=B), ingress="p3")[0] == XDP_PASS
    before = dp.counter("p1", "xdp", "unknown_destination")
    dp.set_egress(0)
    assert dp.run_xdp(udp())[0] == XDP_PASS, "frames to a moved MAC must not go to its old port"
    assert dp.egress() == 0
    assert dp.counter("p1", "xdp", "unknown_destination") == before + 1
