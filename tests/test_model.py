"""The pure decision of each port's mode (control/model.py), on PortInfo values alone."""

import pytest
from xdpbr.control.model import PortInfo, PortPlan, lower_plan, plan_port
from xdpbr.loader.layouts import MODE_REASONS, MODES


def port(kind="veth", **kw):
    return PortInfo(name="p0", ifindex=7, kind=kind, mtu=1500, state=3, **kw)


@pytest.mark.parametrize(
    "kind, mode", [("veth", "tc"), ("tun", "xdp+tc"), ("", "xdp+tc"), ("vxlan", "xdp+tc")]
)
def test_auto_picks_the_mode_of_the_port_kind(kind, mode):
    assert plan_port(port(kind), "auto", netfilter_blocked=False) == PortPlan(mode, "auto", False)


@pytest.mark.parametrize("requested", ["xdp", "tc", "xdp+tc", "bridge"])
def test_a_requested_mode_is_explicit_and_wins_over_the_port_kind(requested):
    plan = plan_port(port("veth", unsupported_flags=("locked",)), requested, netfilter_blocked=False)
    assert plan == PortPlan(requested, "requested", True)


def test_netfilter_holds_the_port_on_the_bridge_whatever_was_requested():
    for requested in ("auto", "xdp", "tc"):
        assert plan_port(port(), requested, netfilter_blocked=True) == PortPlan("bridge", "netfilter", False)


def test_auto_leaves_a_port_with_features_xdpbr_does_not_model_to_the_bridge():
    plan = plan_port(port("tun", unsupported_flags=("locked",)), "auto", netfilter_blocked=False)
    assert plan == PortPlan("bridge", "unsupported_port", False)


@pytest.mark.parametrize(
    "mode, lowered", [("xdp", "tc"), ("xdp+tc", "tc"), ("tc", "tc"), ("bridge", "bridge")]
)
def test_lowering_keeps_a_port_accelerated_with_tc_and_says_why(mode, lowered):
    plan = lower_plan(PortPlan(mode, "requested", True), "no_native_xdp")
    assert plan == PortPlan(lowered, "no_native_xdp", False)
    assert plan.mode in MODES and plan.reason in MODE_REASONS


def test_plans_say_which_attach_points_they_need():
    assert (PortPlan("xdp+tc", "auto", False).wants_xdp, PortPlan("xdp+tc", "auto", False).wants_tc) == (
        True,
        True,
    )
    assert (PortPlan("tc", "auto", False).wants_xdp, PortPlan("bridge", "auto", False).wants_tc) == (
        False,
        False,
    )
