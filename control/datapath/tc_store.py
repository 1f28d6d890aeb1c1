"""What tc policy each port of an attached bridge carries, as the last reconcile found it:
{port: {"egress": text or None, "ingress": text or None}}, kept beside the instance's run state
so that `show`, `port show` and the metrics name the qdisc, filter or program without asking
the kernel for every port. Written atomically, and only when it changed."""

import json
import os

from ...loader import instance
from ...loader.bridge_id import BridgeId

_written = {}  # path -> the bytes this process last wrote there


def _path(bridge, netns):
    return os.path.join(instance.run_dir(), "tc", f"{BridgeId(bridge, netns).label}.json")


def save(bridge, netns, policies):
    """policies: {port name: (egress, ingress)}."""
    path = _path(bridge, netns)
    data = json.dumps({p: {"egress": e, "ingress": i} for p, (e, i) in sorted(policies.items())}).encode()
    if _written.get(path) == data and os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
    _written[path] = data


def load(bridge, netns):
    """{port: {"egress": ..., "ingress": ...}} as saved, or {} (never reconciled)."""
    try:
        with open(_path(bridge, netns)) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def forget(bridge, netns):
    path = _path(bridge, netns)
    _written.pop(path, None)
    try:
        os.unlink(path)
    except OSError:
        pass
