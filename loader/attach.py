"""Attach and detach xdpbr's programs on one interface through pyroute2 (netlink).

XDP: native mode with a generic fallback, atomic replace with XDP_FLAGS_REPLACE, the kernel's
error text through ext_ack. TC: a clsact qdisc (created only if absent, and then owned) and one
cls_bpf direct-action filter on ingress, found again by its name and priority.
Nothing here removes a program, qdisc or filter xdpbr did not create.
"""

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import Unsupported, XdpbrError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

TC_INGRESS_PARENT = 0xFFFFFFF2
TC_EGRESS_PARENT = 0xFFFFFFF3
TC_FILTER_NAME = "xdpbr"
TC_FILTER_PRIO = 0xC0DE  # our own priority: another tool's filters keep theirs
ETH_P_ALL = 0x0003


def open_netlink(netns=None):
    """An RTNL socket in `netns`; flags=0 so a typo never creates a namespace."""
    try:
        if netns:
            return IPRoute(netns=netns, flags=0, ext_ack=True)
        return IPRoute(ext_ack=True)
    except (OSError, NetlinkError) as exc:
        raise XdpbrError(f'cannot open netlink in network namespace "{netns}"', errno=exc.errno) from None


def _kernel_text(exc):
    """The kernel's extended ack message, if pyroute2 kept it."""
    text = getattr(exc, "msg", None) or (exc.args[1] if len(exc.args) > 1 else "")
    return str(text).strip()


def xdp_state(ipr, ifindex):
    """{'mode': 'native'|'generic'|None, 'prog_id': int} of what is attached now (nothing, for
    an interface that went away meanwhile: ports come and go while xdpbr works)."""
    try:
        link = ipr.get_links(ifindex)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return {"mode": None, "prog_id": 0}
        raise XdpbrError(f"cannot read interface {ifindex}", errno=exc.code) from None
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return {"mode": None, "prog_id": 0}
    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
    # pyroute2 decodes XDP_ATTACHED_{DRV,SKB,HW,MULTI} to these words
    mode = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "multi"}.get(
        attached
    )
    return {"mode": mode, "prog_id": prog_id}


def attach_xdp(ipr, ifindex, ifname, prog_fd, mode, *, expected_fd=None):
    """Attach (or atomically replace, when expected_fd is given) in `mode`; raise on refusal."""
    flags = XDP_MODE_FLAGS[mode]
    attrs = [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs[1] = ("IFLA_XDP_FLAGS", flags | XDP_FLAGS_REPLACE)
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    else:
        attrs[1] = ("IFLA_XDP_FLAGS", flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
    try:
        ipr.link("set", index=ifindex, xdp={"attrs": attrs})
    except NetlinkError as exc:
        text = _kernel_text(exc)
        cls = Unsupported if exc.code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE) else XdpbrError
        raise cls(
            f"cannot attach {mode} XDP to {ifname}" + (f": {text}" if text else ""), errno=exc.code
        ) from None


def detach_xdp(ipr, ifindex, mode):
    flags = XDP_MODE_FLAGS[mode]
    try:
        ipr.link("set", index=ifindex, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flags)]})
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise XdpbrError(f"cannot detach XDP from ifindex {ifindex}", errno=exc.code) from None


def add_ingress(ipr, ifindex):
    """An `ingress` qdisc (not clsact: libvirt deletes an `ingress` qdisc before adding its own,
    and cannot delete a clsact)."""
    ipr.tc("add", "ingress", index=ifindex)


def del_ingress(ipr, ifindex):
    _del_qdisc(ipr, ifindex, "ingress")


def add_clsact(ipr, ifindex):
    """A clsact qdisc (the rig's own programs; xdpbr's TC program takes none, see tcx.py)."""
    ipr.tc("add", "clsact", index=ifindex)


def del_clsact(ipr, ifindex):
    _del_qdisc(ipr, ifindex, "clsact")


def _del_qdisc(ipr, ifindex, kind):
    """Remove the port's qdisc of `kind`; one already gone (or the port) is no error."""
    try:
        ipr.tc("del", kind, index=ifindex)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def attach_tc(ipr, ifindex, ifname, prog_fd, *, replace=False):
    try:
        ipr.tc(
            "replace-filter" if replace else "add-filter",
            "bpf",
            ifindex,
            1,
            fd=prog_fd,
            name=TC_FILTER_NAME,
            parent=TC_INGRESS_PARENT,
            prio=TC_FILTER_PRIO,
            protocol=ETH_P_ALL,
            classid=1,
            direct_action=True,
        )
    except NetlinkError as exc:
        raise XdpbrError(
            f"cannot attach the TC program to {ifname}: {_kernel_text(exc)}", errno=exc.code
        ) from None


def detach_tc(ipr, ifindex):
    try:
        ipr.tc(
            "del-filter", "bpf", ifindex, 1, parent=TC_INGRESS_PARENT, prio=TC_FILTER_PRIO, protocol=ETH_P_ALL
        )
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise XdpbrError(f"cannot remove the TC filter from ifindex {ifindex}", errno=exc.code) from None


def asked(what, call):
    """call() against RTNL (pyroute2); a refusal is one line saying what could not be done."""
    try:
        return call()
    except NetlinkError as exc:
        raise XdpbrError(f"cannot {what}", errno=exc.code) from None
