"""FDB (AF_BRIDGE neighbour) events and dumps over a raw NETLINK_ROUTE socket.

pyroute2 decodes every message in Python (~300 us each, and its reader thread holds the GIL
meanwhile): a guest flooding 16,000 new source MACs is 16,000 RTM_NEWNEIGH, and after an
overrun a dump of as many, which took the daemon a minute. Here a message is a few
struct.unpack calls, and the socket's receive buffer is large enough for such a burst.
"""

import socket
import struct

from . import rtnl

RTNLGRP_NEIGH = 3
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
EVENTS = {RTM_NEWNEIGH: "RTM_NEWNEIGH", RTM_DELNEIGH: "RTM_DELNEIGH"}
RCVBUF = 32 << 20  # a burst of ~16,000 events (each ~1 KiB of skb truesize) fits

_NDMSG = struct.Struct("=BxxxiHBB")  # ndm_family, ndm_ifindex, ndm_state, ndm_flags, ndm_type
NDA_LLADDR, NDA_VLAN, NDA_MASTER = 2, 5, 9


class NeighMessage:
    """One RTM_NEWNEIGH / RTM_DELNEIGH: the ndmsg header and the attributes xdpbr reads."""

    __slots__ = ("event", "family", "ifindex", "state", "flags", "lladdr", "vlan", "master")

    def __init__(self, event, family, ifindex, state, flags, attrs):
        self.event, self.family, self.ifindex, self.state, self.flags = event, family, ifindex, state, flags
        self.lladdr = attrs.get(NDA_LLADDR)
        vlan = attrs.get(NDA_VLAN, b"")
        self.vlan = struct.unpack_from("=H", vlan)[0] if len(vlan) >= 2 else None
        self.master = rtnl.u32(attrs, NDA_MASTER)


def parse(buf):
    """The neighbour messages in one netlink datagram (others are skipped); raises on an
    NLMSG_ERROR, returns (messages, done) where done marks the end of a dump."""
    out, done = [], False
    for kind, body, end in rtnl.messages(buf):
        if kind == rtnl.NLMSG_DONE:
            done = True
        elif kind in EVENTS and end - body >= _NDMSG.size:
            family, ifindex, state, flags, _ = _NDMSG.unpack_from(buf, body)
            attrs = rtnl.attrs(buf, body + _NDMSG.size, end)
            out.append(NeighMessage(EVENTS[kind], family, ifindex, state, flags, attrs))
    return out, done


def subscribe(netns=None):
    """A socket receiving every neighbour event of the namespace (read it with receive())."""
    return rtnl.subscribe(RTNLGRP_NEIGH, netns, RCVBUF)


def receive(sock):
    """The neighbour messages of the next datagram (blocks); OSError ENOBUFS on an overrun."""
    return parse(sock.recv(1 << 20))[0]


def dump_bridge(netns=None):
    """Every AF_BRIDGE neighbour entry (the bridges' FDBs) of the namespace."""
    with rtnl.open_socket(netns, RCVBUF) as sock:
        header = rtnl.HEADER.pack(
            rtnl.HEADER.size + _NDMSG.size, RTM_GETNEIGH, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, 1, 0
        )
        sock.send(header + _NDMSG.pack(socket.AF_BRIDGE, 0, 0, 0, 0))
        out = []
        while True:
            msgs, done = parse(sock.recv(1 << 20))
            out.extend(msgs)
            if done:
                return out
