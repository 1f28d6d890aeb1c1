"""Which ports of a bridge must stay on the kernel bridge because a netfilter rule can see them.

Pure logic over control/netfilter/rules.py tables; no kernel calls. The walk follows the bridge's own
path (net/bridge/br_netfilter_hooks.c, br_forward.c):
- ip, ip6 and inet chains (only when the bridge calls that family) see bridged frames at
  prerouting (in = the bridge), forward (in = out = the bridge) and postrouting (out = the
  bridge); ports only through xt physdev, whose out port is known from forward on. With
  bridge-nf-filter-vlan-tagged and bridge-nf-pass-vlan-input-dev both on, a tagged frame's in
  device is the bridge's VLAN device (`br0.10`) when there is one: a test of the in device
  then cannot be evaluated;
- arp chains see bridged ARP at forward only, with in and out the ports (br_nf_forward_arp);
- bridge chains see the ports as iifname (not at postrouting) and oifname (not at
  prerouting), the bridge as meta ibrname/obrname;
- netdev (and inet) ingress/egress chains bound to a port (or a `vnet*` prefix) see that port's
  frames, which XDP and TC ingress would skip; one whose devices are unknown sees every port.
A device a hook does not have compares as the empty name (Linux 5.3 and later), so a negated
name test matches there. What this relies on: docs/kernel-notes.md, "Netfilter".

Chains are walked as the kernel runs them (ipt_do_table, nft_do_chain): a jump returns to the
rule after it, and only the frames that come back continue there (an ACCEPT or DROP inside
ends their walk); a goto does not return to its chain: frames that reach the end (or a
RETURN) of the chain it went to leave the chain that made the goto, back to the last jump or,
from a base chain, to its policy. Frames that can reach a point are tracked as a set of in
ports times a set of out ports, over-approximated where a union or a difference is not such a
product; a rule that can act on them (drop, NAT, log, state, anything not understood) holds the
ports on the side it narrows, or the whole bridge when nothing narrows. Holding a port puts
both its ingress and the frames towards it on the bridge, so one side is enough.
"""

import dataclasses

from ...loader.xtables import PHYSDEV_BRIDGED, PHYSDEV_ISIN, PHYSDEV_ISOUT
from .rules import Cond, NftNames

MAX_DEPTH = 32  # iptables allows no loops and limits nesting; deeper means we misread the table
IP_HOOKS = ("prerouting", "forward", "postrouting")
FAMILY_ORDER = ("bridge", "ip", "ip6", "inet", "arp", "netdev")


@dataclasses.dataclass(frozen=True)
class PortSet:
    """Ports of one bridge: `names`, or with `complement` every port except `names` (which also
    covers ports that join later)."""

    names: frozenset = frozenset()
    complement: bool = False

    def __and__(self, o):
        if self.complement and o.complement:
            return PortSet(self.names | o.names, True)
        if self.complement:
            return PortSet(o.names - self.names)
        if o.complement:
            return PortSet(self.names - o.names)
        return PortSet(self.names & o.names)

    def __sub__(self, o):
        return self & PortSet(o.names, not o.complement)

    def __or__(self, o):
        if self.complement and o.complement:
            return PortSet(self.names & o.names, True)
        if self.complement:
            return PortSet(self.names - o.names, True)
        if o.complement:
            return PortSet(o.names - self.names, True)
        return PortSet(self.names | o.names)

    def __contains__(self, port):
        return (port in self.names) != self.complement

    @property
    def empty(self):
        return not self.complement and not self.names

    @property
    def full(self):
        return self.complement and not self.names


ALL = PortSet(frozenset(), True)
NONE = PortSet()


@dataclasses.dataclass(frozen=True)
class Frames:
    """Frames from any port of `ins` to any port of `outs`. `|` and `-` over-approximate where
    the exact result is not such a product: the walk may think more frames reach a rule than
    do, never fewer."""

    ins: PortSet = ALL
    outs: PortSet = ALL

    @property
    def empty(self):
        return self.ins.empty or self.outs.empty

    def __and__(self, o):
        return Frames(self.ins & o.ins, self.outs & o.outs)

    def __or__(self, o):
        if self.empty:
            return o
        if o.empty:
            return self
        return Frames(self.ins | o.ins, self.outs | o.outs)

    def __sub__(self, o):
        if o.empty or self.empty:
            return self
        ins_left, outs_left = self.ins - o.ins, self.outs - o.outs
        if ins_left.empty and outs_left.empty:
            return NO_FRAMES
        if outs_left.empty:  # o covers every out port of self: exactly the in ports it lacks
            return Frames(ins_left, self.outs)
        if ins_left.empty:
            return Frames(self.ins, outs_left)
        return self


ALL_FRAMES = Frames()
NO_FRAMES = Frames(NONE, NONE)


@dataclasses.dataclass(frozen=True)
class Calls:
    """Which families the bridge hands its frames to: the namespace's bridge-nf-call-* sysctl
    or the bridge's own nf_call_* option (the kernel calls a family when either is on)."""

    ip: bool = False
    ip6: bool = False
    arp: bool = False
    # bridge-nf-filter-vlan-tagged and bridge-nf-pass-vlan-input-dev: the ip families see a
    # tagged frame's in device as the bridge's VLAN device, if it has one for that VLAN
    vlan_indev: bool = False

    @classmethod
    def combine(cls, sysctls, bridge_options):
        """sysctls: {"iptables": bool, ..., "filter-vlan-tagged": bool, "pass-vlan-input-dev":
        bool}; bridge_options: {"nf_call_iptables": bool, ...}."""
        on = {n: bool(sysctls.get(n)) or bool(bridge_options.get(f"nf_call_{n}"))
              for n in ("iptables", "ip6tables", "arptables")}  # fmt: skip
        vlan = bool(sysctls.get("filter-vlan-tagged")) and bool(sysctls.get("pass-vlan-input-dev"))
        return cls(on["iptables"], on["ip6tables"], on["arptables"], vlan)


@dataclasses.dataclass(frozen=True)
class Hold:
    """The rule (or policy, or unreadable source) that keeps ports on the bridge."""

    family: str
    source: str  # "legacy" | "nft"
    table: str
    chain: str
    position: int | None  # legacy: position in the chain; nft: the rule handle; None: policy
    rule: str  # as an admin recognises it: nft syntax, or iptables-save style
    reason: str

    def to_dict(self):
        return dataclasses.asdict(self)

    def line(self):
        where = f"{self.family} {self.table} {self.chain}".strip()
        pos = f" #{self.position}" if self.position is not None else ""
        rule = f": {self.rule}" if self.rule else ""
        return f"{self.source} {where}{pos}{rule} ({self.reason})"


@dataclasses.dataclass(frozen=True)
class Decision:
    bridge: str
    ports: dict  # port -> Hold | None, for every port given
    bridge_hold: Hold | None  # a hold no port narrows: every port, and ports that join later

    def held(self):
        return sorted(p for p, h in self.ports.items() if h is not None)

    def to_dict(self):
        return {
            "bridge": self.bridge,
            "bridge_hold": self.bridge_hold.to_dict() if self.bridge_hold else None,
            "ports": [
                {"port": p, "held": h is not None, "hold": h.to_dict() if h else None}
                for p, h in sorted(self.ports.items())
            ],
        }


COUNTERS = ("ignore", "hold")
# conditions worth naming when a hold that nothing narrowed was reached through them
_NOTABLE = ("xt ", "in device ", "iif", "oif", "ibr", "obr", "verdict map ", "set ")
VLAN_INDEV = "in device may be a VLAN device of the bridge (bridge-nf-pass-vlan-input-dev)"


class _Walk:
    def __init__(self, bridge, ports, calls=None, counters="ignore"):
        self.bridge, self.ports = bridge, tuple(ports)
        self.vlan_indev = bool(calls and calls.vlan_indev)
        self.count_holds = counters == "hold"
        self.holds = []  # (PortSet, Hold) in walk order
        self.memo = {}

    def hold(self, frames, table, chain, position, text, reason, via=""):
        side = _side(frames.ins, frames.outs)
        if via and side.full:
            reason += f"; reached through a test xdpbr cannot evaluate: {via}"
        self.holds.append((side, Hold(table.family, table.source, table.name, chain.name,
                                                  position, text, reason)))  # fmt: skip

    # -- conditions --
    def names(self, test):
        # memoised: thousands of per-tap rules repeat a few hundred names
        if test not in self.memo:
            hits = frozenset(p for p in self.ports if test.matches(p))
            inverted = getattr(test, "invert", False)
            self.memo[test] = PortSet(frozenset(self.ports) - hits, True) if inverted else PortSet(hits)
        return self.memo[test]

    def reach(self, rule, kind, hook, have_in, have_out):
        """(Frames, exact, what could not be evaluated) the rule's conditions allow, or None
        when it cannot match."""
        ins, outs, exact, whys = ALL, ALL, True, []
        for c in rule.conds:
            r = self.cond(c, kind, hook, have_in, have_out)
            if r is False:
                return None
            if isinstance(r, str):
                exact = False
                whys.append(r)
            elif r is not True:
                for side, ports in r:
                    if side == "in":
                        ins &= ports
                    else:
                        outs &= ports
        return Frames(ins, outs), exact, whys

    def cond(self, c: Cond, kind, hook, have_in, have_out):
        """True, False, what could not be evaluated (a string), or [("in"|"out", PortSet), ...]."""
        if c.kind == "true":
            return True
        if c.kind == "maybe":
            return c.what or "a test xdpbr cannot evaluate"
        present = have_in if c.side == "in" else have_out
        if c.kind == "dev":
            if kind == "ip":  # the ip families see the bridge itself
                if present and c.side == "in" and self.vlan_indev and hook in ("prerouting", "forward"):
                    return VLAN_INDEV
                return c.test.matches(self.bridge if present else "")
            return [(c.side, self.names(c.test))] if present else c.test.matches("")
        if c.kind == "brname":
            if kind == "bridge":
                return c.test.matches(self.bridge if present else "")
            return "bridge name outside the bridge family"
        if c.kind == "physdev" and kind == "ip":
            return self.physdev(c.test, have_out)
        return f"{c.kind} test at a {kind} hook"

    def physdev(self, p, have_out):
        """xt_physdev's physdev_mt for a bridged frame: physindev always known, physoutdev from
        forward on; an --physdev-out test without an out port fails even when negated."""
        inv = p.invert
        if p.bitmask & PHYSDEV_BRIDGED and have_out != (not (inv & PHYSDEV_BRIDGED)):
            return False
        if p.bitmask & PHYSDEV_ISIN and inv & PHYSDEV_ISIN:
            return False
        if p.bitmask & PHYSDEV_ISOUT and have_out == bool(inv & PHYSDEV_ISOUT):
            return False
        if p.physoutdev is not None and not have_out:
            return False
        sides = []
        if p.physindev is not None:
            sides.append(("in", self.names(p.physindev)))
        if p.physoutdev is not None:
            sides.append(("out", self.names(p.physoutdev)))
        return sides or True

    # -- chains --
    def chain(self, table, chain, kind, hook, frames, depth=0, stack=(), via=""):
        """Walk `chain` with `frames`; returns the frames that leave it without a verdict: at
        its end, by a RETURN, or through a goto out of it (nft_do_chain and ipt_do_table both
        continue those after the jump that called this chain, or at the base chain's policy).
        `via` names the first test on the way here that could not be evaluated (for the hold's
        reason)."""
        have_in, have_out = _sides(kind, hook)
        rest, out = frames, NO_FRAMES  # frames still running through this chain; frames that left it
        for rule in chain.rules:
            if rest.empty:
                break
            r = self.reach(rule, kind, hook, have_in, have_out)
            if r is None:
                continue
            cond, exact, whys = r
            hit = rest & cond
            if hit.empty:
                continue
            here = via or next((w for w in whys if w.startswith(_NOTABLE)), "")
            effects = rule.effects
            if not effects and rule.counts and self.count_holds:
                effects = ("counter (netfilter_counters = hold)",)
            if effects:
                self.hold(hit, table, chain, rule.position, rule.text, "; ".join(effects), here)
            verdict = rule.verdict
            if verdict in ("jump", "goto"):
                sub = table.chains.get(rule.target)
                if sub is None or depth >= MAX_DEPTH or rule.target in stack:
                    why = "jump target not found" if sub is None else "chain nesting not evaluated"
                    self.hold(hit, table, chain, rule.position, rule.text, f"{why}: {rule.target}", here)
                    back = hit
                else:
                    back = self.chain(table, sub, kind, hook, hit, depth + 1, (*stack, chain.name), here)
                if verdict == "jump":  # those that came back go on here, the others ended there
                    if exact:
                        rest = (rest - hit) | back
                else:  # a goto's returns leave this chain too
                    out = out | back
                    if exact:
                        rest = rest - hit
            elif verdict == "return":  # a user chain's caller, or a base chain's policy
                out = out | hit
                if exact:
                    rest = rest - hit
            elif verdict in ("accept", "drop", "queue", "reject") and exact:
                rest = rest - hit
        return out | rest

    def base(self, table, chain, kind, frames=ALL_FRAMES):
        left = self.chain(table, chain, kind, chain.hook, frames)
        if chain.policy != "accept" and not left.empty:
            self.hold(left, table, chain, None, chain.policy_text, f"policy {chain.policy}")


def _sides(kind, hook):
    """Whether the hook knows an in and an out device for a bridged frame."""
    if kind in ("ip", "bridge"):
        return hook in ("prerouting", "forward"), hook in ("forward", "postrouting")
    if kind == "arp":
        return True, True
    return hook == "ingress", hook == "egress"  # netdev


def _side(ins, outs):
    """The ports to hold for frames (ins x outs): the narrower side; both unnarrowed: all."""
    sides = [s for s in (ins, outs) if not s.full]
    if not sides:
        return ALL
    finite = [s for s in sides if not s.complement]
    return min(finite, key=lambda s: len(s.names)) if finite else sides[0]


def _kind(family, calls):
    """How a table's base chains see bridged frames, or None when the bridge never calls it."""
    if family == "bridge":
        return "bridge"
    if family in ("ip", "ip6", "inet"):
        on = {"ip": calls.ip, "ip6": calls.ip6, "inet": calls.ip or calls.ip6}[family]
        return "ip" if on else None
    if family == "arp":
        return "arp" if calls.arp else None
    return None


def decide(bridge, ports, calls, tables, unreadable=(), counters="ignore"):
    """The Decision for one bridge.

    tables: nfrules.Table objects (legacy and nft) of the bridge's namespace; unreadable:
    (family, source, reason) for rulesets that exist but could not be read (nft missing,
    legacy ebtables): each holds the whole bridge, as its rules could. counters: "ignore" (a
    rule that only counts holds nothing) or "hold" (it holds what it can see, for an operator
    who bills from counters)."""
    walk = _Walk(bridge, ports, calls, counters)
    for family, source, reason in unreadable:
        if family in ("ip", "ip6", "arp") and _kind(family, calls) is None:
            continue  # the bridge never calls this family: its tables do not matter
        walk.holds.append((ALL, Hold(family, source, "", "", None, "", reason)))
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    for table in sorted(tables, key=lambda t: (order.get(t.family, 99), t.source, t.name)):
        kind = _kind(table.family, calls)
        for chain in sorted(table.chains.values(), key=lambda c: _hook_order(c.hook)):
            if chain.hook in ("ingress", "egress") and table.family in ("netdev", "inet"):
                walk.base(table, chain, "netdev", _bound(walk, chain))
            elif kind and chain.hook in IP_HOOKS and (kind != "arp" or chain.hook == "forward"):
                walk.base(table, chain, kind)
    held = {p: next((h for s, h in walk.holds if p in s), None) for p in ports}
    bridge_hold = next((h for s, h in walk.holds if s.full), None)
    return Decision(bridge, held, bridge_hold)


def _bound(walk, chain):
    """The frames a netdev/inet ingress or egress chain sees: those of the ports its devices
    name (exact names or `vnet*` prefixes, present or joining later), every port when its
    device list is empty or could not be read."""
    if chain.devices:
        ports = walk.names(NftNames(tuple(chain.devices)))
    else:
        ports = ALL
    return Frames(ins=ports) if chain.hook == "ingress" else Frames(outs=ports)


def _hook_order(hook):
    return ("ingress", "prerouting", "forward", "postrouting", "egress").index(hook) if hook in (
        "ingress", "prerouting", "forward", "postrouting", "egress") else 9  # fmt: skip
