"""A veth port's peer: which namespace it lives in, and its GRO switch.

An XDP redirect into a veth is dropped silently unless the peer has NAPI: GRO on or an XDP
program (docs/kernel-notes.md, "Redirects into a veth"). The peer is usually in a container's
namespace, known to the bridge's namespace only by an nsid, so candidates (/run/netns/*,
/proc/*/ns/net) are asked for theirs.
"""

import glob
import os
import socket

from . import ethtool
from .errors import XdpbrError
from .netns import entered_path, netns_path


def peer_namespace_path(ipr, peer_netnsid, bridge_netns):
    """A path to the peer's namespace file, or None if it cannot be found."""
    if peer_netnsid is None:
        return netns_path(bridge_netns) if bridge_netns else "/proc/self/ns/net"
    seen = set()
    candidates = sorted(glob.glob("/run/netns/*")) + glob.glob("/proc/[0-9]*/ns/net")
    for path in candidates:
        try:
            inode = os.stat(path).st_ino
            if inode in seen:
                continue
            seen.add(inode)
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if ipr.get_netnsid(fd=fd).get("nsid") == peer_netnsid:
                return path
        except Exception:  # noqa: BLE001 - a namespace that vanished meanwhile
            continue
        finally:
            os.close(fd)
    return None


def _ifname_in(ns_path, ifindex):
    try:
        with entered_path(ns_path):
            return socket.if_indextoname(ifindex)
    except (OSError, XdpbrError):
        return None  # the interface or its namespace went away meanwhile


def gro_enabled(ns_path, ifname):
    """True or False, or None when it cannot be read (the peer went away meanwhile)."""
    try:
        with entered_path(ns_path):
            return ethtool.enabled(ifname, ethtool.GRO)
    except XdpbrError:
        return None


def set_gro(ns_path, ifname, on):
    try:
        with entered_path(ns_path):
            ethtool.switch(ifname, ethtool.GRO, on)
    except XdpbrError:
        return False
    return True


class VethPeer:
    """The peer of one veth port: where it is and whether it can take XDP redirects."""

    def __init__(self, ns_path, ifname):
        self.ns_path, self.ifname = ns_path, ifname

    @classmethod
    def find(cls, ipr, port, bridge_netns):
        path = peer_namespace_path(ipr, port.peer_netnsid, bridge_netns)
        if not path or not port.peer_ifindex:
            return None
        name = _ifname_in(path, port.peer_ifindex)
        return cls(path, name) if name else None

    def ensure_napi(self):
        """Switch GRO on if it is off. Returns (ok, switched_on_by_us)."""
        state = gro_enabled(self.ns_path, self.ifname)
        if state:
            return True, False
        if state is None:
            return False, False
        return set_gro(self.ns_path, self.ifname, True), True

    def restore(self):
        set_gro(self.ns_path, self.ifname, False)
