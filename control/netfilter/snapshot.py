"""Everything netfilter could do to a namespace's bridged frames, read once for all its bridges.

`read(netns)` collects the legacy tables, the nftables ruleset, the bridge-nf-call-* sysctls and
what could not be read; `decide()` runs the per-port walk (policy.py) for one bridge, with the
bridge's own nf_call_* options. `fingerprint(netns)` is the cheap poll for legacy tables
(poll.py; nftables changes arrive as NFNLGRP_NFTABLES notifications instead).
"""

import dataclasses

from ...loader import nftables, xtables
from ...loader.errors import XdpbrError
from ...loader.netns import bridge_nf_call, entered
from . import policy as nfpolicy
from . import rules as nfrules

SYSCTLS = ("iptables", "ip6tables", "arptables")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    tables: tuple  # nfrules.Table, legacy and nft
    unreadable: tuple  # (family, source, reason): rulesets that may exist but were not read
    sysctls: dict  # {"iptables": bool, "ip6tables": bool, "arptables": bool}
    digests: dict  # {("legacy", family, table) | ("nft",): digest}: equal digests, equal rules


def read(netns=None):
    """A Snapshot of namespace `netns` (None: the current one)."""
    tables, unreadable, digests = [], [], {}
    with entered(netns):
        sysctls = {n: bridge_nf_call(n) for n in SYSCTLS}
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
        except nftables.NftUnavailable as exc:
            unreadable.append(("*", "nft", str(exc)))
    return Snapshot(tuple(tables), tuple(unreadable), sysctls, digests)


def decide(snapshot, bridge, ports, options):
    """nfpolicy.Decision for one bridge of the snapshot's namespace."""
    calls = nfpolicy.Calls.combine(snapshot.sysctls, options)
    return nfpolicy.decide(bridge, ports, calls, snapshot.tables, snapshot.unreadable)


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
    for family in ("ip", "ip6", "arp"):
        out[family] = xtables.fingerprint(family, previous.get(family), kept)
    # legacy ebtables appearing (its module autoloaded by a first rule) holds every bridge
    out["ebtables"] = xtables.ebtables_status()[0]
    return out


def decide_for(s, ports, snap=None):
    """policy.Decision for the bridge of datapath Session `s` and its `ports` (names); `snap`
    saves a caller that has the namespace's Snapshot a second read."""
    snap = snap or read(s.netns)
    return decide(snap, s.bridge.name, ports, s.rtnl.bridge_nf_options(s.bridge.name))
