"""xdpbr's programs on one bridge port: put on, replaced and taken off, never another tool's.

`reconcile` (control/datapath/attachment.py) decides what each port runs; this module does it. The XDP
program is recognised as xdpbr's by name (XDP_PROG_NAME) and replaced atomically
(XDP_FLAGS_REPLACE with the running program as the expected one); a port that runs another
tool's XDP program keeps it (an explicit mode fails, `auto` is lowered). The TC filter is found by
xdpbr's priority and name, and the clsact qdisc is removed only where xdpbr added it (the
port entry's `owned` flags remember that). What it adds registers its undo in the caller's
journal, so a failed attach takes it off again.
"""

import os

from ...loader import bpfsys
from ...loader.errors import Unsupported, XdpbrError
from ...loader.layouts import OWN_CLSACT
from ..model import lower_plan

XDP_PROG_NAME = "xdpbr_xdp"


def is_ours(prog_id):
    """Is the XDP program with this id xdpbr's (any instance's, any version's)?"""
    if not prog_id:
        return False
    try:
        fd = bpfsys.prog_fd_by_id(prog_id)
    except XdpbrError:
        return False
    try:
        return bpfsys.prog_info(fd).name.decode() == XDP_PROG_NAME
    finally:
        os.close(fd)


def attach_xdp(s, port, plan, xdp_mode, journal):
    """Run the XDP program on the port. Returns (plan, attach mode) after any fallback."""
    current = s.rtnl.xdp_state(port.ifindex)
    if current["prog_id"] and not is_ours(current["prog_id"]):
        msg = f"{port.name} already runs another XDP program (id {current['prog_id']})"
        if plan.explicit:
            raise XdpbrError(msg, fix="xdpbr never replaces another tool's program; use --mode tc")
        return lower_plan(plan, "foreign_xdp"), "none"
    tries = ["native", "generic"] if xdp_mode == "any" else [xdp_mode]
    if not plan.explicit and xdp_mode == "any":
        tries = ["native"]  # auto: generic XDP is slower than TC and breaks GSO
    failure = None
    for mode in tries:
        if current["prog_id"] == s.prog_id("xdp") and current["mode"] == mode:
            return plan, mode  # already running: touching it would emit RTM_NEWLINK for nothing
        if current["prog_id"] and current["mode"] == mode:
            old = bpfsys.prog_fd_by_id(current["prog_id"])
            try:
                s.rtnl.attach_xdp(port.ifindex, port.name, s.prog_fds["xdp"], mode, expected_fd=old)
            finally:
                os.close(old)
            return plan, mode
        if current["prog_id"]:
            s.rtnl.detach_xdp(port.ifindex, current["mode"])
            current = {"mode": None, "prog_id": 0}
        try:
            s.rtnl.attach_xdp(port.ifindex, port.name, s.prog_fds["xdp"], mode)
        except Unsupported as exc:
            failure = exc
            continue
        journal.push(s.rtnl.detach_xdp, port.ifindex, mode)
        return plan, mode
    if plan.explicit:
        fix = "use --mode tc, or --xdp-mode generic" if tries == ["native"] else "use --mode tc"
        raise XdpbrError(f"{failure}", fix=fix)
    reason = "no_native_xdp" if failure and failure.errno == 95 else "xdp_refused"
    return lower_plan(plan, reason), "none"


def detach_xdp(s, ifindex):
    """Take xdpbr's XDP program off the port, if it runs there."""
    current = s.rtnl.xdp_state(ifindex)
    if current["prog_id"] and is_ours(current["prog_id"]):
        s.rtnl.detach_xdp(ifindex, current["mode"])


def attach_tc(s, port, owned, journal, replace):
    """Run the TC program on the port (replaced if `replace`), adding a clsact qdisc where
    there is none. Returns the port's `owned` flags."""
    if not s.rtnl.has_clsact(port.ifindex):
        s.rtnl.add_clsact(port.ifindex)
        owned |= OWN_CLSACT
        journal.push(s.rtnl.del_clsact, port.ifindex)
    present = s.rtnl.has_xdpbr_filter(port.ifindex)
    if present and not replace:
        return owned
    s.rtnl.attach_tc(port.ifindex, port.name, s.prog_fds["tc"], replace=present)
    if not present:
        journal.push(s.rtnl.detach_tc, port.ifindex)
    return owned


def detach_tc(s, ifindex, owned):
    """Take xdpbr's TC filter off the port, and the clsact qdisc if xdpbr added it and nothing
    else filters there. Returns the port's `owned` flags."""
    if s.rtnl.has_xdpbr_filter(ifindex):
        s.rtnl.detach_tc(ifindex)
    if owned & OWN_CLSACT and not s.rtnl.ingress_filters(ifindex):
        s.rtnl.del_clsact(ifindex)
    return owned & ~OWN_CLSACT
