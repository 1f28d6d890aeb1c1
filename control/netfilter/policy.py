"""Which ports of a bridge must stay on the kernel bridge because a netfilter rule can see them.

Pure logic over control/netfilter/rules.py tables; no kernel calls. The walk follows the bridge's own
path (net/bridge/br_netfilter_hooks.c, br_forward.c):
- ip, ip6 and inet chains (only when the bridge calls that family) see bridged frames at
  prerouting (in = the bridge), forward (in = out = the bridge) and postrouting (out = the
  bridge); ports only through xt physdev, whose out port is known from forward on;
- arp chains see bridged ARP at forward only, with in and out the ports (br_nf_forward_arp);
- bridge chains see the ports as iifname (not at postrouting) and oifname (not at
  prerouting), the bridge as meta ibrname/obrname;
- netdev (and inet) ingress/egress chains bound to a port see that port's frames, which XDP
  and TC ingress would skip.
Frames that can reach a point are tracked as a set of in ports and a set of out ports; a rule
that can act on them (drop, NAT, log, state, anything not understood) holds the ports on the
side it narrows, or the whole bridge when nothing narrows. Holding a port puts both its ingress
and the frames towards it on the bridge, so one side is enough.
"""

import dataclasses

from ...loader.xtables import PHYSDEV_BRIDGED, PHYSDEV_ISIN, PHYSDEV_ISOUT
from .rules import Cond

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

    def __contains__(self, port):
        return (port in self.names) != self.complement

    @property
    def empty(self):
        return not self.complement and not self.names

    @property
    def full(self):
        return self.complement and not self.names


ALL = PortSet(frozenset(), True)


@dataclasses.dataclass(frozen=True)
class Calls:
    """Which families the bridge hands its frames to: the namespace's bridge-nf-call-* sysctl
    or the bridge's own nf_call_* option (the kernel calls a family when either is on)."""

    ip: bool = False
    ip6: bool = False
    arp: bool = False

    @classmethod
    def combine(cls, sysctls, bridge_options):
        """sysctls: {"iptables": bool, ...}; bridge_options: {"nf_call_iptables": bool, ...}."""
        on = {n: bool(sysctls.get(n)) or bool(bridge_options.get(f"nf_call_{n}"))
              for n in ("iptables", "ip6tables", "arptables")}  # fmt: skip
        return cls(on["iptables"], on["ip6tables"], on["arptables"])


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


class _Walk:
    def __init__(self, bridge, ports):
        self.bridge, self.ports = bridge, tuple(ports)
        self.holds = []  # (PortSet, Hold) in walk order
        self.memo = {}

    def hold(self, ins, outs, table, chain, position, text, reason, via=""):
        side = _side(ins, outs)
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
        """(ins, outs, exact) the rule's conditions allow, or None when it cannot match."""
        ins, outs, exact = ALL, ALL, True
        for c in rule.conds:
            r = self.cond(c, kind, hook, have_in, have_out)
            if r is False:
                return None
            if r is None:
                exact = False
            elif r is not True:
                for side, ports in r:
                    if side == "in":
                        ins &= ports
                    else:
                        outs &= ports
        return ins, outs, exact

    def cond(self, c: Cond, kind, hook, have_in, have_out):
        """True, False, None for may-match, or [("in"|"out", PortSet), ...]."""
        if c.kind == "true":
            return True
        if c.kind == "maybe":
            return None
        present = have_in if c.side == "in" else have_out
        if c.kind == "dev":
            if kind == "ip":  # the ip families see the bridge itself
                return c.test.matches(self.bridge if present else "")
            return [(c.side, self.names(c.test))] if present else c.test.matches("")
        if c.kind == "brname":
            return c.test.matches(self.bridge if present else "") if kind == "bridge" else None
        if c.kind == "physdev" and kind == "ip":
            return self.physdev(c.test, have_out)
        return None

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
    def chain(self, table, chain, kind, hook, ins, outs, depth=0, stack=(), via=""):
        """Walk `chain` with frames (ins x outs); returns the reach left at its end. `via` names
        the first test on the way here that could not be evaluated (for the hold's reason)."""
        have_in, have_out = _sides(kind, hook)
        for rule in chain.rules:
            r = self.reach(rule, kind, hook, have_in, have_out)
            if r is None:
                continue
            cin, cout, exact = r
            rin, rout = ins & cin, outs & cout
            if rin.empty or rout.empty:
                continue
            here = via or next(
                (c.what for c in rule.conds if c.kind == "maybe" and c.what.startswith("xt ")), ""
            )
            if rule.effects:
                self.hold(rin, rout, table, chain, rule.position, rule.text, "; ".join(rule.effects), here)
            if rule.verdict in ("jump", "goto"):
                sub = table.chains.get(rule.target)
                if sub is None or depth >= MAX_DEPTH or rule.target in stack:
                    why = "jump target not found" if sub is None else "chain nesting not evaluated"
                    self.hold(
                        rin, rout, table, chain, rule.position, rule.text, f"{why}: {rule.target}", here
                    )
                else:
                    self.chain(table, sub, kind, hook, rin, rout, depth + 1, (*stack, chain.name), here)
            terminal = rule.verdict in ("accept", "drop", "queue", "reject", "goto")
            # a RETURN ends a user chain; in a base chain it falls to the policy like the end
            terminal |= rule.verdict == "return" and chain.hook is None
            if terminal and exact:
                if cin.full and cout.full:
                    return PortSet(), PortSet()
                if cout.full:
                    ins = ins - cin
                elif cin.full:
                    outs = outs - cout
                if ins.empty or outs.empty:
                    return ins, outs
        return ins, outs

    def base(self, table, chain, kind, ins=ALL, outs=ALL):
        ins, outs = self.chain(table, chain, kind, chain.hook, ins, outs)
        if chain.policy != "accept" and not (ins.empty or outs.empty):
            self.hold(ins, outs, table, chain, None, chain.policy_text, f"policy {chain.policy}")


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


def decide(bridge, ports, calls, tables, unreadable=()):
    """The Decision for one bridge.

    tables: nfrules.Table objects (legacy and nft) of the bridge's namespace; unreadable:
    (family, source, reason) for rulesets that exist but could not be read (nft missing,
    legacy ebtables): each holds the whole bridge, as its rules could."""
    walk = _Walk(bridge, ports)
    for family, source, reason in unreadable:
        if family in ("ip", "ip6", "arp") and _kind(family, calls) is None:
            continue  # the bridge never calls this family: its tables do not matter
        walk.holds.append((ALL, Hold(family, source, "", "", None, "", reason)))
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    for table in sorted(tables, key=lambda t: (order.get(t.family, 99), t.source, t.name)):
        kind = _kind(table.family, calls)
        for chain in sorted(table.chains.values(), key=lambda c: _hook_order(c.hook)):
            if chain.hook in ("ingress", "egress") and table.family in ("netdev", "inet"):
                for dev in chain.devices:
                    if dev in ports:
                        one = PortSet(frozenset([dev]))
                        side = {"ins": one} if chain.hook == "ingress" else {"outs": one}
                        walk.base(table, chain, "netdev", **side)
            elif kind and chain.hook in IP_HOOKS and (kind != "arp" or chain.hook == "forward"):
                walk.base(table, chain, kind)
    held = {p: next((h for s, h in walk.holds if p in s), None) for p in ports}
    bridge_hold = next((h for s, h in walk.holds if s.full), None)
    return Decision(bridge, held, bridge_hold)


def _hook_order(hook):
    return ("ingress", "prerouting", "forward", "postrouting", "egress").index(hook) if hook in (
        "ingress", "prerouting", "forward", "postrouting", "egress") else 9  # fmt: skip
