"""The netfilter decision of each attached bridge, kept beside the instance's run state so that
`show` and the metrics name each held port's rule without walking the rules again.

Keyed by the bridge's identity (name and namespace, `BridgeId.label`); written atomically, and
only when the decision changed (a reconcile that decides the same writes nothing).
"""

import os

from ...loader import instance
from ...loader.bridge_id import BridgeId
from .. import records
from .policy import Hold


def _path(bridge, netns):
    return os.path.join(instance.run_dir(), "netfilter", f"{BridgeId(bridge, netns).label}.json")


def save(bridge, netns, decision):
    """Keep the decision (None: bypass) for `show` and the metrics."""
    records.save(_path(bridge, netns), decision.to_dict() if decision else None)


def load(bridge, netns):
    """{"bridge_hold": hold|None, "ports": {port: hold|None}} as saved, or None (bypass, or
    never decided); a hold is policy.Hold.to_dict() plus its one-line text."""
    raw = records.load(_path(bridge, netns))
    if not isinstance(raw, dict):
        return None

    def hold(h):
        return dict(h, text=Hold(**h).line()) if h else None

    return {
        "bridge_hold": hold(raw.get("bridge_hold")),
        "ports": {p["port"]: hold(p["hold"]) for p in raw.get("ports", [])},
    }


def forget(bridge, netns):
    records.forget(_path(bridge, netns))
