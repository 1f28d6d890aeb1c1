"""The netfilter decision of each attached bridge, kept beside the instance's run state so that
`show` and the metrics name each held port's rule without walking the rules again.

Keyed by the bridge's identity (name and namespace, `BridgeId.label`); written atomically, and
only when the decision changed (a reconcile that decides the same writes nothing).
"""

import json
import os

from ...loader import instance
from ...loader.bridge_id import BridgeId
from .policy import Hold

_written = {}  # path -> the bytes this process last wrote there


def _path(bridge, netns):
    return os.path.join(instance.run_dir(), "netfilter", f"{BridgeId(bridge, netns).label}.json")


def save(bridge, netns, decision):
    """Keep the decision (None: bypass) for `show` and the metrics."""
    path = _path(bridge, netns)
    data = json.dumps(decision.to_dict() if decision else None).encode()
    if _written.get(path) == data and os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
    _written[path] = data


def load(bridge, netns):
    """{"bridge_hold": hold|None, "ports": {port: hold|None}} as saved, or None (bypass, or
    never decided); a hold is policy.Hold.to_dict() plus its one-line text."""
    try:
        with open(_path(bridge, netns)) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None

    def hold(h):
        return dict(h, text=Hold(**h).line()) if h else None

    return {
        "bridge_hold": hold(raw.get("bridge_hold")),
        "ports": {p["port"]: hold(p["hold"]) for p in raw.get("ports", [])},
    }


def forget(bridge, netns):
    path = _path(bridge, netns)
    _written.pop(path, None)
    try:
        os.unlink(path)
    except OSError:
        pass
