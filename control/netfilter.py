"""Could netfilter rules see the frames of a bridge in this namespace?

The fast path skips bridge netfilter, where libvirt and OpenStack keep anti-spoofing rules. So a
bridge is accelerated only if no rule could see its frames, unless the operator chose
`--netfilter bypass`: nftables `bridge` family rules (ebtables-nft too), and with
bridge-nf-call-{iptables,ip6tables,arptables} on, any rule or a non-accept policy in the
FORWARD chains of the matching families.
"""

import json
import subprocess

from loader.netns import entered, netns_path, nsenter_prefix

CALL_SYSCTLS = {
    "iptables": ("ip", "inet"),
    "ip6tables": ("ip6", "inet"),
    "arptables": ("arp",),
}


def _sysctl_on(name):
    try:
        with open(f"/proc/sys/net/bridge/bridge-nf-call-{name}") as f:
            return f.read().strip() == "1"
    except OSError:
        return False  # br_netfilter not loaded: the bridge calls no IP hooks


def _ruleset(netns):
    argv = ["nft", "-j", "list", "ruleset"]
    if netns:
        argv = [*nsenter_prefix(netns_path(netns)), *argv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout or "{}").get("nftables", [])


def check(netns=None):
    """(could_see, why): why is a short sentence for `xdpbr show`."""
    with entered(netns):
        calls = {name: _sysctl_on(name) for name in CALL_SYSCTLS}
        legacy = _legacy_ip_tables()
    items = _ruleset(netns)
    if items is None:
        return True, "cannot list nftables rules (is nft installed?)"
    families = {"bridge"}
    for name, fams in CALL_SYSCTLS.items():
        if calls[name]:
            families.update(fams)
    chains, rules = {}, {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            rules[key] = rules.get(key, 0) + 1
    for key, chain in sorted(chains.items()):
        family = key[0]
        if family not in families or "hook" not in chain:
            continue
        if family != "bridge" and chain["hook"] != "forward":
            continue
        if rules.get(key) or chain.get("policy", "accept") != "accept":
            return True, f"nftables chain {family} {key[1]} {key[2]} could see bridged frames"
    if calls["iptables"] and legacy:
        return True, "legacy iptables tables are loaded and bridge-nf-call-iptables is on"
    return False, "no netfilter rule can see bridged frames"


def _legacy_ip_tables():
    try:
        with open("/proc/net/ip_tables_names") as f:
            return bool(f.read().strip())
    except OSError:
        return False
