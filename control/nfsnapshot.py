"""Everything netfilter could do to a namespace's bridged frames, read once for all its bridges.

`read(netns)` collects the legacy tables, the nftables ruleset, the bridge-nf-call-* sysctls and
what could not be read; `bridge_options()` reads a bridge's own nf_call_* options;
`decide()` runs control/nfpolicy.py for one bridge. `fingerprint(netns)` is the daemon's cheap
poll for legacy tables (nftables changes arrive as NFNLGRP_NFTABLES notifications instead).
"""

import dataclasses

from control import nfpolicy, nfrules
from loader import nftables, xtables
from loader.errors import XdpbrError
from loader.netns import entered

SYSCTLS = ("iptables", "ip6tables", "arptables")
OPTIONS = {
    "nf_call_iptables": "IFLA_BR_NF_CALL_IPTABLES",
    "nf_call_ip6tables": "IFLA_BR_NF_CALL_IP6TABLES",
    "nf_call_arptables": "IFLA_BR_NF_CALL_ARPTABLES",
}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    tables: tuple  # nfrules.Table, legacy and nft
    unreadable: tuple  # (family, source, reason): rulesets that may exist but were not read
    sysctls: dict  # {"iptables": bool, "ip6tables": bool, "arptables": bool}
    digests: dict  # {("legacy", family, table) | ("nft",): digest}: equal digests, equal rules


def _sysctl_on(name, kept=None):
    # /proc/sys/net is the opening thread's namespace; br_netfilter's sysctls are per namespace.
    # Absent: br_netfilter not loaded, so no bridge calls a netfilter family.
    path = f"/proc/sys/net/bridge/bridge-nf-call-{name}"
    if kept is not None:
        return (kept.read(path) or "").strip() == "1"
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def read(netns=None):
    """A Snapshot of namespace `netns` (None: the current one)."""
    tables, unreadable, digests = [], [], {}
    with entered(netns):
        sysctls = {n: _sysctl_on(n) for n in SYSCTLS}
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


def bridge_options(ipr, bridge):
    """{"nf_call_iptables": bool, ...} of a bridge, from its RTM_NEWLINK (IFLA_INFO_DATA)."""
    links = ipr.get_links(ifname=bridge)
    info = links[0].get_attr("IFLA_LINKINFO") if links else None
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    return {k: bool(data.get_attr(a)) if data else False for k, a in OPTIONS.items()}


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
    out = {n: _sysctl_on(n, kept) for n in SYSCTLS}
    for family in ("ip", "ip6", "arp"):
        out[family] = xtables.fingerprint(family, previous.get(family), kept)
    # legacy ebtables appearing (its module autoloaded by a first rule) holds every bridge
    out["ebtables"] = xtables.ebtables_status()[0]
    return out
