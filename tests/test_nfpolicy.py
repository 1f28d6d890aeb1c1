"""The per-port netfilter walk (control/netfilter/policy.py) on real rulesets, without root.

The OpenStack, Docker and libvirt shapes come from tests/nf_fixtures.py, which names where each
comes from and recorded what the kernel returned for it; the small cases build tables directly.
"""

import pytest
from xdpbr.control.netfilter import policy as nfpolicy
from xdpbr.control.netfilter import rules as nfrules
from xdpbr.control.netfilter.policy import Calls
from xdpbr.loader import nftables
from xdpbr.loader.xtables import Iface, Physdev

from tests import nf_fixtures

IP = Calls(ip=True, ip6=True, arp=True)


def tables_of(shape):
    legacy, ruleset = nf_fixtures.load(shape)
    return [nfrules.from_xtables(t) for t in legacy] + nfrules.from_nft(ruleset)


def held(decision):
    return decision.held()


# ---- the shapes ------------------------------------------------------------------------------


def test_openstack_holds_only_the_tap_behind_physdev_jumps():
    d = nfpolicy.decide("brq1", ["tap1", "tap2", "eth1"], IP, tables_of("openstack"))
    assert held(d) == ["tap1"]
    assert d.bridge_hold is None
    h = d.ports["tap1"]
    assert (h.family, h.source, h.table, h.chain, h.position) == (
        "ip",
        "legacy",
        "filter",
        "neutron-linuxbri-i1",
        1,
    )
    # iptables 1.8 stores `-m state` as the conntrack match
    assert h.reason == "stateful match conntrack"
    assert h.rule == "-A neutron-linuxbri-i1 -m conntrack -j RETURN"


def test_openstack_is_ignored_when_the_bridge_calls_no_ip_family():
    d = nfpolicy.decide("brq1", ["tap1", "tap2"], Calls(arp=True), tables_of("openstack"))
    assert held(d) == []


def test_openstack_through_iptables_nft_holds_everything_and_says_why():
    # iptables-nft keeps physdev as an xt match whose arguments nft -j does not print
    d = nfpolicy.decide("brq1", ["tap1", "tap2", "eth1"], IP, tables_of("openstack_nft"))
    assert held(d) == ["eth1", "tap1", "tap2"]
    assert d.bridge_hold.source == "nft"
    assert "xt match physdev (arguments not readable)" in d.bridge_hold.reason


def test_docker_holds_its_whole_bridge_by_the_conntrack_rule():
    d = nfpolicy.decide("docker0", ["vethA", "vethB"], IP, tables_of("docker"))
    assert held(d) == ["vethA", "vethB"]
    h = d.bridge_hold
    assert (h.table, h.chain, h.position) == ("filter", "FORWARD", 3)
    assert h.rule == "-A FORWARD -o docker0 -m conntrack -j ACCEPT"


def test_docker_policy_drop_holds_every_other_bridge():
    d = nfpolicy.decide("br-other", ["veth0"], IP, tables_of("docker"))
    assert d.bridge_hold.reason == "policy drop"
    assert d.bridge_hold.rule == "-P FORWARD DROP"


def test_libvirt_clean_traffic_holds_only_the_filtered_vm():
    d = nfpolicy.decide("virbr0", ["vnet0", "vnet1"], IP, tables_of("libvirt"))
    assert held(d) == ["vnet0"]
    h = d.ports["vnet0"]
    assert (h.family, h.source, h.table, h.chain) == ("bridge", "nft", "nat", "libvirt-I-vnet0")
    assert h.rule == "ether saddr != 52:54:00:12:34:56 counter drop"


def test_libvirt_rules_hold_nothing_on_another_bridge_without_that_port():
    d = nfpolicy.decide("br9", ["veth9"], IP, tables_of("libvirt"))
    assert held(d) == [] and d.bridge_hold is None


# ---- small cases -----------------------------------------------------------------------------


def rule(pos, conds=(), effects=(), verdict="continue", target=None, text=""):
    return nfrules.Rule(pos, text or f"rule {pos}", tuple(conds), tuple(effects), verdict, target)


def table(family, chains, source="legacy", name="filter"):
    return nfrules.Table(family, source, name, {c.name: c for c in chains})


def base(name, hook, rules=(), policy="accept", devices=()):
    return nfrules.Chain(name, hook, policy, tuple(rules), tuple(devices), f"-P {name} {policy.upper()}")


def user(name, rules=()):
    return nfrules.Chain(name, None, "accept", tuple(rules))


def exact(name, invert=False):
    """An interface pattern as iptables writes `-i NAME`: the mask covers the name and its NUL."""
    return Iface(name, b"\xff" * (len(name) + 1) + b"\0" * (15 - len(name)), invert)


def physdev_in(name, invert=False):
    return nfrules.Cond("physdev", test=Physdev(exact(name, invert), None, 1, int(invert)))


def physdev_out(name):
    return nfrules.Cond("physdev", test=Physdev(None, exact(name), 2, 0))


PORTS = ["vnet3", "vnet4", "eth1"]


def decide(*tables, calls=IP, unreadable=()):
    return nfpolicy.decide("br0", PORTS, calls, list(tables), unreadable)


def test_tables_without_rules_hold_nothing():
    t = table("ip", [base("PREROUTING", "prerouting"), base("FORWARD", "forward"), user("empty")])
    assert held(decide(t)) == []


def test_jump_into_an_empty_or_return_only_chain_holds_nothing():
    fwd = base(
        "FORWARD", "forward", [rule(1, verdict="jump", target="e"), rule(2, verdict="jump", target="r")]
    )
    t = table("ip", [fwd, user("e"), user("r", [rule(1, verdict="return")])])
    assert held(decide(t)) == []


def test_physdev_in_rule_holds_that_port_only():
    fwd = base("FORWARD", "forward", [rule(1, [physdev_in("vnet3")], ["DROP"], "drop")])
    d = decide(table("ip", [fwd]))
    assert held(d) == ["vnet3"] and d.ports["vnet3"].position == 1


def test_negated_physdev_in_holds_the_other_ports():
    fwd = base("FORWARD", "forward", [rule(1, [physdev_in("vnet3", invert=True)], ["DROP"], "drop")])
    assert held(decide(table("ip", [fwd]))) == ["eth1", "vnet4"]


def test_physdev_out_cannot_match_at_prerouting():
    pre = base("PREROUTING", "prerouting", [rule(1, [physdev_out("vnet3")], ["DROP"], "drop")])
    assert held(decide(table("ip", [pre]))) == []


def test_physdev_out_holds_that_port_from_forward_on():
    post = base("POSTROUTING", "postrouting", [rule(1, [physdev_out("vnet4")], ["target MASQUERADE"])])
    assert held(decide(table("ip", [post], name="nat"))) == ["vnet4"]


def test_rule_naming_another_bridge_holds_nothing():
    fwd = base("FORWARD", "forward", [rule(1, [nfrules.Cond("dev", "in", exact("br1"))], ["DROP"], "drop")])
    assert held(decide(table("ip", [fwd]))) == []


def test_out_device_is_absent_at_prerouting():
    pre = base(
        "PREROUTING", "prerouting", [rule(1, [nfrules.Cond("dev", "out", exact("br0"))], ["DROP"], "drop")]
    )
    assert held(decide(table("ip", [pre]))) == []


def test_unconditional_accept_before_policy_drop_holds_nothing():
    # -i br0 -o br0 -j ACCEPT is always true for this bridge's forwarded frames
    conds = [nfrules.Cond("dev", "in", exact("br0")), nfrules.Cond("dev", "out", exact("br0"))]
    fwd = base("FORWARD", "forward", [rule(1, conds, verdict="accept")], policy="drop")
    assert held(decide(table("ip", [fwd]))) == []


def test_per_port_accept_before_policy_drop_holds_the_rest():
    fwd = base("FORWARD", "forward", [rule(1, [physdev_in("vnet3")], verdict="accept")], policy="drop")
    d = decide(table("ip", [fwd]))
    assert held(d) == ["eth1", "vnet4"] and d.ports["eth1"].reason == "policy drop"


def test_goto_ends_the_chain_for_the_port_it_narrows():
    rules = [
        rule(1, [physdev_in("vnet3")], verdict="goto", target="vm"),
        rule(2, effects=["DROP"], verdict="drop"),
    ]
    t = table("ip", [base("FORWARD", "forward", rules), user("vm")])
    assert held(decide(t)) == ["eth1", "vnet4"]


def test_unknown_match_does_not_narrow():
    conds = [physdev_in("vnet3"), nfrules.Cond("maybe", what="match mac")]
    fwd = base(
        "FORWARD",
        "forward",
        [rule(1, conds, verdict="accept"), rule(2, [physdev_in("vnet4")], ["DROP"], "drop")],
    )
    assert held(decide(table("ip", [fwd]))) == ["vnet4"]


def test_ip6_rules_count_only_when_the_bridge_calls_ip6tables():
    fwd = base("FORWARD", "forward", [rule(1, [nfrules.Cond("maybe")], ["DROP"], "drop")])
    assert held(decide(table("ip6", [fwd]), calls=Calls(ip=True))) == []
    assert held(decide(table("ip6", [fwd]), calls=Calls(ip6=True))) == PORTS_SORTED


PORTS_SORTED = sorted(PORTS)


def test_arp_forward_sees_ports_as_in_and_out():
    fwd = base("FORWARD", "forward", [rule(1, [nfrules.Cond("dev", "in", exact("vnet3"))], ["DROP"], "drop")])
    inp = base("INPUT", "input", [rule(1, effects=["DROP"], verdict="drop")])
    assert held(decide(table("arp", [fwd, inp]))) == ["vnet3"]


def test_missing_jump_target_holds_what_reaches_it():
    fwd = base("FORWARD", "forward", [rule(1, [physdev_in("vnet4")], verdict="jump", target="gone")])
    d = decide(table("ip", [fwd]))
    assert held(d) == ["vnet4"] and "jump target not found" in d.ports["vnet4"].reason


def test_unreadable_source_holds_the_bridge():
    d = decide(
        unreadable=[("*", "nft", "cannot read nftables: nft is not installed (apt-get install nftables)")]
    )
    assert held(d) == PORTS_SORTED and d.bridge_hold.source == "nft"


def test_unreadable_family_the_bridge_does_not_call_holds_nothing():
    assert held(decide(calls=Calls(), unreadable=[("ip6", "legacy", "cannot read")])) == []


# ---- nftables JSON ---------------------------------------------------------------------------


def meta(key, right, op="=="):
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}


def nft(family, chains, sets_text=""):
    """A Ruleset from {chain: (hook or None, policy, [expr lists])}."""
    items, texts, devices = [], {}, {}
    handle = 100
    for name, (hook, policy, rules, *dev) in chains.items():
        c = {"family": family, "table": "t", "name": name, "handle": handle}
        if hook:
            c.update(type="filter", hook=hook, prio=0, policy=policy)
        items.append({"chain": c})
        if dev:
            devices[(family, "t", name)] = tuple(dev[0])
        for expr in rules:
            handle += 1
            items.append(
                {"rule": {"family": family, "table": "t", "chain": name, "handle": handle, "expr": expr}}
            )
            texts[(family, "t", name, handle)] = f"text {handle}"
    return nfrules.from_nft(nftables.Ruleset(tuple(items), texts, devices, ""))


def test_nft_bridge_iifname_holds_that_port_and_shows_its_handle():
    ts = nft("bridge", {"fw": ("forward", "accept", [[meta("iifname", "vnet3"), {"drop": None}]])})
    d = decide(*ts)
    assert held(d) == ["vnet3"]
    assert (d.ports["vnet3"].position, d.ports["vnet3"].rule) == (101, "text 101")


def test_nft_bridge_oifname_is_absent_at_prerouting():
    ts = nft("bridge", {"pre": ("prerouting", "accept", [[meta("oifname", "vnet3", "!="), {"drop": None}]])})
    assert held(decide(*ts)) == []


def test_nft_bridge_ibrname_of_another_bridge_holds_nothing():
    ts = nft("bridge", {"fw": ("forward", "accept", [[meta("ibrname", "br1"), {"drop": None}]])})
    assert held(decide(*ts)) == []


def test_nft_wildcard_and_set_of_ports():
    expr = [meta("oifname", {"set": ["vnet*", "eth9"]}), {"log": None}]
    ts = nft("bridge", {"post": ("postrouting", "accept", [expr])})
    assert held(decide(*ts)) == ["vnet3", "vnet4"]


def test_nft_verdict_map_on_iifname_holds_the_mapped_ports():
    elements = [["vnet3", {"drop": None}], ["vnet4", {"jump": {"target": "u"}}]]
    vmap = {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": {"set": elements}}}
    ts = nft("bridge", {"fw": ("forward", "accept", [[vmap]]), "u": (None, None, [[{"return": None}]])})
    assert held(decide(*ts)) == ["vnet3"]


def test_nft_counter_only_rule_holds_nothing_but_a_policy_drop_does():
    ts = nft("bridge", {"fw": ("forward", "accept", [[{"counter": {"packets": 0, "bytes": 0}}]])})
    assert held(decide(*ts)) == []
    ts = nft("bridge", {"fw": ("forward", "drop", [])})
    assert decide(*ts).bridge_hold.reason == "policy drop"


def test_nft_inet_counts_when_the_bridge_calls_either_ip_family():
    ts = nft("inet", {"pre": ("prerouting", "accept", [[{"dnat": {"addr": "10.0.0.5"}}]])})
    assert held(decide(*ts, calls=Calls())) == []
    assert held(decide(*ts, calls=Calls(ip6=True))) == PORTS_SORTED


def test_netdev_ingress_chain_holds_its_port():
    ts = nft("netdev", {"ing": ("ingress", "accept", [[{"drop": None}]], ["vnet4", "other0"])})
    assert held(decide(*ts)) == ["vnet4"]
    empty = nft("netdev", {"ing": ("ingress", "accept", [], ["vnet4"])})
    assert held(decide(*empty)) == []


@pytest.mark.parametrize(
    "stmt", [{"ct": {"key": "mark"}}, {"masquerade": None}, {"xt": {"type": "target", "name": "CT"}}]
)
def test_nft_statements_that_act_hold_the_bridge(stmt):
    ts = nft("ip", {"fw": ("forward", "accept", [[stmt]])})
    assert decide(*ts).bridge_hold is not None


def test_decision_as_json():
    fwd = base(
        "FORWARD", "forward", [rule(1, [physdev_in("vnet3")], ["DROP"], "drop", text="-A FORWARD -j DROP")]
    )
    out = decide(table("ip", [fwd])).to_dict()
    assert out["bridge"] == "br0" and out["bridge_hold"] is None
    assert out["ports"][1] == {
        "port": "vnet3",
        "held": True,
        "hold": {"family": "ip", "source": "legacy", "table": "filter", "chain": "FORWARD", "position": 1,
                 "rule": "-A FORWARD -j DROP", "reason": "DROP"},
    }  # fmt: skip
    assert out["ports"][0] == {"port": "eth1", "held": False, "hold": None}
