"""The rulesets a bridged frame can meet, in the few terms the per-port walk evaluates.

Pure data, built without root: `from_xtables()` converts a legacy table read by
loader/xtables.py, `from_nft()` the JSON and text read by loader/nftables.py. control/netfilter/policy.py
walks the result. Everything a rule tests is one `Cond`:
- `dev`: the in or out device as the hook sees it (the bridge for the ip families, a port for
  arp and bridge families and netdev chains);
- `physdev`: xt physdev, decoded (only legacy tables carry its arguments);
- `brname`: nft `meta ibrname`/`obrname` in the bridge family;
- `true`: no test at all (`-m comment`);
- `maybe`: anything else (addresses, protocols, unknown matches): may or may not match,
  never narrows the ports.
What a rule does besides its verdict (NAT, log, a conntrack-state test, an unknown target) is an
`effect`: a reason to hold whatever the rule can reach.
"""

import dataclasses
import fnmatch

# Matches that keep state across frames (conntrack, rate and quota counters, address lists):
# frames the fast path forwards would not update it, so a rule using one holds what it reaches.
STATEFUL_MATCHES = {
    "conntrack", "state", "ctstate", "recent", "connlimit", "connbytes", "connmark", "hashlimit",
    "limit", "quota", "helper", "cluster", "statistic",
}  # fmt: skip
NEUTRAL_MATCHES = {"comment"}
NFT_TERMINALS = {"accept", "drop", "queue", "reject", "return", "continue", "jump", "goto"}
NFT_NAT = {"snat", "dnat", "masquerade", "redirect", "tproxy", "nat"}
# nft statements that neither test nor change the frame's fate (counters are observability,
# like the legacy entries' own counters, which no rule can avoid)
NFT_NEUTRAL = {"counter"}


@dataclasses.dataclass(frozen=True)
class NftNames:
    """An nft interface-name test: `"vnet*"` is a prefix wildcard, a set lists several. A
    missing device makes nft's meta expression break, so it never matches, even with `!=`."""

    names: tuple
    invert: bool = False

    def matches(self, dev):
        if not dev:
            return False
        hit = any(fnmatch.fnmatchcase(dev, n) if n.endswith("*") else dev == n for n in self.names)
        return hit != self.invert


@dataclasses.dataclass(frozen=True)
class Cond:
    kind: str  # "dev" | "physdev" | "brname" | "true" | "maybe"
    side: str = ""  # "in" | "out" for dev and brname
    test: object = None  # .matches(name) for dev/brname; xtables.Physdev for physdev
    what: str = ""  # for a `maybe`: what the walk could not evaluate


@dataclasses.dataclass(frozen=True)
class Rule:
    position: int  # legacy: 1-based position in its chain; nft: the rule handle
    text: str
    conds: tuple
    effects: tuple  # reasons this rule holds the ports it can reach
    verdict: str  # accept drop queue reject return continue jump goto
    target: str | None = None  # chain of a jump or goto


@dataclasses.dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None  # lowercase nft hook name; None for a user chain
    policy: str  # "accept" | "drop" (user chains: "accept")
    rules: tuple
    devices: tuple = ()  # netdev/inet ingress and egress: the bound devices
    policy_text: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    family: str  # ip ip6 arp bridge inet netdev
    source: str  # "legacy" | "nft"
    name: str
    chains: dict  # name -> Chain


# ---- legacy x_tables -------------------------------------------------------------------------


def from_xtables(table):
    """A loader.xtables.Table as walkable chains."""
    chains = {}
    for c in table.chains:
        rules = tuple(_xt_rule(table.family, c.name, r) for r in c.rules)
        policy = (c.policy or "ACCEPT").lower()
        ptext = f"-P {c.name} {c.policy}" if c.hook else ""
        chains[c.name] = Chain(c.name, c.hook.lower() if c.hook else None, policy, rules, (), ptext)
    return Table(table.family, "legacy", table.name, chains)


def _xt_rule(family, chain, r):
    conds, effects = [], []
    for side, iface in (("in", r.iin), ("out", r.iout)):
        if not iface.wildcard or iface.invert:
            conds.append(Cond("dev", side, iface))
    if r.conditions:
        conds.append(Cond("maybe", what="address/protocol match"))
    for m in r.matches:
        if m.name == "physdev" and m.physdev is not None:
            conds.append(Cond("physdev", test=m.physdev))
        elif m.name in NEUTRAL_MATCHES:
            conds.append(Cond("true"))
        else:
            conds.append(Cond("maybe", what=f"match {m.name}"))
            if m.name in STATEFUL_MATCHES:
                effects.append(f"stateful match {m.name}")
    verdict, target = r.target.lower(), None
    if r.target_kind in ("jump", "goto"):
        verdict, target = r.target_kind, r.target
    elif r.target_kind == "target":
        # every named target is treated as acting on the frame (DNAT, REJECT, LOG, MARK...)
        effects.append(f"target {r.target}")
        verdict = "drop" if r.target == "REJECT" else "continue"
    elif r.target == "":
        verdict = "continue"
    if r.target_kind == "verdict" and verdict in ("drop", "queue"):
        effects.append(r.target)
    return Rule(r.position, r.text(family, chain), tuple(conds), tuple(effects), verdict, target)


# ---- nftables --------------------------------------------------------------------------------


def from_nft(ruleset):
    """A loader.nftables.Ruleset as walkable tables."""
    tables, chains = {}, {}
    for item in ruleset.items:
        if "chain" in item:
            c = item["chain"]
            key = (c["family"], c["table"], c["name"])
            chains[key] = {"meta": c, "rules": []}
    for item in ruleset.items:
        if "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            text = ruleset.texts.get((*key, r.get("handle")), "")
            if key in chains:
                chains[key]["rules"].extend(_nft_rules(r, text))
    for (family, tname, cname), c in chains.items():
        meta = c["meta"]
        hook = meta.get("hook")
        policy = meta.get("policy", "accept") if hook else "accept"
        devices = ruleset.devices.get((family, tname, cname), ())
        if isinstance(meta.get("dev"), str):
            devices = (meta["dev"],)
        elif isinstance(meta.get("dev"), list):
            devices = tuple(meta["dev"])
        ptext = f"chain {cname} {{ type {meta.get('type')} hook {hook}; policy {policy}; }}" if hook else ""
        table = tables.setdefault((family, tname), Table(family, "nft", tname, {}))
        table.chains[cname] = Chain(cname, hook, policy, tuple(c["rules"]), devices, ptext)
    return list(tables.values())


def _names(right, op):
    if isinstance(right, dict) and "set" in right:
        values = right["set"]
    elif isinstance(right, list):
        values = right
    else:
        values = [right]
    if not all(isinstance(v, str) for v in values) or any(v.startswith("@") for v in values):
        return None  # named sets, ranges, numbers: not evaluated
    return NftNames(tuple(values), op == "!=")


_META_SIDES = {"iifname": "in", "oifname": "out", "iif": "in", "oif": "out"}
_BR_SIDES = {"ibrname": "in", "obrname": "out", "ibriport": "in", "obriport": "out"}


def _nft_cond(match):
    left, right, op = match.get("left"), match.get("right"), match.get("op", "==")
    if isinstance(left, dict) and "meta" in left and op in ("==", "!=", "in"):
        key = left["meta"].get("key")
        side = _META_SIDES.get(key) or _BR_SIDES.get(key)
        test = _names(right, op) if side else None
        if test is not None:
            return Cond("brname" if key in _BR_SIDES else "dev", side, test), None
    if isinstance(left, dict) and "ct" in left:
        return Cond("maybe", what=f"ct {left['ct'].get('key')}"), f"conntrack {left['ct'].get('key')}"
    return Cond("maybe", what=_describe(left)), None


def _describe(expr):
    if isinstance(expr, dict) and expr:
        k, v = next(iter(expr.items()))
        if isinstance(v, dict):
            return f"{k} {v.get('key') or v.get('field') or v.get('name') or ''}".strip()
        return k
    return "expression"


def _nft_rules(r, text):
    """One JSON rule; a verdict map becomes one rule per element (exclusive conditions, so the
    sequence decides as the map does)."""
    conds, effects, verdict, target, vmaps = [], [], "continue", None, []
    for stmt in r.get("expr", []):
        (key, val), *_ = stmt.items()
        if key == "match":
            cond, effect = _nft_cond(val)
            conds.append(cond)
            if effect:
                effects.append(effect)
        elif key in NFT_TERMINALS:
            verdict = key
            target = val.get("target") if isinstance(val, dict) else None
            if key in ("drop", "queue", "reject"):
                effects.append(key)
        elif key == "vmap":
            vmaps.append(val)
        elif key == "xt":
            name = val.get("name", "?")
            if val.get("type") == "match" and name in NEUTRAL_MATCHES:
                conds.append(Cond("true"))
            elif val.get("type") == "match":
                conds.append(Cond("maybe", what=f"xt match {name} (arguments not readable)"))
                if name in STATEFUL_MATCHES:
                    effects.append(f"stateful xt match {name}")
            else:
                effects.append(f"xt target {name}")
        elif key in NFT_NAT:
            effects.append(f"{key} (NAT)")
        elif key in ("limit", "quota", "ct", "meter", "set", "map"):
            effects.append(f"stateful {key}")
            if key in ("limit", "quota"):
                conds.append(Cond("maybe", what=key))
        elif key not in NFT_NEUTRAL:
            effects.append(f"statement {key}")
    base = Rule(r.get("handle"), text, tuple(conds), tuple(effects), verdict, target)
    if not vmaps:
        return [base]
    if len(vmaps) > 1:
        return [dataclasses.replace(base, effects=(*effects, "several verdict maps"))]
    return _expand_vmap(base, vmaps[0])


def _expand_vmap(base, vmap):
    key = vmap.get("key")
    data = vmap.get("data")
    elements = data.get("set") if isinstance(data, dict) else None
    if not isinstance(elements, list):
        return [dataclasses.replace(base, effects=(*base.effects, "verdict map (named map not read)"))]
    out = []
    for element in elements:
        if not (isinstance(element, list) and len(element) == 2 and isinstance(element[1], dict)):
            return [dataclasses.replace(base, effects=(*base.effects, "verdict map element not understood"))]
        value, verdict = element
        cond, _effect = _nft_cond({"left": key, "right": value, "op": "=="})
        (vkey, vval), *_ = verdict.items()
        target = vval.get("target") if isinstance(vval, dict) else None
        effects = base.effects + ((vkey,) if vkey in ("drop", "queue", "reject") else ())
        out.append(dataclasses.replace(base, conds=(*base.conds, cond), effects=effects, verdict=vkey,
                                       target=target))  # fmt: skip
    return out
