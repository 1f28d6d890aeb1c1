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
    ts = nft("bridge", {"pre": ("prerouting", "accept", [[meta("oifname", "vnet3"), {"drop": None}]])})
    assert held(decide(*ts)) == []


def test_a_negated_name_matches_an_absent_device():
    """Since Linux 5.3 a missing device compares as the empty name (ifindex 0): the issue's
    bridge prerouting `oifname != "other" udp dport 9992 drop` dropped every datagram."""
    udp = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 9992}}
    ts = nft(
        "bridge", {"pre": ("prerouting", "accept", [[meta("oifname", "other", "!="), udp, {"drop": None}]])}
    )
    d = decide(*ts)
    assert held(d) == PORTS_SORTED and d.bridge_hold.position == 101
    ts = nft(
        "bridge",
        {"post": ("postrouting", "accept", [[meta("iifname", {"set": ["a", "b"]}, "!="), {"drop": None}]])},
    )
    assert decide(*ts).bridge_hold is not None
    for family in ("ip", "inet"):  # ip-family PREROUTING/POSTROUTING alike
        ts = nft(family, {"pre": ("prerouting", "accept", [[meta("oifname", "x", "!="), {"drop": None}]])})
        assert decide(*ts).bridge_hold is not None
        ts = nft(family, {"post": ("postrouting", "accept", [[meta("iif", "x", "!="), {"drop": None}]])})
        assert decide(*ts).bridge_hold is not None
    assert nfrules.NftNames(("x",), invert=True).matches("") and not nfrules.NftNames(("x",)).matches("")
    assert not nfrules.NftNames(("vnet*",)).matches("") and nfrules.NftNames(("vnet*",), True).matches("")


def test_nft_names_are_prefixes_only_with_a_trailing_star():
    names = nfrules.NftNames(("vnet*", "a[b", "lit\\*"))
    assert [names.matches(n) for n in ("vnet", "vnet12", "vne", "a[b", "ab", "lit*", "litx")] == [
        True, True, False, True, False, True, False]  # fmt: skip


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


# ---- the walk as the kernel runs it: gotos, returns, accepts carried back ---------------------


def test_goto_from_a_base_chain_falls_through_to_its_policy_nft():
    """The issue's measurement: bridge `forward` with policy drop, `iifname PORT goto vm0`,
    `accept`; vm0 accepts ARP and ICMP only. UDP from PORT reaches the end of vm0 and takes
    the base chain's policy: the plain bridge delivered none of it."""
    arp = {"match": {"op": "==", "left": {"meta": {"key": "protocol"}}, "right": "arp"}}
    icmp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "icmp"}}
    goto = [meta("iifname", "vnet3"), {"goto": {"target": "vm0"}}]
    ts = nft(
        "bridge",
        {
            "forward": ("forward", "drop", [goto, [{"accept": None}]]),
            "vm0": (None, None, [[arp, {"accept": None}], [icmp, {"accept": None}]]),
        },
    )
    d = decide(*ts)
    assert held(d) == ["vnet3"] and d.bridge_hold is None
    assert d.ports["vnet3"].reason == "policy drop" and d.ports["vnet3"].chain == "forward"


def test_goto_from_a_base_chain_falls_through_to_its_policy_legacy():
    rules = [rule(1, [physdev_in("vnet3")], verdict="goto", target="vm0"), rule(2, verdict="accept")]
    vm0 = user("vm0", [rule(1, [nfrules.Cond("maybe", what="address/protocol match")], verdict="accept")])
    d = decide(table("ip", [base("FORWARD", "forward", rules, policy="drop"), vm0]))
    assert held(d) == ["vnet3"] and d.ports["vnet3"].rule == "-P FORWARD DROP"


def test_a_goto_in_a_called_chain_returns_after_the_jump_that_called_it():
    # FORWARD: jump u; drop what vnet4 sends.  u: vnet3 goto g (empty), then accept everything.
    # vnet3's frames come back from g to FORWARD's second rule; the others were accepted in u.
    fwd = base("FORWARD", "forward", [rule(1, verdict="jump", target="u"),
                                      rule(2, [physdev_in("vnet4")], ["DROP"], "drop"),
                                      rule(3, effects=["DROP"], verdict="drop")])  # fmt: skip
    u = user("u", [rule(1, [physdev_in("vnet3")], verdict="goto", target="g"), rule(2, verdict="accept")])
    d = decide(table("ip", [fwd, u, user("g")]))
    assert held(d) == ["vnet3"] and d.ports["vnet3"].position == 3


def test_return_in_a_base_chain_goes_to_its_policy():
    fwd = base("FORWARD", "forward", [rule(1, [physdev_in("vnet3")], verdict="return"),
                                      rule(2, verdict="accept")], policy="drop")  # fmt: skip
    assert held(decide(table("ip", [fwd]))) == ["vnet3"]


def test_an_accept_in_a_jumped_to_chain_ends_the_walk_of_what_it_accepted():
    # FORWARD -j ok (accepts vnet3's frames), then DROP: only the other ports reach the DROP
    fwd = base(
        "FORWARD",
        "forward",
        [rule(1, verdict="jump", target="ok"), rule(2, effects=["DROP"], verdict="drop")],
    )
    ok = user("ok", [rule(1, [physdev_in("vnet3")], verdict="accept")])
    assert held(decide(table("ip", [fwd, ok]))) == ["eth1", "vnet4"]
    every = user("ok", [rule(1, verdict="accept")])
    assert held(decide(table("ip", [fwd, every]))) == []


def test_an_accept_behind_a_test_xdpbr_cannot_evaluate_is_not_carried_back():
    fwd = base(
        "FORWARD",
        "forward",
        [rule(1, verdict="jump", target="ok"), rule(2, effects=["DROP"], verdict="drop")],
    )
    ok = user("ok", [rule(1, [nfrules.Cond("maybe", what="match mac")], verdict="accept")])
    assert held(decide(table("ip", [fwd, ok]))) == PORTS_SORTED


def test_a_jump_whose_own_test_cannot_be_evaluated_keeps_every_frame_after_it():
    fwd = base("FORWARD", "forward", [rule(1, [nfrules.Cond("maybe")], verdict="jump", target="ok"),
                                      rule(2, effects=["DROP"], verdict="drop")])  # fmt: skip
    assert held(decide(table("ip", [fwd, user("ok", [rule(1, verdict="accept")])]))) == PORTS_SORTED


def test_libvirt_nat_network_filter_rules_hold_nothing_and_its_nat_and_mangle_rules_hold_virbr0():
    """libvirt's default NAT network: LIBVIRT_FWX (`-i virbr0 -o virbr0 -j ACCEPT`) accepts
    every bridged frame, so the REJECTs and the conntrack ACCEPT after it are never reached.
    What still holds virbr0: mangle's CHECKSUM --checksum-fill on UDP to port 68 (it rewrites
    frames whose protocol and port xdpbr does not evaluate), and nat's MASQUERADE rules (a
    bridged frame from 192.168.122.0/24 to an address outside it is masqueraded)."""
    tables = tables_of("libvirt_nat")
    filter_only = [t for t in tables if t.name == "filter"]
    assert held(nfpolicy.decide("virbr0", ["vnet0", "vnet1"], IP, filter_only)) == []
    d = nfpolicy.decide("virbr0", ["vnet0", "vnet1"], IP, tables)
    assert held(d) == ["vnet0", "vnet1"]
    h = d.bridge_hold
    assert (h.table, h.chain, h.position, h.reason) == ("mangle", "LIBVIRT_PRT", 1, "target CHECKSUM")
    without_mangle = [t for t in tables if t.name != "mangle"]
    h = nfpolicy.decide("virbr0", ["vnet0"], IP, without_mangle).bridge_hold
    assert (h.table, h.chain, h.position, h.reason) == ("nat", "LIBVIRT_PRT", 3, "target MASQUERADE")


def test_a_notrack_only_raw_table_holds_nothing():
    d = nfpolicy.decide("br0", PORTS, IP, tables_of("notrack"))
    assert held(d) == []
    rules = [r.text for t in tables_of("notrack") for c in t.chains.values() for r in c.rules]
    assert rules == ["-A PREROUTING -i br0 -j CT --notrack"] * 2  # iptables 1.8 writes NOTRACK as CT
    ts = nft("ip", {"raw": ("prerouting", "accept", [[{"notrack": None}]])})
    assert held(decide(*ts)) == []
    zone = nft("ip", {"raw": ("prerouting", "accept", [[{"xt": {"type": "target", "name": "CT"}}]])})
    assert decide(*zone).bridge_hold is not None  # iptables-nft's CT: its options are not readable


# ---- counters --------------------------------------------------------------------------------


def test_a_rule_that_only_counts_holds_nothing_unless_counters_are_held():
    counting = [[meta("iifname", "vnet3"), {"counter": {"packets": 0, "bytes": 0}}]]
    ts = nft("bridge", {"fw": ("forward", "accept", counting)})
    assert held(decide(*ts)) == []
    d = nfpolicy.decide("br0", PORTS, IP, ts, (), "hold")
    assert held(d) == ["vnet3"] and d.ports["vnet3"].reason == "counter (netfilter_counters = hold)"
    named = nft("bridge", {"fw": ("forward", "accept", [[meta("oifname", "vnet4"), {"counter": "billing"}]])})
    assert held(nfpolicy.decide("br0", PORTS, IP, named, (), "hold")) == ["vnet4"]
    plain = nft("bridge", {"fw": ("forward", "accept", [[meta("oifname", "vnet4"), {"accept": None}]])})
    assert held(nfpolicy.decide("br0", PORTS, IP, plain, (), "hold")) == []  # no counter: nothing


def test_every_legacy_rule_counts_when_counters_are_held():
    text = "-A FORWARD -m physdev --physdev-in vnet4"
    fwd = base(
        "FORWARD", "forward", [nfrules.Rule(1, text, (physdev_in("vnet4"),), (), "continue", None, True)]
    )
    t = table("ip", [fwd])
    assert held(decide(t)) == []
    assert held(nfpolicy.decide("br0", PORTS, IP, [t], (), "hold")) == ["vnet4"]
    assert all(r.counts for t in tables_of("docker") for c in t.chains.values() for r in c.rules)


# ---- VLAN input devices ----------------------------------------------------------------------


def test_vlan_input_device_sysctls_make_in_device_tests_unknown():
    """With bridge-nf-filter-vlan-tagged and bridge-nf-pass-vlan-input-dev, iptables sees a
    tagged frame arrive on the bridge's VLAN device (`br0.10`), not on br0."""
    vlan = Calls(ip=True, vlan_indev=True)
    in_br0 = [nfrules.Cond("dev", "in", exact("br0"))]
    accept_br0 = base("FORWARD", "forward", [rule(1, in_br0, verdict="accept")], policy="drop")
    assert held(decide(table("ip", [accept_br0]))) == []
    d = decide(table("ip", [accept_br0]), calls=vlan)
    assert held(d) == PORTS_SORTED and d.bridge_hold.reason == "policy drop"
    drop_vlan = base(
        "FORWARD", "forward", [rule(1, [nfrules.Cond("dev", "in", exact("br0.10"))], ["DROP"], "drop")]
    )
    assert held(decide(table("ip", [drop_vlan]))) == []
    d = decide(table("ip", [drop_vlan]), calls=vlan)
    assert held(d) == PORTS_SORTED and nfpolicy.VLAN_INDEV in d.bridge_hold.reason
    # the out device stays the bridge, and postrouting has no in device at all
    post = base(
        "POSTROUTING",
        "postrouting",
        [rule(1, [nfrules.Cond("dev", "in", exact("br0.10"))], ["DROP"], "drop")],
    )
    assert held(decide(table("ip", [post], name="nat"), calls=vlan)) == []
    # physdev names ports, not the logical device
    physdev = base("FORWARD", "forward", [rule(1, [physdev_in("vnet3")], ["DROP"], "drop")])
    assert held(decide(table("ip", [physdev]), calls=vlan)) == ["vnet3"]


def test_vlan_input_device_needs_both_sysctls():
    on = {"iptables": True, "filter-vlan-tagged": True, "pass-vlan-input-dev": True}
    assert Calls.combine(on, {}).vlan_indev
    assert not Calls.combine({**on, "filter-vlan-tagged": False}, {}).vlan_indev
    assert not Calls.combine({**on, "pass-vlan-input-dev": False}, {}).vlan_indev


# ---- named sets and verdict maps -------------------------------------------------------------


def nft_sets(family, sets, chains):
    """A Ruleset with named sets/maps: sets {name: dict of the set's JSON}."""
    ruleset = nft_ruleset(family, chains)
    items = [
        {"map" if "map" in s else "set": {"family": family, "table": "t", "name": n, **s}}
        for n, s in sets.items()
    ]
    return nfrules.from_nft(nftables.Ruleset(tuple(items) + ruleset.items, ruleset.texts, {}, ""))


def nft_ruleset(family, chains):
    items, texts, handle = [], {}, 100
    for name, (hook, policy, rules) in chains.items():
        c = {"family": family, "table": "t", "name": name, "handle": handle}
        if hook:
            c.update(type="filter", hook=hook, prio=0, policy=policy)
        items.append({"chain": c})
        for expr in rules:
            handle += 1
            items.append(
                {"rule": {"family": family, "table": "t", "chain": name, "handle": handle, "expr": expr}}
            )
            texts[(family, "t", name, handle)] = f"text {handle}"
    return nftables.Ruleset(tuple(items), texts, {}, "")


def test_a_named_set_of_ports_holds_its_ports():
    sets = {"ports": {"type": "ifname", "elem": ["vnet3", "eth*"]}}
    ts = nft_sets(
        "bridge", sets, {"fw": ("forward", "accept", [[meta("iifname", "@ports"), {"drop": None}]])}
    )
    assert held(decide(*ts)) == ["eth1", "vnet3"]
    ts = nft_sets(
        "bridge", sets, {"fw": ("forward", "accept", [[meta("iifname", "@ports", "!="), {"drop": None}]])}
    )
    assert held(decide(*ts)) == ["vnet4"]


def test_libvirts_iif_verdict_map_holds_only_the_mapped_ports():
    """The shape of libvirt's nftables nwfilter driver: `iif vmap @vmap-iif` jumps to one chain
    per VM; a port that is not in the map is not held."""
    sets = {"vmap-iif": {"type": "iface_index", "map": "verdict",
                         "elem": [["vnet3", {"jump": {"target": "vm-vnet3"}}]]}}  # fmt: skip
    mac = {
        "match": {
            "op": "!=",
            "left": {"payload": {"protocol": "ether", "field": "saddr"}},
            "right": "52:54:00:00:00:01",
        }
    }
    chains = {
        "fw": ("forward", "accept", [[{"vmap": {"key": {"meta": {"key": "iif"}}, "data": "@vmap-iif"}}]]),
        "vm-vnet3": (None, None, [[mac, {"drop": None}]]),
    }
    d = decide(*nft_sets("bridge", sets, chains))
    assert held(d) == ["vnet3"] and d.ports["vnet3"].chain == "vm-vnet3"


def test_an_index_that_names_no_device_cannot_be_evaluated():
    # nft prints an iif set element whose device is gone as its number
    sets = {"idx": {"type": "iface_index", "elem": ["vnet3", "17"]}}
    ts = nft_sets("bridge", sets, {"fw": ("forward", "drop", [[meta("iif", "@idx"), {"accept": None}]])})
    d = decide(*ts)
    assert held(d) == PORTS_SORTED and d.bridge_hold.reason == "policy drop"


@pytest.mark.parametrize("flags", [{"flags": ["timeout"]}, {"flags": ["dynamic"]}, {"timeout": 60}])
def test_a_set_that_changes_on_its_own_is_not_evaluated(flags):
    sets = {"ok": {"type": "ifname", "elem": ["vnet3", "vnet4", "eth1"], **flags}}
    ts = nft_sets("bridge", sets, {"fw": ("forward", "drop", [[meta("iifname", "@ok"), {"accept": None}]])})
    assert decide(*ts).bridge_hold is not None  # an element may expire: the policy may apply to any port


def test_set_elements_with_a_timeout_are_not_evaluated():
    sets = {"ok": {"type": "ifname", "elem": [{"elem": {"val": "vnet3", "timeout": 60, "expires": 30}}]}}
    ts = nft_sets("bridge", sets, {"fw": ("forward", "accept", [[meta("iifname", "@ok"), {"drop": None}]])})
    assert decide(*ts).bridge_hold is not None
    commented = {"ok": {"type": "ifname", "elem": [{"elem": {"val": "vnet3", "comment": "vm 3"}}]}}
    ts = nft_sets(
        "bridge", commented, {"fw": ("forward", "accept", [[meta("iifname", "@ok"), {"drop": None}]])}
    )
    assert held(decide(*ts)) == ["vnet3"]


def test_a_missing_named_set_holds_what_reaches_it():
    ts = nft_sets("bridge", {}, {"fw": ("forward", "accept", [[meta("iifname", "@gone"), {"drop": None}]])})
    assert decide(*ts).bridge_hold is not None


def test_a_set_with_per_element_counters_counts():
    sets = {
        "ports": {
            "type": "ifname",
            "elem": [{"elem": {"val": "vnet3", "counter": {"packets": 1, "bytes": 9}}}],
        }
    }
    ts = nft_sets("bridge", sets, {"fw": ("forward", "accept", [[meta("iifname", "@ports")]])})
    assert held(decide(*ts)) == []
    assert held(nfpolicy.decide("br0", PORTS, IP, ts, (), "hold")) == ["vnet3"]


# ---- netdev chains: wildcard devices, unknown devices ----------------------------------------


def test_a_netdev_chain_bound_to_a_prefix_holds_every_matching_port():
    ts = nft("netdev", {"ing": ("ingress", "accept", [[{"drop": None}]], ["vnet*"])})
    assert held(decide(*ts)) == ["vnet3", "vnet4"]
    # a port that joins later is decided with the others at the next reconcile
    later = nfpolicy.decide("br0", [*PORTS, "vnet9"], IP, ts)
    assert held(later) == ["vnet3", "vnet4", "vnet9"]
    egress = nft("netdev", {"eg": ("egress", "drop", [], ["eth*"])})
    assert held(decide(*egress)) == ["eth1"]


def test_a_netdev_chain_without_devices_sees_every_port():
    ts = nft("netdev", {"ing": ("ingress", "accept", [[{"drop": None}]], [])})
    assert decide(*ts).bridge_hold is not None
    quiet = nft("netdev", {"ing": ("ingress", "accept", [], [])})
    assert held(decide(*quiet)) == []


def test_a_chain_nft_did_not_list_holds_the_ports_of_its_devices():
    ruleset = nft_ruleset("netdev", {})
    unlisted = {("netdev", "t", "hidden"): ("ingress", ("vnet*",)), ("netdev", "t", "nodev"): ("egress", ())}
    ts = nfrules.from_nft(nftables.Ruleset(ruleset.items, {}, {}, "", "", {**unlisted}))
    d = decide(*ts)
    assert held(d) == PORTS_SORTED and "chain not listed by nft (bound to no device)" in d.bridge_hold.reason
    only = nfrules.from_nft(
        nftables.Ruleset((), {}, {}, "", "", {("netdev", "t", "hidden"): ("ingress", ("vnet*",))})
    )
    d = decide(*only)
    assert held(d) == ["vnet3", "vnet4"] and "bound to vnet*" in d.ports["vnet3"].reason


def nla(kind, payload):
    import struct

    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def chain_message(family, table, chain, hook):
    import struct

    return (
        struct.pack("=BBH", family, 0, 0)
        + nla(1, table + b"\0")
        + nla(3, chain + b"\0")
        + nla(4 | 0x8000, hook)
    )


def test_hook_devices_as_the_kernel_reports_them():
    import struct

    hooknum = nla(1, struct.pack(">I", 0))
    devs = nla(
        4 | 0x8000, nla(1, b"tap1\0") + nla(2, b"vnet\0") + nla(1, b"eth")
    )  # name, prefix, 6.16 prefix
    got = nftables.parse_chain(chain_message(5, b"t", b"ing", hooknum + devs))
    assert got == ("netdev", "t", "ing", "ingress", ("tap1", "vnet*", "eth*"))
    old = nftables.parse_chain(
        chain_message(5, b"t", b"ing", nla(1, struct.pack(">I", 1)) + nla(3, b"vnet3\0"))
    )
    assert old == ("netdev", "t", "ing", "egress", ("vnet3",))
    inet = nftables.parse_chain(
        chain_message(1, b"t", b"ing", nla(1, struct.pack(">I", 5)) + nla(4 | 0x8000, b""))
    )
    assert inet == ("inet", "t", "ing", "ingress", ())
    plain = nftables.parse_chain(chain_message(7, b"t", b"fw", nla(1, struct.pack(">I", 2))))
    assert plain[4] is None


# ---- legacy ebtables -------------------------------------------------------------------------


def test_legacy_ebtables_is_judged_by_its_loaded_tables(tmp_path, monkeypatch):
    from xdpbr.loader import xtables

    sysmod = tmp_path / "module"
    sysmod.mkdir()
    config = tmp_path / "config.gz"
    import gzip

    with gzip.open(config, "wt") as f:  # Debian's: every table a module
        f.write(
            "CONFIG_BRIDGE_NF_EBTABLES_LEGACY=m\nCONFIG_BRIDGE_EBT_T_FILTER=m\nCONFIG_BRIDGE_EBT_T_NAT=m\n"
        )
    monkeypatch.setattr(xtables, "SYS_MODULE", str(sysmod))
    monkeypatch.setattr(xtables, "CONFIG_GZ", str(config))
    monkeypatch.setattr(xtables, "MODULES_BUILTIN", str(tmp_path / "none" / "{release}"))
    xtables._builtin_ebtables.cache_clear()
    try:
        assert xtables.ebtables_status() == (False, "no legacy ebtables table is loaded")
        (sysmod / "ebtables").mkdir()  # the core without a table holds nothing
        assert not xtables.ebtables_status()[0]
        (sysmod / "ebtable_nat").mkdir()
        present, why = xtables.ebtables_status()
        assert present and "ebtable_nat" in why
        with gzip.open(config, "wt") as f:
            f.write("CONFIG_BRIDGE_NF_EBTABLES_LEGACY=y\nCONFIG_BRIDGE_EBT_T_FILTER=y\n")
        xtables._builtin_ebtables.cache_clear()
        (sysmod / "ebtable_nat").rmdir()
        present, why = xtables.ebtables_status()
        assert present and "built into this kernel (ebtable_filter)" in why
        builtin = tmp_path / "modules.builtin"
        builtin.write_text("kernel/net/bridge/bridge.ko\n")  # modules.builtin wins over the configuration
        monkeypatch.setattr(xtables, "MODULES_BUILTIN", str(builtin))
        xtables._builtin_ebtables.cache_clear()
        assert not xtables.ebtables_status()[0]
    finally:
        xtables._builtin_ebtables.cache_clear()


def test_the_configuration_takes_netfilter_counters(tmp_path):
    from xdpbr.control.config import ConfigError, load

    path = tmp_path / "xdpbr.toml"
    path.write_text('[[bridge]]\nname = "br0"\n\n[[bridge]]\nname = "br1"\nnetfilter_counters = "hold"\n')
    assert [b.netfilter_counters for b in load(str(path)).bridges] == ["ignore", "hold"]
    path.write_text('[[bridge]]\nname = "br0"\nnetfilter_counters = "bill"\n')
    with pytest.raises(
        ConfigError, match=r"xdpbr.toml:3: bridge\[0\].netfilter_counters: 'bill' is not one of"
    ):
        load(str(path))
