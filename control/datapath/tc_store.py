"""What tc policy each port of an attached bridge carries, as the last reconcile found it:
{port: {"egress": text or None, "ingress": text or None}}, kept beside the instance's run state
so that `show`, `port show` and the metrics name the qdisc, filter or program without asking
the kernel for every port. Written atomically, and only when it changed."""

import os

from ...loader import instance
from ...loader.bridge_id import BridgeId
from .. import records


def _path(bridge, netns):
    return os.path.join(instance.run_dir(), "tc", f"{BridgeId(bridge, netns).label}.json")


def save(bridge, netns, policies):
    """policies: {port name: (egress, ingress)}."""
    records.save(
        _path(bridge, netns), {p: {"egress": e, "ingress": i} for p, (e, i) in sorted(policies.items())}
    )


def load(bridge, netns):
    """{port: {"egress": ..., "ingress": ...}} as saved, or {} (never reconciled)."""
    raw = records.load(_path(bridge, netns))
    return raw if isinstance(raw, dict) else {}


def forget(bridge, netns):
    records.forget(_path(bridge, netns))
