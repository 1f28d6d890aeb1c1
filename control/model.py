"""The bridge and its ports as xdpbr sees them, and the pure decision of each port's mode.

Dataclasses only, no I/O: tests build them without root.
"""

from dataclasses import dataclass

from ..loader.links import BR_STATE_FORWARDING, BridgeInfo, PortInfo  # noqa: F401 - the model's view of the kernel's

NETFILTER_CHOICES = ("respect", "bypass")

# auto's table by port kind (DESIGN.md "Modes"): veth keeps its offloads with TC (XDP on a veth
# switches the peer's TSO off); a TAP takes XDP for what the VMM writes and TC for GSO and
# pending-checksum frames; anything else (physical uplinks) runs native XDP with TC behind it.
AUTO_MODE_BY_KIND = {"veth": "tc", "tun": "xdp+tc"}
AUTO_MODE_DEFAULT = "xdp+tc"


@dataclass
class FdbRecord:
    """One kernel FDB entry of the bridge (RTM_NEWNEIGH, AF_BRIDGE, NTF_MASTER)."""

    mac: str
    vid: int
    ifindex: int
    local: bool
    static: bool


@dataclass
class PortPlan:
    """What should run on a port, and why."""

    mode: str  # bridge, xdp, tc, xdp+tc
    reason: str  # layouts.MODE_REASONS
    explicit: bool  # the operator asked for this mode: failing to run it is an error

    @property
    def wants_xdp(self):
        return self.mode in ("xdp", "xdp+tc")

    @property
    def wants_tc(self):
        return self.mode in ("tc", "xdp+tc")


def plan_port(port, requested, *, netfilter_blocked):
    """The mode a port should run before probing: `requested` is 'auto' or a mode."""
    if netfilter_blocked:
        return PortPlan("bridge", "netfilter", False)
    if requested != "auto":
        return PortPlan(requested, "requested", True)
    if port.unsupported_flags:
        return PortPlan("bridge", "unsupported_port", False)
    return PortPlan(AUTO_MODE_BY_KIND.get(port.kind, AUTO_MODE_DEFAULT), "auto", False)


def lower_plan(plan, reason):
    """auto's fallback when XDP cannot run on the port: TC keeps it accelerated."""
    mode = "tc" if plan.mode in ("xdp", "xdp+tc") else plan.mode
    return PortPlan(mode, reason, False)
