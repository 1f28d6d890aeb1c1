"""`--netfilter respect` against real rules in the bridge's namespace: exactly the ports a rule
can see stay on the Linux bridge (and the rule still applies to their frames), the others
keep the fast path, and rules that see nothing hold nothing. Frames are counted on the far
side and on the fast path's own counters."""

import os
import socket
import subprocess

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.loader.netns import entered

from tests.helpers import WAIT_S, accelerate, wait_for, xdpbr

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/sys/net/bridge"), reason="br_netfilter is not loaded: bridges call no ip hooks"
)


def run(lab, *argv):
    subprocess.run(["ip", "netns", "exec", lab.switch, *argv], check=True, capture_output=True)


def bridge_rule(lab, table, hook, *rule):
    """An nft bridge-family table with one base chain at `hook` holding `rule`."""
    run(lab, "nft", "add", "table", "bridge", table)
    run(lab, "nft", "add", "chain", "bridge", table, "base", f"{{ type filter hook {hook} priority 0; }}")
    run(lab, "nft", "add", "rule", "bridge", table, "base", *rule)


def ports(lab):
    return {p["port"]: p for p in state.show(lab.bridge, lab.switch)[0]["ports"]}


def udp(src_ns, dst_ns, dst_ip, count=50, port=7100, family=socket.AF_INET):
    """Datagrams sent from src_ns that arrive in dst_ns."""
    with entered(dst_ns):
        rx = socket.socket(family, socket.SOCK_DGRAM)
    with entered(src_ns):
        tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.bind((dst_ip, port))
        rx.settimeout(0.5)
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big"), (dst_ip, port))
        got = 0
        try:
            while got < count:
                rx.recv(64)
                got += 1
        except TimeoutError:
            pass
        return got
    finally:
        rx.close()
        tx.close()


@pytest.mark.root
def test_legacy_tables_without_rules_leave_every_port_accelerated(two_containers):
    lab = two_containers
    lab.set_nf_call(True)
    run(lab, "iptables-legacy", "-L", "-n")  # instantiates filter with its ACCEPT policies
    run(lab, "ip6tables-legacy", "-L", "-n")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert {(p["mode"], p["netfilter_hold"]) for p in ports(lab).values()} == {("tc", None)}
    before = state.forwarded(lab.bridge, lab.switch, lab.c1.port)
    assert udp(lab.c1.netns, lab.c2.netns, lab.c2.ip) == 50
    assert state.forwarded(lab.bridge, lab.switch, lab.c1.port) - before >= 50


@pytest.mark.root
def test_a_physdev_rule_holds_its_port_only_and_still_applies(two_containers):
    lab = two_containers
    lab.set_nf_call(True)
    physdev = ["-m", "physdev", "--physdev-in", lab.c1.port, "--physdev-is-bridged"]
    run(lab, "iptables-legacy", "-A", "FORWARD", *physdev, "-p", "udp", "--dport", "7100", "-j", "DROP")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    shown = ports(lab)
    assert (shown[lab.c1.port]["mode"], shown[lab.c1.port]["why"]) == ("bridge", "netfilter")
    hold = shown[lab.c1.port]["netfilter_hold"]
    assert (hold["family"], hold["table"], hold["chain"], hold["position"]) == ("ip", "filter", "FORWARD", 1)
    assert (shown[lab.c2.port]["mode"], shown[lab.c2.port]["netfilter_hold"]) == ("tc", None)
    assert udp(lab.c1.netns, lab.c2.netns, lab.c2.ip) == 0, "the rule must still drop them"
    before = state.forwarded(lab.bridge, lab.switch, lab.c2.port)
    assert udp(lab.c2.netns, lab.c1.netns, lab.c1.ip) == 50  # towards the held port: the bridge
    assert state.forwarded(lab.bridge, lab.switch, lab.c2.port) == before
    text = xdpbr("-n", lab.switch, "show", lab.bridge).stdout
    assert f"{lab.c1.port}: held by legacy ip filter FORWARD #1" in text


@pytest.mark.root
def test_an_ip6tables_rule_is_honoured(two_containers):
    """The issue's measurement: with only an ip6tables-legacy FORWARD rule, the bridge dropped
    every datagram and xdpbr delivered them all."""
    lab = two_containers
    lab.set_nf_call(True)
    for host, addr in ((lab.c1, "fd00:77::1"), (lab.c2, "fd00:77::2")):
        lab.enable_ipv6(host.netns, "eth0")
        subprocess.run(
            ["ip", "-n", host.netns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"], check=True
        )
    run(lab, "ip6tables-legacy", "-A", "FORWARD", "-d", "fd00:77::2", "-p", "udp", "-j", "DROP")
    attachment.attach(lab.bridge, lab.switch)
    assert {p["why"] for p in ports(lab).values()} == {"netfilter"}
    assert udp(lab.c1.netns, lab.c2.netns, "fd00:77::2", family=socket.AF_INET6) == 0


@pytest.mark.root
def test_a_rule_naming_another_bridge_holds_nothing_and_a_drop_policy_holds_all(two_containers):
    lab = two_containers
    lab.set_nf_call(True)
    run(lab, "iptables-legacy", "-A", "FORWARD", "-i", "br9", "-j", "DROP")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert {p["netfilter_hold"] for p in ports(lab).values()} == {None}
    run(lab, "iptables-legacy", "-P", "FORWARD", "DROP")  # Docker's shape
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    shown = state.show(lab.bridge, lab.switch)[0]
    assert shown["netfilter_hold"]["chain"] == "FORWARD" and shown["netfilter_blocked"]
    assert {p["mode"] for p in shown["ports"]} == {"bridge"}
    res = xdpbr("-n", lab.switch, "stats", lab.bridge)
    assert res.stdout.startswith(f"bridge {lab.bridge}: every port is on the Linux bridge, held by legacy ip")


@pytest.mark.root
def test_the_daemon_honours_a_rule_added_and_removed_on_one_port(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="tc")
    bridge_rule(lab, "guard", "forward", "iifname", lab.c1.port, "udp", "dport", "7100", "drop")

    def held():
        shown = ports(lab)
        return shown[lab.c1.port]["why"] == "netfilter" and shown[lab.c2.port]["mode"] == "tc"

    assert wait_for(held, timeout=WAIT_S)
    assert ports(lab)[lab.c1.port]["netfilter_hold"]["source"] == "nft"
    assert udp(lab.c1.netns, lab.c2.netns, lab.c2.ip) == 0
    run(lab, "nft", "delete", "table", "bridge", "guard")
    assert wait_for(lambda: {p["mode"] for p in ports(lab).values()} == {"tc"}, timeout=WAIT_S)
    assert udp(lab.c1.netns, lab.c2.netns, lab.c2.ip) == 50


@pytest.mark.root
def test_an_arptables_rule_on_one_port_holds_it(two_containers):
    lab = two_containers
    with entered(lab.switch):  # arp only: the ip families stay uncalled
        with open("/proc/sys/net/bridge/bridge-nf-call-arptables", "w") as f:
            f.write("1")
    run(lab, "arptables-legacy", "-A", "FORWARD", "-i", lab.c1.port, "-j", "DROP")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    shown = ports(lab)
    assert shown[lab.c1.port]["netfilter_hold"]["family"] == "arp"
    assert shown[lab.c2.port]["netfilter_hold"] is None and shown[lab.c2.port]["mode"] == "tc"


@pytest.mark.root
def test_the_bridges_own_nf_call_option_calls_the_family_with_the_sysctl_off(two_containers):
    lab = two_containers
    lab.set_nf_call(False)
    run(lab, "iptables-legacy", "-A", "FORWARD", "-m", "physdev", "--physdev-in", lab.c2.port, "-j", "DROP")
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert {p["netfilter_hold"] for p in ports(lab).values()} == {None}, "the bridge calls no ip hooks yet"
    subprocess.run(
        ["ip", "-n", lab.switch, "link", "set", lab.bridge, "type", "bridge", "nf_call_iptables", "1"]
    )
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    shown = ports(lab)
    assert shown[lab.c2.port]["why"] == "netfilter" and shown[lab.c1.port]["mode"] == "tc"


@pytest.mark.root
def test_a_bridge_family_prerouting_rule_on_one_port_holds_it_while_traffic_flows(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="tc")
    background = subprocess.Popen(  # bounded: 200 pings over ~2 s
        ["ip", "netns", "exec", lab.c1.netns, "ping", "-q", "-c", "200", "-i", "0.01", "-W", "1", lab.c2.ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    bridge_rule(lab, "pre", "prerouting", "iifname", lab.c2.port, "udp", "dport", "7100", "drop")
    assert wait_for(lambda: ports(lab)[lab.c2.port]["why"] == "netfilter", timeout=WAIT_S)
    assert ports(lab)[lab.c1.port]["mode"] == "tc"
    assert udp(lab.c2.netns, lab.c1.netns, lab.c1.ip) == 0
    run(lab, "nft", "delete", "table", "bridge", "pre")
    assert wait_for(lambda: ports(lab)[lab.c2.port]["mode"] == "tc", timeout=WAIT_S)
    out, _ = background.communicate(timeout=30)
    assert background.returncode == 0 and " 0% packet loss" in out, out  # nothing else was disturbed
