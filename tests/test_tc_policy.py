"""tc policy on the ports is honoured as the plain bridge honours it: a shaped egress sees every
frame towards its port, a policed ingress every frame from its port; xdpbr's TC program takes no
qdisc slot (TCX), so a platform adds its qdiscs after attach, and detach leaves them as found.

Shaping and policing are built as libvirt and the CNI bandwidth plugin build them on this kernel
(HTB at the root; `ingress` + u32 + mirred to an IFB with a TBF: there is no `police` action),
and each measurement runs the plain bridge and xdpbr in one lab, one after the other."""

import re
import subprocess
import sys
import time

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.loader.links import Rtnl
from xdpbr.loader.netns import netns_path, nsenter_prefix
from xdpbr.loader.tap import TapEndpoint

from tests import frames as F
from tests.helpers import counters, wait_for

pytestmark = pytest.mark.root

GUEST_A, GUEST_B = "02:00:00:00:7a:01", "02:00:00:00:7b:01"
IP_A, IP_B = "10.200.0.71", "10.200.0.72"
FRAMES, SIZE, WINDOW_S = 4000, 1000, 2.0


def tc(lab, *argv):
    lab.in_switch("tc", *argv)


def tc_state(lab, dev):
    """What `tc` shows of a device's qdiscs and filters, without counters."""
    out = []
    for what in (("qdisc", "show", "dev", dev), ("filter", "show", "dev", dev, "ingress")):
        text = subprocess.run(["tc", "-n", lab.switch, *what], capture_output=True, text=True).stdout
        out.append(re.sub(r"refcnt \d+ ?", "", text))
    return out


@pytest.fixture
def taps(lab):
    """A bridge with a container (c1) and two "VMs" whose TAPs the test drives (ta writes, tb
    reads), the bridge told where each lives."""
    lab.make_bridge()
    lab.c1 = lab.container("c1")
    lab.ta, lab.tb = TapEndpoint("ta", lab.switch), TapEndpoint("tb", lab.switch)
    lab.taps += [lab.ta, lab.tb]
    for dev, mac in (("ta", GUEST_A), ("tb", GUEST_B), (lab.c1.port, None)):
        lab.in_switch("ip", "link", "set", dev, "master", "br0", "up")
        if mac:
            lab.in_switch("bridge", "fdb", "replace", mac, "dev", dev, "master", "static")
    lab.wait_forwarding()
    lab.in_switch("bridge", "fdb", "replace", lab.c1.mac, "dev", lab.c1.port, "master", "static")
    lab.c1.run("ip", "neigh", "replace", IP_A, "lladdr", GUEST_A, "dev", "eth0")
    return lab


def burst_to_tap(lab, marker):
    """FRAMES UDP frames of SIZE bytes written into ta as fast as it takes them, for tb; how
    many tb reads within WINDOW_S."""
    payload = marker + b"x" * (SIZE - len(marker))
    frame = F.ether(GUEST_B, GUEST_A, F.IPV4, F.udp4(IP_A, IP_B, payload, csum="full"))
    started = time.monotonic()
    for _ in range(FRAMES):
        lab.ta.send(frame)
    assert lab.ta.flush(timeout=5.0)
    got, deadline = 0, started + WINDOW_S
    while (left := deadline - time.monotonic()) > 0:
        item = lab.tb.recv(timeout=left)
        if item and marker in item[1]:
            got += 1
    return got


def burst_to_container(lab, marker, port=7300):
    """The same burst from ta to the container c1; datagrams c1 receives within WINDOW_S."""
    listener = lab.c1.udp_listener(port, FRAMES, timeout=WINDOW_S)
    payload = marker + b"x" * (SIZE - len(marker))
    frame = F.ether(lab.c1.mac, GUEST_A, F.IPV4, F.udp4(IP_A, lab.c1.ip, payload, csum="full", dport=port))
    for _ in range(FRAMES):
        lab.ta.send(frame)
    assert lab.ta.flush(timeout=5.0)
    out, _ = listener.communicate(timeout=WINDOW_S + FRAMES * 0.01 + 10)
    return sum(1 for line in out.splitlines() if bytes.fromhex(line).startswith(marker))


def drained(lab, dev):
    """Nothing left in the device's qdiscs (the last burst is gone), read from tb meanwhile."""

    def empty():
        while lab.tb.recv(timeout=0):
            pass
        text = subprocess.run(
            ["tc", "-n", lab.switch, "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True
        ).stdout
        return all(n == "0b" for n in re.findall(r"backlog (\S+)", text))

    assert wait_for(empty, timeout=30), f"{dev}'s queues did not drain"


def within_bound(bridge, xdpbr):
    return xdpbr <= 1.1 * bridge + 20


def shape_egress(lab, dev, rate="2mbit"):
    tc(lab, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
    tc(lab, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate)


def police_ingress(lab, dev, ifb="ifbx", rate="2mbit"):
    """The CNI bandwidth plugin's ingress limit: the port's ingress redirected to an IFB that a
    TBF drains (this kernel has no `police` action)."""
    lab.in_switch("ip", "link", "add", ifb, "type", "ifb")
    lab.in_switch("ip", "link", "set", ifb, "up")
    tc(lab, "qdisc", "add", "dev", ifb, "root", "tbf", "rate", rate, "burst", "32kb", "latency", "400ms")
    tc(lab, "qdisc", "add", "dev", dev, "ingress")
    match_all = ["protocol", "all", "u32", "match", "u32", "0", "0"]
    tc(
        lab,
        "filter",
        "add",
        "dev",
        dev,
        "parent",
        "ffff:",
        *match_all,
        "action",
        "mirred",
        "egress",
        "redirect",
        "dev",
        ifb,
    )


def ports(lab):
    return state.show(lab.bridge, lab.switch)[0]["ports"]


def port(lab, name):
    return next(p for p in ports(lab) if p["port"] == name)


def test_a_port_s_tc_policy_is_read_from_its_qdiscs_and_filters(taps):
    lab = taps
    with Rtnl(lab.switch) as rtnl:
        ports = {p.name: p.ifindex for p in rtnl.ports(rtnl.bridge("br0"))}
        assert rtnl.tc_policy(ports["tb"]) == (None, None), "pfifo_fast 0: is the TAP's default"
        assert rtnl.tc_policy(ports[lab.c1.port]) == (None, None), "noqueue is veth's"
        tc(lab, "qdisc", "replace", "dev", "tb", "root", "handle", "0:", "noqueue")  # libvirt's
        assert rtnl.tc_policy(ports["tb"]) == (None, None)
        shape_egress(lab, "tb")
        assert rtnl.tc_policy(ports["tb"]) == ("qdisc htb 1: root", None)
        police_ingress(lab, "ta")
        egress, ingress = rtnl.tc_policy(ports["ta"])
        assert egress is None and ingress.startswith("filter u32") and ingress.endswith("on ingress")


def test_a_shaped_tap_gets_no_more_than_the_bridge_gives_it(taps):
    lab = taps
    shape_egress(lab, "tb")
    bridge = burst_to_tap(lab, b"bridge")
    drained(lab, "tb")
    attachment.attach(lab.bridge, lab.switch)  # auto: xdp+tc on the TAPs
    tb = port(lab, "tb")
    assert tb["tc_egress_policy"] == "qdisc htb 1: root" and not tb["xdp_egress"]
    accelerated = burst_to_tap(lab, b"xdpbr")
    assert 300 < bridge < FRAMES / 2, f"the HTB did not shape the bridge's frames ({bridge})"
    print(f"delivered in {WINDOW_S} s: bridge {bridge}, xdpbr {accelerated} of {FRAMES}")
    assert within_bound(bridge, accelerated), f"bridge {bridge}, xdpbr {accelerated}"
    added = counters(lab)
    assert added.get(("ta", "xdp", "egress_no_xdp"), 0) > 0 and added.get(("ta", "tc", "forward"), 0) > 0, (
        "XDP hands the frames to TC, whose redirect queues through the HTB"
    )


def test_a_tap_whose_ingress_is_policed_sends_no_more_than_the_bridge_lets_through(taps):
    lab = taps
    police_ingress(lab, "ta")
    bridge = burst_to_container(lab, b"bridge")
    attachment.attach(lab.bridge, lab.switch)  # succeeds beside the `ingress` qdisc
    ta = port(lab, "ta")
    assert ta["tc_ingress_held"] and ta["tc_ingress_policy"].endswith("on ingress")
    accelerated = burst_to_container(lab, b"xdpbr")
    assert bridge < FRAMES / 2, f"the IFB did not limit the bridge's frames ({bridge})"
    print(f"delivered in {WINDOW_S} s: bridge {bridge}, xdpbr {accelerated} of {FRAMES}")
    assert within_bound(bridge, accelerated), f"bridge {bridge}, xdpbr {accelerated}"
    assert counters(lab).get(("ta", "xdp", "tc_ingress"), 0) > 0


def test_xdp_mode_leaves_a_shaped_veth_to_the_bridge(taps):
    lab = taps
    shape_egress(lab, lab.c1.port)
    bridge = burst_to_container(lab, b"bridge")
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    c1 = port(lab, lab.c1.port)
    assert c1["tc_egress_policy"] == "qdisc htb 1: root" and not c1["xdp_egress"]
    accelerated = burst_to_container(lab, b"xdpbr")
    assert bridge < FRAMES / 2, f"the HTB did not shape the bridge's frames ({bridge})"
    print(f"delivered in {WINDOW_S} s: bridge {bridge}, xdpbr {accelerated} of {FRAMES}")
    assert within_bound(bridge, accelerated), f"bridge {bridge}, xdpbr {accelerated}"


def test_a_platform_adds_its_qdiscs_after_attach_and_detach_leaves_them(taps, daemon):
    """libvirt's order: the TAP joins the bridge (under a running daemon), then its `<bandwidth>`
    goes on: `ingress`, a root HTB, the ingress limit. Every command succeeds, the shaping holds,
    and detach leaves every qdisc and filter as it found them."""
    lab = taps
    attachment.attach(lab.bridge, lab.switch)
    daemon()
    assert port(lab, "ta")["tc_attach"] == "tcx"
    late = TapEndpoint("tlate", lab.switch)  # a VM started now: its TAP joins under the daemon
    lab.taps.append(late)
    lab.in_switch("ip", "link", "set", "tlate", "master", "br0", "up")
    assert wait_for(lambda: any(p["port"] == "tlate" and p["tc_attach"] for p in ports(lab)), timeout=2)
    police_ingress(lab, "tlate", ifb="ifblate")  # libvirt's `tc qdisc add dev TAP ingress`: no error
    shape_egress(lab, "tlate")
    assert wait_for(lambda: port(lab, "tlate")["tc_ingress_held"] and port(lab, "tlate")["tc_egress_policy"])
    shape_egress(lab, "tb")
    police_ingress(lab, "ta")  # `tc qdisc add dev ta ingress` among them: no exclusivity error
    assert wait_for(
        lambda: port(lab, "ta")["tc_ingress_held"] and not port(lab, "tb")["xdp_egress"], timeout=2
    )
    before = {dev: tc_state(lab, dev) for dev in ("ta", "tb", "tlate")}
    assert burst_to_container(lab, b"policed") < FRAMES / 2
    attachment.detach(lab.bridge, lab.switch)
    assert {dev: tc_state(lab, dev) for dev in ("ta", "tb", "tlate")} == before


def test_the_qdisc_fallback_uses_ingress_and_an_upgrade_moves_to_tcx(taps, monkeypatch):
    """Where TCX is missing (forced here: this kernel has it) the TC program is a filter on an
    `ingress` qdisc; attaching again with TCX moves every port to a link and removes the qdisc
    xdpbr added, while frames keep flowing."""
    lab = taps
    monkeypatch.setenv("XDPBR_TC_ATTACH", "qdisc")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert {p["tc_attach"] for p in state.show(lab.bridge, lab.switch)[0]["ports"]} == {"qdisc"}
    assert "qdisc ingress ffff:" in tc_state(lab, lab.c1.port)[0]
    monkeypatch.delenv("XDPBR_TC_ATTACH")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert {p["tc_attach"] for p in state.show(lab.bridge, lab.switch)[0]["ports"]} == {"tcx"}
    assert "ingress" not in tc_state(lab, lab.c1.port)[0]
    assert not re.search(r"\S", tc_state(lab, lab.c1.port)[1]), "xdpbr's filter is gone"


def test_without_tcx_a_replaced_ingress_qdisc_gets_xdpbr_s_filter_back_after_theirs(
    taps, daemon, monkeypatch
):
    """libvirt deletes an `ingress` qdisc and adds its own with its filters: the daemon puts
    xdpbr's filter back behind theirs (a higher priority number), the port's frames meet their
    policy, and detach leaves their qdisc and filter."""
    lab = taps
    monkeypatch.setenv("XDPBR_TC_ATTACH", "qdisc")
    attachment.attach(lab.bridge, lab.switch)
    daemon(env={"XDPBR_TC_ATTACH": "qdisc"})
    assert port(lab, "ta")["tc_attach"] == "qdisc"
    tc(lab, "qdisc", "del", "dev", "ta", "ingress")
    police_ingress(lab, "ta")  # theirs: `ingress` again, a u32 filter redirecting to an IFB

    def filters():
        return tc_state(lab, "ta")[1]

    assert wait_for(lambda: " xdpbr " in filters() and port(lab, "ta")["tc_ingress_held"], timeout=2)
    prios = [int(p) for p in re.findall(r"pref (\d+) ", filters())]
    assert prios[-1] == 0xC0DE and min(prios) < 0xC0DE, f"xdpbr's filter is not behind theirs: {filters()}"
    assert burst_to_container(lab, b"policed") < FRAMES / 2
    theirs = tc_state(lab, "ta")
    attachment.detach(lab.bridge, lab.switch)
    after = tc_state(lab, "ta")
    assert after[0] == theirs[0] and " xdpbr " not in after[1] and "u32" in after[1]


def test_an_upgrade_from_the_cls_bpf_attachment_to_tcx_loses_no_frame(two_containers, monkeypatch):
    lab = two_containers
    monkeypatch.setenv("XDPBR_TC_ATTACH", "qdisc")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    monkeypatch.delenv("XDPBR_TC_ATTACH")
    count, port_ = 6000, 7301
    listener = lab.c2.udp_listener(port_, count, timeout=3.0)
    script = (  # paced over about 6 s, so the re-attach (a compile) happens inside it
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range({count}):\n"
        f"    s.sendto(i.to_bytes(4, 'big'), ('{lab.c2.ip}', {port_}))\n"
        "    time.sleep(0.001)\n"
    )
    sender = subprocess.Popen([*nsenter_prefix(netns_path(lab.c1.netns)), sys.executable, "-c", script])
    try:
        assert wait_for(lambda: tc_programs_of(lab, lab.c1.port) == "qdisc" and sender.poll() is None)
        attachment.attach(lab.bridge, lab.switch, mode="tc")
        assert tc_programs_of(lab, lab.c1.port) == "tcx"
    finally:
        try:
            sender.wait(30)
        except subprocess.TimeoutExpired:
            sender.kill()
            sender.wait()
    out, _ = listener.communicate(timeout=30)
    got = {int(line, 16) for line in out.split()}
    assert len(got) == count, f"{count - len(got)} of {count} datagrams lost across the upgrade"
    assert counters(lab).get((lab.c1.port, "tc", "forward"), 0) > 0


def tc_programs_of(lab, name):
    return port(lab, name)["tc_attach"]
