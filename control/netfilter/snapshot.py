"""Everything netfilter could do to a namespace's bridged frames, read once for all its bridges.

`read(netns)` collects the legacy tables, the nftables ruleset (with its named sets and maps,
and the chains' devices), br_netfilter's sysctls (bridge-nf-call-*, and the two that give a
tagged frame the bridge's VLAN device as its in device) and what could not be read; `decide()`
runs the per-port walk (policy.py) for one bridge, with the bridge's own nf_call_* options.
`fingerprint(netns)` is the cheap poll for legacy tables and the sysctls (poll.py; nftables
changes, set elements included, arrive as NFNLGRP_NFTABLES notifications instead).
"""

import dataclasses

from ...loader import nftables, xtables
from ...loader.errors import XdpbrError
from ...loader.netns import bridge_nf, bridge_nf_call, entered
from . import policy as nfpolicy
from . import rules as nfrules

SYSCTLS = ("iptables", "ip6tables", "arptables")
# br_netfilter's other sysctls the walk reads (/proc/sys/net/bridge/bridge-nf-NAME, per namespace)
VLAN_SYSCTLS = ("filter-vlan-tagged", "pass-vlan-input-dev")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    tables: tuple  # nfrules.Table, legacy and nft
    unreadable: tuple  # (family, source, reason): rulesets that may exist but were not read
    sysctls: dict  # {"iptables": bool, "ip6tables": bool, "arptables": bool, VLAN_SYSCTLS: bool}
    digests: dict  # {("legacy", family, table) | ("nft",): digest}: equal digests, equal rules


def read(netns=None):
    """A Snapshot of namespace `netns` (None: the current one)."""
    tables, unreadable, digests = [], [], {}
    with entered(netns):
        sysctls = {n: bridge_nf_call(n) for n in SYSCTLS}
        sysctls.update((n, bridge_nf(n)) for n in VLAN_SYSCTLS)
        for family in ("ip", "ip6", "arp"):
            try:
                for t in xtables.read_family(family):
                    tables.append(nfrules.from_xtables(t))
                    digests[("legacy", family, t.name)] = t.digest
            except XdpbrError as exc:
                unreadable.append((family, "legacy", str(exc)))
        present, why = xtables.ebtables_status()
        if present:
            unreadable.append(("bridge", "legacy", why))
        try:
            ruleset = nftables.read_ruleset()
            tables.extend(nfrules.from_nft(ruleset))
            digests[("nft",)] = ruleset.digest
            if ruleset.devices_error:  # a chain on a wildcard device that nft does not list is unseen
                unreadable.append(("*", "nft", ruleset.devices_error))
        except nftables.NftUnavailable as exc:
            unreadable.append(("*", "nft", str(exc)))
    return Snapshot(tuple(tables), tuple(unreadable), sysctls, digests)


def decide(snapshot, bridge, ports, options, counters="ignore"):
    """nfpolicy.Decision for one bridge of the snapshot's namespace; counters: the
    attachment's netfilter_counters ("ignore" | "hold")."""
    calls = nfpolicy.Calls.combine(snapshot.sysctls, options)
    return nfpolicy.decide(bridge, ports, calls, snapshot.tables, snapshot.unreadable, counters)


def fingerprint(netns=None, previous=None, kept=None):
    """Legacy tables' content (counters zeroed) and the sysctls, cheaply: compare two results to
    know whether to re-read. `previous`, this namespace's last answer, makes it cheaper (see
    xtables.table_print), not different; so does `kept` (netns.KeptFiles of `netns`, which a
    poller keeps between calls). Does not cover nftables."""
    previous = previous or {}
    if kept is not None:
        kept.check()
        return _fingerprint(previous, kept)
    with entered(netns):
        return _fingerprint(previous, None)


def _fingerprint(previous, kept):
    out = {n: bridge_nf_call(n, kept) for n in SYSCTLS}
    out.update((n, bridge_nf(n, kept)) for n in VLAN_SYSCTLS)
    for family in ("ip", "ip6", "arp"):
        out[family] = xtables.fingerprint(family, previous.get(family), kept)
    # legacy ebtables appearing (a table's module autoloaded by a first rule) holds every bridge
    out["ebtables"] = xtables.ebtables_status()[0]
    return out


def decide_for(s, ports, snap=None):
    """policy.Decision for the bridge of datapath Session `s` and its `ports` (names), with the
    attachment's netfilter_counters (its xdpbr_meta); `snap` saves a caller that has the
    namespace's Snapshot a second read."""
    snap = snap or read(s.netns)
    counters = nfpolicy.COUNTERS[s.meta().netfilter_counters == 1]  # 0 ignore, 1 hold
    return decide(snap, s.bridge.name, ports, s.rtnl.bridge_nf_options(s.bridge.name), counters)
