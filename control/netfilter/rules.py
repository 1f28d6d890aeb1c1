"""The rulesets a bridged frame can meet, in the few terms the per-port walk evaluates.

Pure data, built without root: `from_xtables()` converts a legacy table read by
loader/xtables.py, `from_nft()` the JSON and text read by loader/nftables.py. control/netfilter/policy.py
walks the result. Everything a rule tests is one `Cond`:
- `dev`: the in or out device as the hook sees it (the bridge for the ip families, a port for
  arp and bridge families and netdev chains);
- `physdev`: xt physdev, decoded (only legacy tables carry its arguments);
- `brname`: nft `meta ibrname`/`obrname` in the bridge family;
- `true`: no test at all (`-m comment`);
- `maybe`: anything else (addresses, protocols, unknown matches, sets whose elements change on
  their own): may or may not match, never narrows the ports.
Named sets and verdict maps are read with the ruleset and tested like anonymous ones; a
verdict map becomes one rule per element. What a rule does besides its verdict (NAT, log, a
conntrack-state test, an unknown target) is an `effect`: a reason to hold whatever the rule can
reach. A rule that only counts has none; `counts` says it counts (every legacy rule does), for
an operator who bills from counters (`netfilter_counters = "hold"`).
"""

import dataclasses

# Matches that keep state across frames (conntrack, rate and quota counters, address lists):
# frames the fast path forwards would not update it, so a rule using one holds what it reaches.
STATEFUL_MATCHES = {
    "conntrack", "state", "ctstate", "recent", "connlimit", "connbytes", "connmark", "hashlimit",
    "limit", "quota", "helper", "cluster", "statistic",
}  # fmt: skip
NEUTRAL_MATCHES = {"comment"}
NFT_TERMINALS = {"accept", "drop", "queue", "reject", "return", "continue", "jump", "goto"}
NFT_NAT = {"snat", "dnat", "masquerade", "redirect", "tproxy", "nat"}
# nft statements that neither test nor change the frame's fate: counters are observability
# (see `counts`), and `notrack` only keeps conntrack away from the frame, which the fast path
# does for every frame it forwards
NFT_NEUTRAL = {"counter", "notrack"}
# meta keys that name a device by its index: nft prints an index that names no device any more
# as its number, which the walk cannot give a name
_INDEX_KEYS = {"iif", "oif"}


def name_matches(pattern, dev):
    """nft's interface-name comparison: a trailing `*` makes the rest a prefix ("" for a
    missing device, which since Linux 5.3 compares as the empty name instead of failing)."""
    if pattern.endswith("\\*"):
        return dev == pattern[:-2] + "*"
    if pattern.endswith("*"):
        return dev.startswith(pattern[:-1])
    return dev == pattern


@dataclasses.dataclass(frozen=True)
class NftNames:
    """An nft interface-name test: `"vnet*"` is a prefix wildcard, a set lists several. A missing
    device compares as the empty name (ifindex 0 for `iif`/`oif`), so `!=` matches it (Linux
    5.3 and later: nft_meta_store_ifname)."""

    names: tuple
    invert: bool = False

    def matches(self, dev):
        hit = any(name_matches(n, dev) for n in self.names)
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
    counts: bool = False  # the rule counts the frames it matches (legacy: all; nft: `counter`)


@dataclasses.dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None  # lowercase nft hook name; None for a user chain
    policy: str  # "accept" | "drop" (user chains: "accept")
    rules: tuple
    devices: tuple = ()  # netdev/inet ingress and egress: the bound devices (`vnet*`: a prefix)
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
        # every named target is treated as acting on the frame (DNAT, REJECT, LOG, MARK...),
        # except NOTRACK / CT --notrack: it only keeps conntrack away, as the fast path does
        if not r.notrack:
            effects.append(f"target {r.target}")
        verdict = "drop" if r.target == "REJECT" else "continue"
    elif r.target == "":
        verdict = "continue"
    if r.target_kind == "verdict" and verdict in ("drop", "queue"):
        effects.append(r.target)
    # every legacy entry counts the frames it matches (iptables -v), whether or not it acts
    return Rule(r.position, r.text(family, chain), tuple(conds), tuple(effects), verdict, target, True)


# ---- nftables --------------------------------------------------------------------------------


def from_nft(ruleset):
    """A loader.nftables.Ruleset as walkable tables."""
    tables, chains, sets = {}, {}, {}
    for item in ruleset.items:
        if "chain" in item:
            c = item["chain"]
            key = (c["family"], c["table"], c["name"])
            chains[key] = {"meta": c, "rules": []}
        for kind in ("set", "map"):
            if kind in item:
                s = item[kind]
                sets[(s.get("family"), s.get("table"), s.get("name"))] = s
    for item in ruleset.items:
        if "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            text = ruleset.texts.get((*key, r.get("handle")), "")
            if key in chains:
                chains[key]["rules"].extend(_nft_rules(r, text, _Sets(sets, r["family"], r["table"])))
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
    for (family, tname, cname), (hook, devices) in ruleset.unlisted.items():
        # the kernel has this chain and nft did not list it: its rules are unknown
        why = f"chain not listed by nft (bound to {', '.join(devices) or 'no device'}): its rules are unknown"
        unknown = Rule(None, "", (), (why,), "continue")
        table = tables.setdefault((family, tname), Table(family, "nft", tname, {}))
        table.chains[cname] = Chain(cname, hook, "accept", (unknown,), tuple(devices))
    return list(tables.values())


@dataclasses.dataclass(frozen=True)
class _Sets:
    """The named sets and maps a rule of table (family, table) can refer to."""

    sets: dict
    family: str
    table: str

    def get(self, ref):
        return self.sets.get((self.family, self.table, ref[1:]))


def _element(e):
    """(value, why not) of one set element: a plain value, or one with a comment or a
    counter; an element that expires changes without any rule changing."""
    if isinstance(e, dict) and "elem" in e and isinstance(e["elem"], dict):
        inner = e["elem"]
        if "timeout" in inner or "expires" in inner:
            return None, "element with a timeout"
        return _element(inner.get("val"))
    if isinstance(e, str | int):
        return str(e), ""
    return None, "element not understood"


def _set_elements(s):
    """(elements, why not) of a named set or map: elements as nft lists them ("elem"), or
    None with the reason when the set changes on its own (timeouts, dynamic updates from the
    packet path)."""
    flags = s.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags
    if "timeout" in s or any(f in ("timeout", "dynamic") for f in flags):
        return None, f"set @{s.get('name')} changes on its own ({', '.join(flags) or 'timeout'})"
    return s.get("elem") or [], ""


def _set_counts(s):
    """The set or map counts per element (`counter` in its definition or its elements)."""
    stmts = s.get("stmt") or []
    if any(isinstance(st, dict) and "counter" in st for st in stmts):
        return True
    return any(isinstance(e, dict) and "counter" in e.get("elem", {}) for e in s.get("elem") or [])


def _names(right, op, key, sets):
    """NftNames for a name test, or (None, why) when it cannot be evaluated."""
    values = right
    if isinstance(right, str) and right.startswith("@"):
        s = sets.get(right)
        if s is None:
            return None, f"set {right} (not found)"
        values, why = _set_elements(s)
        if values is None:
            return None, why
    elif isinstance(right, dict) and "set" in right:
        values = right["set"]
    elif not isinstance(right, list):
        values = [right]
    names = []
    for v in values:
        value, why = _element(v)
        if value is None:
            return None, f"set {why}"
        if key in _INDEX_KEYS and value.isdigit():
            return None, f"interface index {value} names no device"
        names.append(value)
    if op not in ("==", "!=", "in"):
        return None, f"{key} {op}"
    return NftNames(tuple(names), op == "!="), ""


_META_SIDES = {"iifname": "in", "oifname": "out", "iif": "in", "oif": "out"}
_BR_SIDES = {"ibrname": "in", "obrname": "out", "ibriport": "in", "obriport": "out"}


def _nft_cond(match, sets):
    """(Cond, effect or None) of one JSON match."""
    left, right, op = match.get("left"), match.get("right"), match.get("op", "==")
    if isinstance(left, dict) and "meta" in left:
        key = left["meta"].get("key")
        side = _META_SIDES.get(key) or _BR_SIDES.get(key)
        if side:
            test, why = _names(right, op, key, sets)
            if test is not None:
                return Cond("brname" if key in _BR_SIDES else "dev", side, test), None
            return Cond("maybe", what=f"{key} {why}"), None
    if isinstance(left, dict) and "ct" in left:
        return Cond("maybe", what=f"ct {left['ct'].get('key')}"), f"conntrack {left['ct'].get('key')}"
    if isinstance(right, str) and right.startswith("@"):
        s = sets.get(right)
        if s is None or _set_elements(s)[0] is None:
            return Cond("maybe", what=f"{_describe(left)} in {right}"), None
    return Cond("maybe", what=_describe(left)), None


def _describe(expr):
    if isinstance(expr, dict) and expr:
        k, v = next(iter(expr.items()))
        if isinstance(v, dict):
            return f"{k} {v.get('key') or v.get('field') or v.get('name') or ''}".strip()
        return k
    return "expression"


def _referenced_sets(expr, sets):
    """Named sets and maps an expression refers to ("@name" anywhere in it)."""
    if isinstance(expr, str):
        return [s] if expr.startswith("@") and (s := sets.get(expr)) is not None else []
    if isinstance(expr, dict):
        return [s for v in expr.values() for s in _referenced_sets(v, sets)]
    if isinstance(expr, list):
        return [s for v in expr for s in _referenced_sets(v, sets)]
    return []


def _nft_rules(r, text, sets):
    """One JSON rule; a verdict map becomes one rule per element (exclusive conditions, so the
    sequence decides as the map does)."""
    conds, effects, verdict, target, vmaps, counts = [], [], "continue", None, [], False
    for stmt in r.get("expr", []):
        (key, val), *_ = stmt.items()
        if key == "match":
            cond, effect = _nft_cond(val, sets)
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
        elif key == "counter":
            counts = True  # anonymous or named (`counter name "x"`)
        elif key not in NFT_NEUTRAL:
            effects.append(f"statement {key}")
    counts |= any(_set_counts(s) for s in _referenced_sets(r.get("expr", []), sets))
    base = Rule(r.get("handle"), text, tuple(conds), tuple(effects), verdict, target, counts)
    if not vmaps:
        return [base]
    if len(vmaps) > 1:
        return [dataclasses.replace(base, effects=(*effects, "several verdict maps"))]
    return _expand_vmap(base, vmaps[0], sets)


def _expand_vmap(base, vmap, sets):
    key = vmap.get("key")
    data = vmap.get("data")
    if isinstance(data, str) and data.startswith("@"):
        named = sets.get(data)
        if named is None or named.get("map") != "verdict":
            return [dataclasses.replace(base, effects=(*base.effects, f"verdict map {data} (not read)"))]
        elements, why = _set_elements(named)
        if elements is None:
            return [dataclasses.replace(base, effects=(*base.effects, f"verdict map {why}"))]
    else:
        elements = data.get("set") if isinstance(data, dict) else None
    if not isinstance(elements, list):
        return [dataclasses.replace(base, effects=(*base.effects, "verdict map not understood"))]
    out = []
    for element in elements:
        if not (isinstance(element, list) and len(element) == 2 and isinstance(element[1], dict)):
            return [dataclasses.replace(base, effects=(*base.effects, "verdict map element not understood"))]
        value, verdict = element
        value, why = _element(value)
        if value is None:
            cond = Cond("maybe", what=f"verdict map {why}")
        else:
            cond, _effect = _nft_cond({"left": key, "right": value, "op": "=="}, sets)
        (vkey, vval), *_ = verdict.items()
        target = vval.get("target") if isinstance(vval, dict) else None
        effects = base.effects + ((vkey,) if vkey in ("drop", "queue", "reject") else ())
        out.append(dataclasses.replace(base, conds=(*base.conds, cond), effects=effects, verdict=vkey,
                                       target=target))  # fmt: skip
    return out
