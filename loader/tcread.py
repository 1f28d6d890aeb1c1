"""A namespace's qdiscs and tc filters read over raw RTNL, and what tc policy they put on a port.

pyroute2 decodes every message in Python (~300 us each) and asks for one device's qdiscs by
dumping them all, so reading each port's qdiscs cost a whole dump per port: a reconcile of 256
ports took 4.6 s. Here a reconcile dumps the namespace's qdiscs once (a few us a message) and a
device's ingress or egress filters only where a qdisc that holds them is there.
"""

import struct

from . import rtnl

RTM_GETQDISC, RTM_GETTFILTER = 38, 46
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_NAME = 7
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
TC_H_ROOT = 0xFFFFFFFF
INGRESS_PARENT, EGRESS_PARENT = 0xFFFFFFF2, 0xFFFFFFF3  # clsact/ingress minor ffff:fff2, fff3
PLAIN_ROOTS = ("pfifo_fast", "pfifo", "mq")  # with handle 0:, the kernel's defaults
XDPBR_FILTER = ("bpf", 0xC0DE, "xdpbr")  # xdpbr's cls_bpf filter: kind, priority, name


def _kind(attrs):
    return attrs.get(TCA_KIND, b"").rstrip(b"\0").decode()


def qdiscs(netns):
    """{ifindex: [(kind, handle, parent)]} of every qdisc in the namespace, one dump."""
    out = {}
    for _, buf, start, end in rtnl.dump(netns, RTM_GETQDISC, _TCMSG.pack(0, 0, 0, 0, 0)):
        _, ifindex, handle, parent, _ = _TCMSG.unpack_from(buf, start)
        kind = _kind(rtnl.attrs(buf, start + _TCMSG.size, end))
        out.setdefault(ifindex, []).append((kind, handle, parent))
    return out


def filters(netns, ifindex, parent):
    """[(kind, priority, bpf name or None)] of the filters at `parent` of one device."""
    out = []
    try:
        msgs = rtnl.dump(netns, RTM_GETTFILTER, _TCMSG.pack(0, ifindex, 0, parent, 0))
    except Exception:  # noqa: BLE001 - a device gone meanwhile, no qdisc there: no filters
        return out
    for _, buf, start, end in msgs:
        info = _TCMSG.unpack_from(buf, start)[4]
        attrs = rtnl.attrs(buf, start + _TCMSG.size, end)
        kind = _kind(attrs)
        if not kind:
            continue
        name = None
        if kind == "bpf" and TCA_OPTIONS in attrs:
            raw = rtnl.attrs(attrs[TCA_OPTIONS]).get(TCA_BPF_NAME)
            name = raw.rstrip(b"\0").decode(errors="replace") if raw else None
        out.append((kind, info >> 16, name))
    return list(dict.fromkeys(out))


def _handle(value):
    return f"{value >> 16:x}:" + (f"{value & 0xFFFF:x}" if value & 0xFFFF else "")


def policy(device_qdiscs, filters_at, tcx_ids, *, own_qdisc=None):
    """(egress, ingress): what on one port shapes or polices its frames, each a one-line
    description (None: plain).

    Egress is plain when the root qdisc is noqueue (whatever handle the kernel gave it: libvirt
    writes `root handle 0: noqueue` and one is allocated), or has handle 0: and is pfifo_fast
    or pfifo, or mq whose children have handle 0:, and no egress filter or TCX egress program
    is there: then a redirect into the port skips nothing. Ingress is plain when no tc filter,
    `ingress`/`clsact` qdisc or TCX ingress program but xdpbr's own is there.
    device_qdiscs: [(kind, handle, parent)] of the port; filters_at(parent): its filters there;
    tcx_ids(direction): ids of the TCX programs there that are not xdpbr's; own_qdisc: the kind
    of the qdisc xdpbr created on the port ("clsact", "ingress") or None."""
    egress = ingress = None
    mq_root = False
    for kind, handle, parent in device_qdiscs:
        if kind in ("ingress", "clsact"):
            if kind != own_qdisc:
                ingress = ingress or f"qdisc {kind} {_handle(handle)}"
        elif parent == TC_H_ROOT:
            if kind != "noqueue" and (handle != 0 or kind not in PLAIN_ROOTS):
                egress = egress or f"qdisc {kind} {_handle(handle)} root"
            mq_root = mq_root or (kind == "mq" and handle == 0)
    for kind, handle, parent in device_qdiscs:
        if kind not in ("ingress", "clsact") and parent != TC_H_ROOT and (handle != 0 or not mq_root):
            egress = egress or f"qdisc {kind} {_handle(handle)} parent {_handle(parent)}"
    kinds = {kind for kind, _, _ in device_qdiscs}
    if "clsact" in kinds:
        found = [f for f in filters_at(EGRESS_PARENT) if f != XDPBR_FILTER]
        egress = egress or (f"filter {found[0][0]} pref {found[0][1]} on egress" if found else None)
    if kinds & {"clsact", "ingress"}:
        found = [f for f in filters_at(INGRESS_PARENT) if f != XDPBR_FILTER]
        ingress = (f"filter {found[0][0]} pref {found[0][1]} on ingress" if found else None) or ingress
    theirs = tcx_ids("egress")
    egress = egress or (f"TCX egress program id {theirs[0]}" if theirs else None)
    theirs = tcx_ids("ingress")
    ingress = ingress or (f"TCX ingress program id {theirs[0]}" if theirs else None)
    return egress, ingress
