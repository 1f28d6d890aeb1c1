"""The bridge's own limit on learned FDB entries (`fdb_max_learned`, Linux >= 6.8).

Neither pyroute2 0.9.7 nor Debian 12's iproute2 know IFLA_BR_FDB_MAX_LEARNED, and there is no
sysfs file for it, so this sends the one RTM_NEWLINK by hand:
IFLA_LINKINFO { IFLA_INFO_KIND "bridge", IFLA_INFO_DATA { IFLA_BR_FDB_MAX_LEARNED u32 } }.
"""

import socket
import struct

from . import rtnl
from .errors import XdpbrError
from .netns import entered

RTM_NEWLINK = 16
RTM_GETLINK = 18
IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA = 18, 1, 2
IFLA_BR_FDB_N_LEARNED, IFLA_BR_FDB_MAX_LEARNED = 48, 49


def _request(netns, msg_type, flags, ifindex, attrs=b""):
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) + attrs  # ifinfomsg
    code, payload = rtnl.request(netns, msg_type, flags, body)
    return code, None if payload is None else payload[16:]


def _ifindex(netns, bridge):
    with entered(netns):
        try:
            return socket.if_nametoindex(bridge)
        except OSError:
            raise XdpbrError(f"bridge {bridge} does not exist") from None


def set_fdb_max_learned(bridge, netns, limit):
    """Set the bridge's limit on learned entries (0: no limit)."""
    nla, nested = rtnl.nla, rtnl.NLA_F_NESTED
    data = nla(IFLA_BR_FDB_MAX_LEARNED, struct.pack("=I", limit))
    info = nla(IFLA_INFO_KIND, b"bridge\0") + nla(IFLA_INFO_DATA | nested, data)
    code, _ = _request(
        netns, RTM_NEWLINK, rtnl.NLM_F_ACK, _ifindex(netns, bridge), nla(IFLA_LINKINFO | nested, info)
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
    info = rtnl.attrs(rtnl.attrs(payload).get(IFLA_LINKINFO, b""))
    data = rtnl.attrs(info.get(IFLA_INFO_DATA, b""))
    return rtnl.u32(data, IFLA_BR_FDB_N_LEARNED), rtnl.u32(data, IFLA_BR_FDB_MAX_LEARNED)
