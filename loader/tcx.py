"""TCX (Linux 6.6+): BPF programs on a device's tc ingress or egress as links, with no qdisc.

A TCX link takes no qdisc slot: `tc qdisc add dev PORT ingress` or `clsact` by another tool
(libvirt's `<bandwidth>`, the CNI bandwidth plugin) still succeeds beside it, which a clsact
qdisc of xdpbr's own would refuse ("Exclusivity flag on"). Links are ordered: xdpbr's goes
after every other program there (BPF_F_AFTER), and a program returning TCX_NEXT
(TC_ACT_UNSPEC) hands the frame on to the next program, then to the qdisc's filters.

Each function is one bpf(2) operation (docs/kernel-notes.md, "tc on the ports").
"""

import ctypes
import errno
import os

from . import bpfsys
from .errors import Unsupported, XdpbrError
from .netns import entered

BPF_PROG_QUERY = 16
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
BPF_F_REPLACE = 1 << 2
BPF_F_AFTER = 1 << 4
ATTACH_TYPES = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}


class _LinkCreateTcx(ctypes.Structure):
    """The tcx member of union bpf_attr's link_create (linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
    ]


class _LinkUpdate(ctypes.Structure):
    _fields_ = [
        ("link_fd", ctypes.c_uint32),
        ("new_prog_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    ]


class _LinkDetach(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class _Query(ctypes.Structure):
    """union bpf_attr's query (linux/bpf.h), with the mprog fields of 6.6."""

    _fields_ = [
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
    ]


def attach(prog_fd, ifindex, ifname, netns=None, direction="ingress"):
    """A TCX link holding `prog_fd` on `ifindex` of namespace `netns` (the kernel reads the
    ifindex in the caller's namespace), after every program already there. Returns the link fd
    (pin it to outlive the caller). Unsupported where the kernel has no TCX."""
    attr = _LinkCreateTcx(
        prog_fd=prog_fd, target_ifindex=ifindex, attach_type=ATTACH_TYPES[direction], flags=BPF_F_AFTER
    )
    with entered(netns):
        fd = bpfsys.syscall(bpfsys.BPF_LINK_CREATE, attr)
    if fd >= 0:
        return fd
    if -fd in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524):
        raise Unsupported(f"no TCX on {ifname} (kernel before 6.6, or without NET_XGRESS)", errno=-fd)
    raise XdpbrError(f"cannot attach the TC program to {ifname} (TCX)", errno=-fd)


def update(link_fd, prog_fd, ifname):
    """Swap the link's program atomically (an upgrade): no frame sees neither."""
    ret = bpfsys.syscall(BPF_LINK_UPDATE, _LinkUpdate(link_fd=link_fd, new_prog_fd=prog_fd))
    if ret < 0:
        raise XdpbrError(f"cannot replace the TC program on {ifname} (TCX)", errno=-ret)


def detach(link_fd):
    """Take the link's program off its device now, whoever else holds the link (a pin)."""
    ret = bpfsys.syscall(BPF_LINK_DETACH, _LinkDetach(link_fd=link_fd))
    if ret < 0 and -ret not in (errno.ENOLINK, errno.ENOENT, errno.EINVAL):
        raise XdpbrError("cannot detach a TCX link", errno=-ret)


def program_ids(ifindex, direction="ingress"):
    """Ids of the programs on `ifindex`'s TCX `direction`, in run order ([] without TCX); the
    ifindex is the caller's namespace's (see programs())."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _Query(
        target_ifindex=ifindex, attach_type=ATTACH_TYPES[direction], prog_ids=ctypes.addressof(ids), count=64
    )
    ret = bpfsys.syscall(BPF_PROG_QUERY, attr)
    if ret < 0:
        if -ret in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP):
            return []
        raise XdpbrError(f"cannot list the TCX programs of ifindex {ifindex}", errno=-ret)
    return list(ids[: attr.count])


TC_PROG_NAME = "xdpbr_tc"  # bpf/fastpath.c's xdpbr_tc, as the kernel names it


def programs(netns, ifindexes):
    """{ifindex: (ingress ids, egress ids)} of devices of namespace `netns`, entered once."""
    with entered(netns):
        return {i: (program_ids(i, "ingress"), program_ids(i, "egress")) for i in ifindexes}


def foreign(ids):
    """Those of the program `ids` that are not xdpbr's TC program (any instance, any version)."""
    out = []
    for prog_id in ids:
        try:
            fd = bpfsys.prog_fd_by_id(prog_id)
        except XdpbrError:
            continue  # gone meanwhile
        try:
            if bpfsys.prog_info(fd).name.decode() != TC_PROG_NAME:
                out.append(prog_id)
        finally:
            os.close(fd)
    return out


def link_program_id(path):
    """The id of the program a pinned TCX link holds, or None when the pin is gone."""
    if not os.path.exists(path):
        return None
    fd = bpfsys.obj_get(path)
    try:
        return bpfsys.link_info(fd).prog_id
    finally:
        os.close(fd)
