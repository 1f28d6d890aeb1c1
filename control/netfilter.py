"""Which ports of a bridge netfilter rules could see, and so must stay on the Linux bridge.

The fast path skips bridge netfilter (br_netfilter's calls into the ip, ip6 and arp families,
and the bridge family's hooks), where libvirt, OpenStack and Docker keep their rules. With
`--netfilter respect` (the default) every port a rule can see is held in `bridge` mode, and
frames towards it go to the bridge; every other port stays accelerated. The rulesets are read
through the kernel (legacy tables by getsockopt, loader/xtables.py) and nft (loader/nftables.py),
walked per port by control/nfpolicy.py; a ruleset that cannot be read holds what it could reach.

The decision of the last reconcile is kept beside the instance's run state, so `show` and the
metrics name each held port's rule without walking the rules again.
"""

import json
import os

from control import nfpolicy, nfsnapshot
from loader import instance
from loader.bridge_id import BridgeId


def snapshot(netns):
    """The rulesets, sysctls and unreadable sources of namespace `netns`, read now."""
    return nfsnapshot.read(netns)


def decide(s, ports, snap=None):
    """nfpolicy.Decision for the bridge of Session `s` and its `ports` (names); `snap` saves a
    caller that has the namespace's Snapshot a second read."""
    snap = snap or snapshot(s.netns)
    return nfsnapshot.decide(snap, s.bridge.name, ports, nfsnapshot.bridge_options(s.ipr, s.bridge.name))


def fingerprint(netns, previous=None, kept=None):
    """Cheap: equal answers, same legacy rules and sysctls (nft changes arrive as events);
    `previous`, the namespace's last answer, and `kept`, the files a poller keeps open in it
    (netns.KeptFiles), save work."""
    return nfsnapshot.fingerprint(netns, previous, kept)


def _path(bridge, netns):
    return os.path.join(instance.run_dir(), "netfilter", f"{BridgeId(bridge, netns).label}.json")


def save(bridge, netns, decision):
    """Keep the decision (None: bypass) for `show` and the metrics; written atomically."""
    path = _path(bridge, netns)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(decision.to_dict() if decision else None, f)
    os.rename(tmp, path)


def load(bridge, netns):
    """{"bridge_hold": hold|None, "ports": {port: hold|None}} as saved, or None (bypass, or
    never decided); a hold is nfpolicy.Hold.to_dict() plus its one-line text."""
    try:
        with open(_path(bridge, netns)) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None

    def hold(h):
        return dict(h, text=nfpolicy.Hold(**h).line()) if h else None

    return {
        "bridge_hold": hold(raw.get("bridge_hold")),
        "ports": {p["port"]: hold(p["hold"]) for p in raw.get("ports", [])},
    }


def forget(bridge, netns):
    try:
        os.unlink(_path(bridge, netns))
    except OSError:
        pass
