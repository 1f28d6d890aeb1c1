"""FDB (AF_BRIDGE neighbour) events and dumps over a raw NETLINK_ROUTE socket.

pyroute2 decodes every message in Python (~300 us each, and its reader thread holds the GIL
meanwhile): a guest flooding 16,000 new source MACs is 16,000 RTM_NEWNEIGH, and after an
overrun a dump of as many, which took the daemon a minute. Here a message is a few
struct.unpack calls, and the socket's receive buffer is large enough for such a burst.
"""

import socket
import struct

from loader.errors import XdpbrError
from loader.netns import entered

RTNLGRP_NEIGH = 3
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
EVENTS = {RTM_NEWNEIGH: "RTM_NEWNEIGH", RTM_DELNEIGH: "RTM_DELNEIGH"}
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
RCVBUF = 32 << 20  # a burst of ~16,000 events (each ~1 KiB of skb truesize) fits

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_NDMSG = struct.Struct("=BxxxiHBB")  # ndm_family, ndm_ifindex, ndm_state, ndm_flags, ndm_type
_NLA = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NDA_LLADDR, NDA_VLAN, NDA_MASTER = 2, 5, 9


class NeighMessage:
    """One RTM_NEWNEIGH / RTM_DELNEIGH: the ndmsg header and the attributes xdpbr reads."""

    __slots__ = ("event", "family", "ifindex", "state", "flags", "lladdr", "vlan", "master")

    def __init__(self, event, family, ifindex, state, flags, attrs):
        self.event, self.family, self.ifindex, self.state, self.flags = event, family, ifindex, state, flags
        self.lladdr = attrs.get(NDA_LLADDR)
        vlan, master = attrs.get(NDA_VLAN, b""), attrs.get(NDA_MASTER, b"")
        self.vlan = struct.unpack_from("=H", vlan)[0] if len(vlan) >= 2 else None
        self.master = struct.unpack_from("=I", master)[0] if len(master) >= 4 else None


def parse(buf):
    """The neighbour messages in one netlink datagram (others are skipped); raises on an
    NLMSG_ERROR, returns (messages, done) where done marks the end of a dump."""
    out, pos, done = [], 0, False
    while pos + _NLMSGHDR.size <= len(buf):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(buf, pos)
        if length < _NLMSGHDR.size or pos + length > len(buf):
            break
        body = pos + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", buf, body)
            if code:
                raise XdpbrError("netlink neighbour request failed", errno=-code)
        elif kind in EVENTS and length >= _NLMSGHDR.size + _NDMSG.size:
            family, ifindex, state, flags, _ = _NDMSG.unpack_from(buf, body)
            attrs, apos, end = {}, body + _NDMSG.size, pos + length
            while apos + _NLA.size <= end:
                size, atype = _NLA.unpack_from(buf, apos)
                if size < _NLA.size:
                    break
                attrs[atype & NLA_TYPE_MASK] = bytes(buf[apos + _NLA.size : apos + size])
                apos += (size + 3) & ~3
            out.append(NeighMessage(EVENTS[kind], family, ifindex, state, flags, attrs))
        pos += (length + 3) & ~3
    return out, done


def _socket(netns):
    with entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: root may exceed rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((0, 0))
    return sock


def subscribe(netns=None):
    """A socket receiving every neighbour event of the namespace (read it with receive())."""
    sock = _socket(netns)
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_NEIGH)
    return sock


def receive(sock):
    """The neighbour messages of the next datagram (blocks); OSError ENOBUFS on an overrun."""
    return parse(sock.recv(1 << 20))[0]


def dump_bridge(netns=None):
    """Every AF_BRIDGE neighbour entry (the bridges' FDBs) of the namespace."""
    sock = _socket(netns)
    with sock:
        header = _NLMSGHDR.pack(_NLMSGHDR.size + _NDMSG.size, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        sock.send(header + _NDMSG.pack(socket.AF_BRIDGE, 0, 0, 0, 0))
        out = []
        while True:
            msgs, done = parse(sock.recv(1 << 20))
            out.extend(msgs)
            if done:
                return out
