"""`--netfilter respect` against real rules in the bridge's namespace: exactly the ports a rule
can see stay on the Linux bridge (and the rule still applies to their frames), the others
keep the fast path, and rules that see nothing hold nothing. Frames are counted on the far
side and on the fast path's own counters."""

import json
import os
import socket
import subprocess
import time

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.loader import nftables
from xdpbr.loader.netns import entered

from tests import nf_fixtures
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


# ---- every case of the walk, measured: the plain bridge, then xdpbr, on the same rules --------
#
# Each test loads a ruleset, counts what the plain bridge delivers of DATAGRAMS UDP datagrams,
# attaches xdpbr and counts again: the two counts must be equal, and the ports held are the
# ones the rule can see. `MEASURED` lines (pytest -s) give the numbers.

DATAGRAMS = 500


@pytest.fixture
def three_containers(two_containers):
    """Two containers and a third: c1 and c2 carry the rule's case, c2 -> c3 shows that a port
    the rule cannot see keeps the fast path. Neighbours are pinned, so a rule that drops ARP
    changes nothing but what it means to."""
    lab = two_containers
    lab.c3 = lab.container("c3")
    lab.wait_forwarding()
    lab.introduce(lab.c1, lab.c2, lab.c3)
    hosts = (lab.c1, lab.c2, lab.c3)
    for a in hosts:
        for b in hosts:
            if a is not b:
                subprocess.run(["ip", "-n", a.netns, "neigh", "replace", b.ip, "lladdr", b.mac, "dev", "eth0",
                                "nud", "permanent"], check=True)  # fmt: skip
    return lab


def deliver(src, dst, count=DATAGRAMS, port=7100):
    """Datagrams from host src that arrive at host dst (a receive buffer that holds them all)."""
    with entered(dst.netns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with entered(src.netns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        rx.bind((dst.ip, port))
        rx.settimeout(0.5)
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big"), (dst.ip, port))
            if i % 50 == 49:
                time.sleep(0.001)  # within the backlog of a veth's CPU
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


def measure(lab, case, src, dst, port=7100, **attach):
    """(plain bridge count, xdpbr count, held ports) for datagrams src -> dst."""
    plain = deliver(src, dst, port=port)
    attachment.attach(lab.bridge, lab.switch, mode="tc", **attach)
    shown = ports(lab)
    held = sorted(p for p, row in shown.items() if row["netfilter_hold"])
    fast = deliver(src, dst, port=port)
    print(f"\nMEASURED {case}: plain bridge {plain}/{DATAGRAMS}, xdpbr {fast}/{DATAGRAMS}, held {held}")
    assert plain == fast, f"{case}: the plain bridge delivered {plain}, xdpbr {fast}"
    return plain, fast, held, shown


def fast_pair_still_accelerated(lab):
    """c2 -> c3 (ports no rule sees) goes through the fast path and arrives whole."""
    before = state.forwarded(lab.bridge, lab.switch, lab.c2.port)
    assert deliver(lab.c2, lab.c3, port=7200) == DATAGRAMS
    assert state.forwarded(lab.bridge, lab.switch, lab.c2.port) - before >= DATAGRAMS


@pytest.mark.root
def test_a_goto_that_ends_without_a_verdict_takes_the_base_policy_nft(three_containers):
    lab = three_containers
    subprocess.run(["ip", "netns", "exec", lab.switch, "nft", "-f", "-"], check=True, text=True, input=f"""
table bridge t {{
  chain vm0 {{
    ether type arp accept
    meta l4proto icmp accept
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
    iifname "{lab.c1.port}" goto vm0
    accept
  }}
}}
""")  # fmt: skip
    plain, _, held, shown = measure(lab, "nft goto into a chain without a verdict", lab.c1, lab.c2)
    assert plain == 0 and held == [lab.c1.port]
    assert shown[lab.c1.port]["netfilter_hold"]["reason"] == "policy drop"
    fast_pair_still_accelerated(lab)


@pytest.mark.root
def test_a_goto_that_ends_without_a_verdict_takes_the_base_policy_legacy(three_containers):
    lab = three_containers
    lab.set_nf_call(True)
    run(lab, "iptables-legacy", "-N", "vm0")
    run(lab, "iptables-legacy", "-A", "vm0", "-p", "icmp", "-j", "ACCEPT")
    run(lab, "iptables-legacy", "-P", "FORWARD", "DROP")
    run(lab, "iptables-legacy", "-A", "FORWARD", "-m", "physdev", "--physdev-in", lab.c1.port, "-g", "vm0")
    run(lab, "iptables-legacy", "-A", "FORWARD", "-j", "ACCEPT")
    plain, _, held, shown = measure(lab, "legacy -g into a chain without a verdict", lab.c1, lab.c2)
    assert plain == 0 and held == [lab.c1.port]
    assert shown[lab.c1.port]["netfilter_hold"]["rule"] == "-P FORWARD DROP"
    fast_pair_still_accelerated(lab)


@pytest.mark.root
def test_a_negated_name_matches_where_the_device_is_absent(three_containers):
    lab = three_containers
    bridge_rule(lab, "pre", "prerouting", "oifname", "!=", "other", "udp", "dport", "9992", "drop")
    plain, _, held, _ = measure(lab, "bridge prerouting oifname != other", lab.c1, lab.c2, port=9992)
    assert plain == 0 and held == sorted(p.port for p in (lab.c1, lab.c2, lab.c3))
    assert state.show(lab.bridge, lab.switch)[0]["netfilter_blocked"]


@pytest.mark.root
def test_a_netdev_chain_on_a_wildcard_device(three_containers):
    lab = three_containers
    try:  # nft 1.0.6 cannot write it; the kernel (6.16 and later) takes it over netlink
        nf_fixtures.add_wildcard_chain(lab.switch, "w", "wild", lab.c1.port, policy="drop")
    except OSError as exc:
        pytest.skip(
            f"this kernel refuses a netdev chain on a device prefix (NFTA_DEVICE_PREFIX, 6.16): {exc}"
        )
    plain, _, held, shown = measure(lab, f"netdev ingress on {lab.c1.port}* policy drop", lab.c1, lab.c2)
    assert plain == 0 and held == [lab.c1.port]
    assert (
        "not listed by nft" in shown[lab.c1.port]["netfilter_hold"]["reason"]
        or shown[lab.c1.port]["netfilter_hold"]["chain"] == "wild"
    )
    fast_pair_still_accelerated(lab)


@pytest.mark.root
def test_a_wildcard_chain_with_a_rule_that_nft_cannot_list_holds_the_bridge(three_containers, monkeypatch):
    lab = three_containers
    try:
        nf_fixtures.add_wildcard_chain(lab.switch, "w", "wild", lab.c1.port)
    except OSError as exc:
        pytest.skip(
            f"this kernel refuses a netdev chain on a device prefix (NFTA_DEVICE_PREFIX, 6.16): {exc}"
        )
    subprocess.run(["ip", "netns", "exec", lab.switch, "timeout", "5", "nft", "add", "rule", "netdev", "w",
                    "wild", "udp", "dport", "7100", "drop"], check=True)  # fmt: skip
    monkeypatch.setattr(nftables, "NFT_TIMEOUT_S", 3)  # nft 1.0.6 never finishes listing it
    monkeypatch.setattr(nftables, "_hangs_on_wildcards", set())
    plain, _, held, _ = measure(
        lab, f"netdev ingress on {lab.c1.port}* with a rule nft cannot list", lab.c1, lab.c2
    )
    assert plain == 0
    shown = state.show(lab.bridge, lab.switch)[0]
    if shown["netfilter_hold"]:  # the nft of this host cannot read it: every port
        assert "wildcard device" in shown["netfilter_hold"]["reason"]
    else:
        assert held == [lab.c1.port]


@pytest.mark.root
def test_vlan_input_devices(three_containers):
    lab = three_containers
    vlan = ["link", "add", "link", lab.bridge, "name", f"{lab.bridge}.10", "type", "vlan", "id", "10"]
    made = subprocess.run(["ip", "-n", lab.switch, *vlan], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no VLAN device on this kernel (8021q): {made.stderr.strip()}")
    lab.set_nf_call(True)
    with entered(lab.switch):
        for name in ("filter-vlan-tagged", "pass-vlan-input-dev"):
            with open(f"/proc/sys/net/bridge/bridge-nf-{name}", "w") as f:
                f.write("1")
    tagged = []
    for i, host in enumerate((lab.c1, lab.c2), start=1):
        vlan = ["link", "add", "link", "eth0", "name", "eth0.10", "type", "vlan", "id", "10"]
        subprocess.run(["ip", "-n", host.netns, *vlan], check=True)
        subprocess.run(
            ["ip", "-n", host.netns, "addr", "add", f"10.210.0.{i}/24", "dev", "eth0.10"], check=True
        )
        subprocess.run(["ip", "-n", host.netns, "link", "set", "eth0.10", "up"], check=True)
        tagged.append(type(host)(host.name, host.netns, "eth0.10", f"10.210.0.{i}", host.port))
    lab.introduce(*tagged)
    run(lab, "iptables-legacy", "-A", "FORWARD", "-i", f"{lab.bridge}.10", "-p", "udp", "-j", "DROP")
    plain, _, held, _ = measure(lab, f"-i {lab.bridge}.10 with the VLAN sysctls", tagged[0], tagged[1])
    assert plain == 0 and held


@pytest.mark.root
def test_a_named_verdict_map_on_iif_holds_only_its_ports(three_containers):
    lab = three_containers
    subprocess.run(["ip", "netns", "exec", lab.switch, "nft", "-f", "-"], check=True, text=True, input=f"""
table bridge nwfilter {{
  map vmap-iif {{ type iface_index : verdict; elements = {{ "{lab.c1.port}" : jump vm-c1 }}; }}
  chain vm-c1 {{ udp dport 7100 drop; }}
  chain forward {{ type filter hook forward priority 0; policy accept; iif vmap @vmap-iif; }}
}}
""")  # fmt: skip
    plain, _, held, shown = measure(lab, "iif vmap @vmap-iif (libvirt nwfilter's shape)", lab.c1, lab.c2)
    assert plain == 0 and held == [lab.c1.port] and shown[lab.c1.port]["netfilter_hold"]["chain"] == "vm-c1"
    fast_pair_still_accelerated(lab)


@pytest.mark.root
def test_the_daemon_follows_a_verdict_map_element_added_and_removed(three_containers, daemon):
    """NFT_MSG_NEWSETELEM / DELSETELEM reach the daemon like rule changes: a port put into the
    map is held within the daemon's reaction time, and accelerated again once it is out."""
    lab = three_containers
    accelerate(lab, daemon, mode="tc")
    subprocess.run(["ip", "netns", "exec", lab.switch, "nft", "-f", "-"], check=True, text=True, input=f"""
table bridge nwfilter {{
  map vmap-iif {{ type iface_index : verdict; elements = {{ "{lab.c1.port}" : jump vm }}; }}
  chain vm {{ udp dport 7200 drop; }}
  chain forward {{ type filter hook forward priority 0; policy accept; iif vmap @vmap-iif; }}
}}
""")  # fmt: skip

    def held():
        """Held ports, once every port runs what its decision says (the decision is saved first)."""
        shown = ports(lab)
        if any(bool(row["netfilter_hold"]) != (row["mode"] == "bridge") for row in shown.values()):
            return None
        return sorted(p for p, row in shown.items() if row["netfilter_hold"])

    assert wait_for(lambda: held() == [lab.c1.port], timeout=WAIT_S), held()
    fast_pair_still_accelerated(lab)
    run(lab, "nft", "add", "element", "bridge", "nwfilter", "vmap-iif", f"{{ {lab.c2.port} : jump vm }}")
    assert wait_for(lambda: held() == [lab.c1.port, lab.c2.port], timeout=WAIT_S), held()
    assert deliver(lab.c2, lab.c3, port=7200) == 0, "the map's chain must see c2's datagrams"
    run(lab, "nft", "delete", "element", "bridge", "nwfilter", "vmap-iif", f"{{ {lab.c2.port} }}")
    assert wait_for(lambda: held() == [lab.c1.port], timeout=WAIT_S), held()
    fast_pair_still_accelerated(lab)


def libvirt_nat(lab, tables):
    """libvirt's default NAT network (tests/nf_fixtures.py), on the lab's bridge and subnet."""
    text = nf_fixtures.LIBVIRT_NAT.replace("virbr0", lab.bridge).replace("192.168.122.", "10.200.0.")
    blocks = [b for b in text.split("COMMIT\n") if b.strip() and b.split("\n", 1)[0][1:] in tables]
    subprocess.run(["ip", "netns", "exec", lab.switch, "iptables-legacy-restore", "--noflush"], check=True,
                   text=True, input="".join(b + "COMMIT\n" for b in blocks))  # fmt: skip


@pytest.mark.root
def test_libvirt_nat_network_filter_rules_leave_the_bridge_accelerated(three_containers):
    lab = three_containers
    lab.set_nf_call(True)
    libvirt_nat(lab, ("filter",))
    plain, _, held, _ = measure(lab, "libvirt NAT network, filter table", lab.c1, lab.c2)
    assert plain == DATAGRAMS and held == []
    fast_pair_still_accelerated(lab)


@pytest.mark.root
def test_libvirt_nat_network_nat_and_mangle_rules_hold_the_bridge(three_containers):
    lab = three_containers
    lab.set_nf_call(True)
    libvirt_nat(lab, ("filter", "nat", "mangle"))
    plain, _, held, _ = measure(lab, "libvirt NAT network, filter nat mangle", lab.c1, lab.c2)
    hold = state.show(lab.bridge, lab.switch)[0]["netfilter_hold"]
    assert plain == DATAGRAMS and (hold["table"], hold["chain"], hold["reason"]) == (
        "mangle", "LIBVIRT_PRT", "target CHECKSUM")  # fmt: skip


@pytest.mark.root
def test_a_notrack_raw_table_holds_nothing(three_containers):
    lab = three_containers
    lab.set_nf_call(True)
    run(lab, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-i", lab.bridge, "-j", "CT", "--notrack")
    run(lab, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-i", lab.bridge, "-j", "NOTRACK")
    plain, _, held, _ = measure(lab, "raw PREROUTING -i br0 -j CT --notrack", lab.c1, lab.c2)
    assert plain == DATAGRAMS and held == []
    fast_pair_still_accelerated(lab)


def nft_counter(lab):
    out = subprocess.run(["ip", "netns", "exec", lab.switch, "nft", "-j", "list", "table", "bridge", "bill"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    exprs = [e for i in json.loads(out)["nftables"] if "rule" in i for e in i["rule"]["expr"]]
    return next(e["counter"]["packets"] for e in exprs if "counter" in e)


@pytest.mark.root
def test_counting_rules_hold_their_ports_only_when_asked(three_containers):
    lab = three_containers
    bridge_rule(lab, "bill", "forward", "iifname", lab.c1.port, "counter")
    plain, _, held, _ = measure(lab, "counter only, netfilter_counters ignore", lab.c1, lab.c2)
    counted = nft_counter(lab)
    print(f"MEASURED the rule's counter after both: {counted} of {2 * DATAGRAMS}")
    assert plain == DATAGRAMS and held == [] and counted < 2 * DATAGRAMS  # the fast path skipped it
    assert state.show(lab.bridge, lab.switch)[0]["netfilter_counters"] == "ignore"
    attachment.detach(lab.bridge, lab.switch)
    before = nft_counter(lab)
    plain, fast, held, _ = measure(lab, "counter only, netfilter_counters hold", lab.c1, lab.c2,
                                   netfilter_counters="hold")  # fmt: skip
    counted = nft_counter(lab) - before
    print(f"MEASURED the rule's counter after both: {counted} of {plain + fast}")
    assert held == [lab.c1.port] and counted == plain + fast  # every datagram counted
    shown = json.loads(xdpbr("-j", "-n", lab.switch, "show", lab.bridge).stdout)[0]
    assert shown["netfilter_counters"] == "hold"
    (hold,) = [p["netfilter_hold"] for p in shown["ports"] if p["netfilter_hold"]]
    assert hold["reason"] == "counter (netfilter_counters = hold)"
    # the CLI's option: attaching again with the default gives the port back to the fast path
    res = xdpbr(
        "-j", "-n", lab.switch, "attach", lab.bridge, "--mode", "tc", "--netfilter-counters", "ignore"
    )
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)[0]
    assert shown["netfilter_counters"] == "ignore" and not any(p["netfilter_hold"] for p in shown["ports"])
    res = xdpbr("-n", lab.switch, "attach", lab.bridge, "--mode", "tc", "--netfilter-counters", "bill")
    assert res.returncode != 0 and "invalid choice" in res.stderr
