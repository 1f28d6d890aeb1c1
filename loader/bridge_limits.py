"""The bridge's own limit on learned FDB entries (`fdb_max_learned`, Linux >= 6.8).

Neither pyroute2 0.9.7 nor Debian 12's iproute2 know IFLA_BR_FDB_MAX_LEARNED, and there is no
sysfs file for it, so this sends the one RTM_NEWLINK by hand:
IFLA_LINKINFO { IFLA_INFO_KIND "bridge", IFLA_INFO_DATA { IFLA_BR_FDB_MAX_LEARNED u32 } }.
"""

import socket
import struct

from loader.errors import XdpbrError
from loader.netns import entered

RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA = 18, 1, 2
IFLA_BR_FDB_N_LEARNED, IFLA_BR_FDB_MAX_LEARNED = 48, 49
NLA_F_NESTED = 0x8000


def _nla(kind, payload):
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data):
    """{type: payload} of a run of netlink attributes."""
    out, pos = {}, 0
    while pos + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            break
        out[kind & ~NLA_F_NESTED] = data[pos + 4 : pos + size]
        pos += (size + 3) & ~3
    return out


def _request(netns, msg_type, flags, ifindex, attrs=b""):
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) + attrs
    header = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0)
    with entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with sock:
        sock.send(header + body)
        reply = sock.recv(65536)
    length, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, 16)
        return code, None
    return 0, reply[16 + 16 : length]


def _ifindex(netns, bridge):
    with entered(netns):
        try:
            return socket.if_nametoindex(bridge)
        except OSError:
            raise XdpbrError(f"bridge {bridge} does not exist") from None


def set_fdb_max_learned(bridge, netns, limit):
    """Set the bridge's limit on learned entries (0: no limit)."""
    data = _nla(IFLA_BR_FDB_MAX_LEARNED, struct.pack("=I", limit))
    info = _nla(IFLA_INFO_KIND, b"bridge\0") + _nla(IFLA_INFO_DATA | NLA_F_NESTED, data)
    code, _ = _request(
        netns, RTM_NEWLINK, NLM_F_ACK, _ifindex(netns, bridge), _nla(IFLA_LINKINFO | NLA_F_NESTED, info)
    )
    if code:
        raise XdpbrError(
            f"cannot set fdb_max_learned on {bridge}", errno=-code, fix="it needs Linux 6.8 or later"
        )


def fdb_learned(bridge, netns=None):
    """(entries learned, limit) as the kernel reports them; (None, None) on older kernels."""
    code, payload = _request(netns, RTM_GETLINK, 0, _ifindex(netns, bridge))
    if code:
        raise XdpbrError(f"cannot read bridge {bridge}", errno=-code)
    info = _attrs(_attrs(payload).get(IFLA_LINKINFO, b""))
    data = _attrs(info.get(IFLA_INFO_DATA, b""))

    def u32(kind):
        return struct.unpack("=I", data[kind][:4])[0] if kind in data else None

    return u32(IFLA_BR_FDB_N_LEARNED), u32(IFLA_BR_FDB_MAX_LEARNED)
