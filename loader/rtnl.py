"""Raw NETLINK_ROUTE: sockets, message framing and attribute walking, written once.

pyroute2 decodes every message in Python (~300 us each, its reader thread holding the GIL), too
slow for a burst of FDB events, and it does not know every attribute xdpbr needs
(IFLA_BR_FDB_MAX_LEARNED). Neighbour events (loader/neigh.py), link events (loader/events.py)
and the bridge's learning limit (loader/bridge_limits.py) are decoded here with a few
struct.unpack calls each.
"""

import socket
import struct

from .errors import XdpbrError
from .netns import entered

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
SO_RCVBUFFORCE = 33
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_NLA = struct.Struct("=HH")


def nla(kind, payload):
    """One attribute, padded to 4 bytes."""
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def attrs(data, start=0, end=None):
    """{type: payload} of a run of attributes (flags masked off the type)."""
    out, pos, end = {}, start, len(data) if end is None else end
    while pos + _NLA.size <= end:
        size, kind = _NLA.unpack_from(data, pos)
        if size < _NLA.size:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[pos + _NLA.size : pos + size])
        pos += (size + 3) & ~3
    return out


def u32(attributes, kind):
    value = attributes.get(kind, b"")
    return struct.unpack_from("=I", value)[0] if len(value) >= 4 else None


def messages(buf):
    """(type, body offset, end offset) of each message in one datagram; an NLMSG_ERROR with a
    code raises, NLMSG_DONE is yielded like any other type."""
    pos = 0
    while pos + HEADER.size <= len(buf):
        length, kind, _, _, _ = HEADER.unpack_from(buf, pos)
        if length < HEADER.size or pos + length > len(buf):
            return
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", buf, pos + HEADER.size)
            if code:
                raise XdpbrError("the kernel refused a netlink request", errno=-code)
        yield kind, pos + HEADER.size, pos + length
        pos += (length + 3) & ~3


# struct ifinfomsg and the link attributes xdpbr reads (<linux/if_link.h>): links.py decodes
# ports, bridge_watch.py bridges
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_EXT_MASK, IFLA_LINK_NETNSID, IFLA_XDP = 18, 29, 37, 43
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_DATA = 1, 2, 5


def string(attributes, kind):
    """A NUL-terminated string attribute ("" when absent)."""
    return attributes.get(kind, b"").split(b"\0", 1)[0].decode(errors="replace")


NETLINK_NETFILTER = 12  # nftables' notifications (NFNLGRP_NFTABLES) come on this family


def open_socket(netns=None, rcvbuf=None, protocol=socket.NETLINK_ROUTE):
    """A bound netlink socket (NETLINK_ROUTE unless told) in `netns`, with a receive buffer of
    `rcvbuf` bytes."""
    with entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        if rcvbuf:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # root may exceed rmem_max
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def subscribe(group, netns=None, rcvbuf=None, protocol=socket.NETLINK_ROUTE):
    """A socket that receives the multicast group's events (RTNLGRP_*, or NFNLGRP_* with
    protocol NETLINK_NETFILTER) of the namespace; `group` may be a tuple of groups."""
    sock = open_socket(netns, rcvbuf, protocol)
    try:
        for one in group if isinstance(group, tuple) else (group,):
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, one)
    except BaseException:
        sock.close()
        raise
    return sock


def dump(netns, msg_type, body, flags=NLM_F_DUMP):
    """Every message of one dump request (or of one plain request's answer with flags=0):
    [(type, datagram, body offset, end offset)], decoded by the caller with struct."""
    out = []
    with open_socket(netns, 1 << 20) as sock:
        sock.send(HEADER.pack(HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0) + body)
        while True:
            buf = sock.recv(1 << 20)
            for kind, start, end in messages(buf):
                if kind == NLMSG_DONE or (kind == NLMSG_ERROR and not flags):
                    return out
                out.append((kind, buf, start, end))
            if not flags:
                return out


def request(netns, msg_type, flags, body):
    """One request, one reply datagram: (error code, payload of the first message)."""
    header = HEADER.pack(HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0)
    with open_socket(netns) as sock:
        sock.send(header + body)
        reply = sock.recv(65536)
    length, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, HEADER.size)
        return code, None
    return 0, reply[HEADER.size : length]
