"""xdpbr's programs on one bridge port: put on, replaced and taken off, never another tool's.

`reconcile` (control/datapath/attachment.py) decides what each port runs; this module does it. The XDP
program is recognised as xdpbr's by name (XDP_PROG_NAME) and replaced atomically
(XDP_FLAGS_REPLACE with the running program as the expected one); a port that runs another
tool's XDP program keeps it (an explicit mode fails, `auto` is lowered). The TC program is a
TCX link pinned beside the maps (`tcx_IFINDEX`), after every other program on the port, so it
takes no qdisc slot another tool needs; where TCX is missing it is a cls_bpf filter found by
xdpbr's priority and name on an `ingress` qdisc, removed only where xdpbr added it (the port
entry's `owned` flags remember that). What it adds registers its undo in the caller's
journal, so a failed attach takes it off again.
"""

import concurrent.futures
import os

from ...loader import bpfsys, tcx
from ...loader.errors import Unsupported, XdpbrError
from ...loader.layouts import OWN_CLSACT, OWN_INGRESS, TC_VIA_QDISC, TC_VIA_TCX
from ..model import lower_plan

XDP_PROG_NAME = "xdpbr_xdp"
TCX_PIN_PREFIX = "tcx_"  # a port's TCX link, pinned in the bridge's directory


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
    """Run the XDP program on the port. Returns (plan, attach mode) after any fallback. What
    runs there now comes with the port (its link message): no query per port."""
    current = {"mode": port.xdp_mode, "prog_id": port.xdp_prog_id}
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


def detach_xdp(s, ifindex, port=None):
    """Take xdpbr's XDP program off the port, if it runs there (`port`: its PortInfo as read,
    which says what runs; else it is asked)."""
    current = {"mode": port.xdp_mode, "prog_id": port.xdp_prog_id} if port else s.rtnl.xdp_state(ifindex)
    if current["prog_id"] and is_ours(current["prog_id"]):
        s.rtnl.detach_xdp(ifindex, current["mode"])


def tc_attach_choice():
    """How the TC program goes on a port: "tcx" (a link, taking no qdisc slot; the default) with
    the `ingress` qdisc and a cls_bpf filter where the kernel has no TCX, or "qdisc" when the
    environment says XDPBR_TC_ATTACH=qdisc (kernels whose TCX misbehaves; the tests force it)."""
    return "qdisc" if os.environ.get("XDPBR_TC_ATTACH") == "qdisc" else "tcx"


def _tcx_pin(s, ifindex):
    return os.path.join(s.dir, f"{TCX_PIN_PREFIX}{ifindex}")


def attach_tc(s, port, owned, journal, replace):
    """Run the TC program on the port: a TCX link after every other program there (pinned, so
    it outlives the command), replaced atomically when its program is not the current one; where
    TCX is missing, a cls_bpf filter on an `ingress` qdisc (added where the port has none). An
    old cls_bpf attachment is taken off once the link runs. Returns the port's `owned` flags."""
    if tc_attach_choice() == "tcx":
        try:
            _attach_tcx(s, port, journal)
        except Unsupported:
            pass  # this kernel has no TCX: the qdisc path below
        else:
            if owned & (TC_VIA_QDISC | OWN_CLSACT | OWN_INGRESS) or not owned & TC_VIA_TCX:
                owned = _detach_filter(s, port.ifindex, owned)  # an older attachment's filter
            return (owned | TC_VIA_TCX) & ~TC_VIA_QDISC
    _detach_tcx(s, port.ifindex)
    present = s.rtnl.has_xdpbr_filter(port.ifindex)
    if owned & OWN_INGRESS and not present:
        owned &= ~OWN_INGRESS  # another tool replaced the qdisc xdpbr added: it is theirs now
    kind = s.rtnl.ingress_qdisc(port.ifindex)
    if kind is None:
        s.rtnl.add_ingress(port.ifindex)
        owned |= OWN_INGRESS
        journal.push(s.rtnl.del_ingress, port.ifindex)
    # xdpbr's priority number is high (TC_FILTER_PRIO): its filter runs after another tool's
    if not present or replace:
        s.rtnl.attach_tc(port.ifindex, port.name, s.prog_fds["tc"], replace=present)
        if not present:
            journal.push(s.rtnl.detach_tc, port.ifindex)
    return (owned | TC_VIA_QDISC) & ~TC_VIA_TCX


TCX_ATTACH_THREADS = 16


def prepare_tcx(s, ports, journal):
    """Create the TCX links of `ports` that have none, several at a time: each attach waits for
    an RCU grace period in the kernel (~10 ms here), so one after another they took 2.7 s for
    256 ports. Where TCX is missing this does nothing (attach_tc falls back per port)."""
    if tc_attach_choice() != "tcx":
        return
    missing = [p for p in ports if tcx.link_program_id(_tcx_pin(s, p.ifindex)) is None]
    if not missing:
        return

    def one(port):
        try:
            fd = tcx.attach(s.prog_fds["tc"], port.ifindex, port.name, s.netns)
        except Unsupported:
            return None
        try:
            bpfsys.obj_pin(fd, _tcx_pin(s, port.ifindex))
        finally:
            os.close(fd)
        return port.ifindex

    with concurrent.futures.ThreadPoolExecutor(TCX_ATTACH_THREADS) as pool:
        futures = [pool.submit(one, p) for p in missing]
        for future in futures:
            try:
                ifindex = future.result()
            except XdpbrError:
                continue  # attach_tc tries this port again and raises what it finds
            if ifindex is not None:
                journal.push(_detach_tcx, s, ifindex)


def _attach_tcx(s, port, journal):
    path = _tcx_pin(s, port.ifindex)
    prog_id = s.prog_id("tc")
    running = tcx.link_program_id(path)
    if running == prog_id:
        return
    if running is not None:
        fd = bpfsys.obj_get(path)
        try:
            tcx.update(fd, s.prog_fds["tc"], port.name)  # an upgrade: atomic, no frame lost
            return
        except XdpbrError:
            os.unlink(path)  # a link whose device went away: make a new one
        finally:
            os.close(fd)
    fd = tcx.attach(s.prog_fds["tc"], port.ifindex, port.name, s.netns)
    try:
        bpfsys.obj_pin(fd, path)
    finally:
        os.close(fd)
    journal.push(_detach_tcx, s, port.ifindex)


def _detach_tcx(s, ifindex):
    path = _tcx_pin(s, ifindex)
    if not os.path.exists(path):
        return
    fd = bpfsys.obj_get(path)
    try:
        tcx.detach(fd)
    finally:
        os.close(fd)
    os.unlink(path)


def _detach_filter(s, ifindex, owned):
    """xdpbr's cls_bpf filter off the port, and a qdisc xdpbr added if nothing else filters."""
    if s.rtnl.has_xdpbr_filter(ifindex):
        s.rtnl.detach_tc(ifindex)
    if owned & (OWN_CLSACT | OWN_INGRESS) and not s.rtnl.foreign_ingress_filters(ifindex):
        if owned & OWN_CLSACT:
            s.rtnl.del_clsact(ifindex)
        if owned & OWN_INGRESS:
            s.rtnl.del_ingress(ifindex)
    return owned & ~(OWN_CLSACT | OWN_INGRESS)


def detach_tc(s, ifindex, owned):
    """Take xdpbr's TC program off the port (its TCX link, or its filter and a qdisc xdpbr added
    where nothing else filters). Returns the port's `owned` flags."""
    _detach_tcx(s, ifindex)
    return _detach_filter(s, ifindex, owned) & ~(TC_VIA_TCX | TC_VIA_QDISC)
