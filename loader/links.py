"""Links, bridge ports and their FDB through RTNL: the one place above which nobody holds a
netlink socket. `Rtnl` is a network namespace's route-netlink handle (pyroute2 underneath,
opened on first use); its methods are typed kernel operations without policy, and the bridge
and its ports come back as the dataclasses below.
"""

import errno
import socket
import struct
from dataclasses import dataclass, field

from . import attach as at
from . import rtnl, tcread, tcx
from .errors import NotFound, XdpbrError
from .peer import VethPeer

AF_BRIDGE = socket.AF_BRIDGE
NUD_NOARP, NUD_REACHABLE = 0x40, 0x02
NTF_USE, NTF_MASTER = 0x01, 0x04
BR_STATE_FORWARDING = 3


@dataclass
class BridgeInfo:
    name: str
    ifindex: int
    mac: str
    vlan_filtering: bool
    netns: str | None = None


@dataclass
class PortInfo:
    name: str
    ifindex: int
    kind: str  # IFLA_INFO_KIND: veth, tun, ... ("" for physical devices)
    mtu: int
    state: int  # BR_STATE_*
    isolated: bool = False
    hairpin: bool = False
    unsupported_flags: tuple = ()  # bridge port features xdpbr does not model (locked, ...)
    pvid: int = 0
    vlans: dict = field(default_factory=dict)  # vid -> untagged
    peer_ifindex: int = 0  # veth peer
    peer_netnsid: int | None = None  # None: the peer is in the bridge's namespace
    xdp_mode: str | None = None  # the XDP program on the port when it was read: native, generic
    xdp_prog_id: int = 0

    @property
    def forwarding(self):
        return self.state == BR_STATE_FORWARDING


BRIDGE_VLAN_INFO_PVID = 1 << 1
BRIDGE_VLAN_INFO_UNTAGGED = 1 << 2
RTEXT_FILTER_BRVLAN = 1 << 1
IFF_LOOPBACK = 0x8


def _one_link(netns, *, index=0, name=None):
    """(datagram, body offset, end offset) of one link's RTM_NEWLINK, asked by index or name
    (one request: pyroute2's lookups by name dump every link), or None when there is none."""
    body = _IFINFOMSG.pack(0, 0, index, 0, 0)
    if name:
        body += rtnl.nla(IFLA_IFNAME, name.encode() + b"\0")
    try:
        msgs = rtnl.dump(netns, RTM_GETLINK, body, flags=0)
    except XdpbrError as exc:
        if exc.errno in (errno.ENODEV, errno.EINVAL, errno.ERANGE):
            return None
        raise
    return msgs[0][1:] if msgs else None


def _link_attrs(found):
    buf, start, end = found
    attrs = rtnl.attrs(buf, start + _IFINFOMSG.size, end)
    info = rtnl.attrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
    data = rtnl.attrs(info[IFLA_INFO_DATA]) if IFLA_INFO_DATA in info else {}
    return attrs, info, data


def find_bridge(name, netns=None):
    """BridgeInfo of bridge `name`, or a clear error when it is missing or not a bridge."""
    where = f' in network namespace "{netns}"' if netns else ""
    found = _one_link(netns, name=name)
    if found is None:
        raise NotFound(f"bridge {name} does not exist{where}", fix="see `ip link show type bridge`")
    attrs, info, data = _link_attrs(found)
    kind = rtnl.string(info, IFLA_INFO_KIND)
    if kind != "bridge":
        flags = _IFINFOMSG.unpack_from(found[0], found[1])[3]
        kind = kind or ("loopback" if flags & IFF_LOOPBACK else "physical")
        raise XdpbrError(
            f"{name} is not a bridge (it is a {kind} device){where}",
            fix="name the bridge its ports belong to (`ip link show type bridge`)",
        )
    return BridgeInfo(
        name=name,
        ifindex=_IFINFOMSG.unpack_from(found[0], found[1])[2],
        mac=":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
        vlan_filtering=bool(_u8(data, IFLA_BR_VLAN_FILTERING)),
        netns=netns,
    )


RTM_GETLINK = 18
_IFINFOMSG = rtnl.IFINFOMSG
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = (
    rtnl.IFLA_ADDRESS,
    rtnl.IFLA_IFNAME,
    rtnl.IFLA_MTU,
    rtnl.IFLA_LINK,
    rtnl.IFLA_MASTER,
)
IFLA_LINKINFO, IFLA_LINK_NETNSID, IFLA_XDP = rtnl.IFLA_LINKINFO, rtnl.IFLA_LINK_NETNSID, rtnl.IFLA_XDP
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_DATA = (
    rtnl.IFLA_INFO_KIND,
    rtnl.IFLA_INFO_DATA,
    rtnl.IFLA_INFO_SLAVE_DATA,
)
IFLA_BR_VLAN_FILTERING = 7
IFLA_BR_NF_CALL = {"nf_call_iptables": 36, "nf_call_ip6tables": 37, "nf_call_arptables": 38}
IFLA_XDP_ATTACHED, IFLA_XDP_PROG_ID = 2, 4
XDP_ATTACHED = {1: "native", 2: "generic", 3: "offload", 4: "multi"}
IFLA_BRPORT_STATE, IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 1, 4, 33
UNSUPPORTED_BRPORT = {39: "locked", 40: "mab", 32: "neigh_suppress", 10: "proxy_arp", 29: "vlan_tunnel"}


def _u8(attrs, kind):
    value = attrs.get(kind)
    return value[0] if value else 0


def port_from_message(buf, start, end):
    """(master ifindex, PortInfo) of one RTM_NEWLINK, decoded with struct (pyroute2 takes ~300 us
    a message: a dump of a 256-port bridge's links was most of a reconcile)."""
    ifindex = _IFINFOMSG.unpack_from(buf, start)[2]
    attrs = rtnl.attrs(buf, start + _IFINFOMSG.size, end)
    info = rtnl.attrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
    slave = rtnl.attrs(info[IFLA_INFO_SLAVE_DATA]) if IFLA_INFO_SLAVE_DATA in info else {}
    xdp = rtnl.attrs(attrs[IFLA_XDP]) if IFLA_XDP in attrs else {}
    netnsid = attrs.get(IFLA_LINK_NETNSID)
    port = PortInfo(
        name=rtnl.string(attrs, IFLA_IFNAME),
        ifindex=ifindex,
        kind=rtnl.string(info, IFLA_INFO_KIND),
        mtu=rtnl.u32(attrs, IFLA_MTU) or 1500,
        state=_u8(slave, IFLA_BRPORT_STATE),
        isolated=bool(_u8(slave, IFLA_BRPORT_ISOLATED)),
        hairpin=bool(_u8(slave, IFLA_BRPORT_MODE)),
        unsupported_flags=tuple(name for kind, name in UNSUPPORTED_BRPORT.items() if _u8(slave, kind)),
        peer_ifindex=rtnl.u32(attrs, IFLA_LINK) or 0,
        peer_netnsid=struct.unpack_from("=i", netnsid)[0] if netnsid else None,
        xdp_mode=XDP_ATTACHED.get(_u8(xdp, IFLA_XDP_ATTACHED)),
        xdp_prog_id=rtnl.u32(xdp, IFLA_XDP_PROG_ID) or 0,
    )
    return rtnl.u32(attrs, IFLA_MASTER), port


def list_ports(ipr, bridge, netns=None):
    """PortInfo of every port of the bridge (one raw link dump), with its VLANs when
    vlan_filtering is on."""
    msgs = rtnl.dump(netns, RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0))
    ports = [port for master, port in (port_from_message(*m[1:]) for m in msgs) if master == bridge.ifindex]
    if bridge.vlan_filtering:
        vlans = port_vlans(ipr)
        for port in ports:
            port.pvid, port.vlans = vlans.get(port.ifindex, (0, {}))
    return sorted(ports, key=lambda p: p.ifindex)


def read_port(ipr, bridge, netns, ifindex):
    """PortInfo of one link if it is a port of the bridge now, else None (left, or gone)."""
    try:
        msgs = rtnl.dump(netns, RTM_GETLINK, _IFINFOMSG.pack(0, 0, ifindex, 0, 0), flags=0)
    except XdpbrError:
        return None  # ENODEV: gone
    for _, buf, start, end in msgs:
        master, port = port_from_message(buf, start, end)
        if master == bridge.ifindex:
            if bridge.vlan_filtering:
                port.pvid, port.vlans = port_vlans(ipr).get(port.ifindex, (0, {}))
            return port
    return None


def port_vlans(ipr):
    """{ifindex: (pvid, {vid: untagged})} from the AF_BRIDGE link dump."""
    out = {}
    for msg in ipr.get_vlans():
        spec = msg.get_attr("IFLA_AF_SPEC")
        if not spec:
            continue
        pvid, vids = 0, {}
        for name, value in spec["attrs"]:
            if name != "IFLA_BRIDGE_VLAN_INFO":
                continue
            flags, vid = value["flags"], value["vid"]
            vids[vid] = bool(flags & BRIDGE_VLAN_INFO_UNTAGGED)
            if flags & BRIDGE_VLAN_INFO_PVID:
                pvid = vid
        out[msg["index"]] = (pvid, vids)
    return out


class Rtnl:
    """RTNL in one network namespace, for the typed operations xdpbr needs; the socket opens on
    first use (metrics and `show` need none). pyroute2 0.9.7 keeps a little memory for every
    request it answers (~1.6 KB per get_links, measured), which only closing its socket gives
    back: a long-running daemon calls recycle() now and then."""

    def __init__(self, netns=None):
        self.netns = netns
        self._ipr = None

    @property
    def _socket(self):
        if self._ipr is None:
            self._ipr = at.open_netlink(self.netns)
        return self._ipr

    def recycle(self):
        """Close the socket; the next operation opens a fresh one."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    close = recycle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # links and bridge ports
    def link_exists(self, *, index=None, name=None):
        if index is not None:
            return bool(index) and _one_link(self.netns, index=index) is not None
        return _one_link(self.netns, name=name) is not None

    def bridge(self, name):
        """BridgeInfo of bridge `name`, or a clear error when it is missing or not a bridge."""
        return find_bridge(name, self.netns)

    def ports(self, bridge):
        """PortInfo of every port of `bridge` (a BridgeInfo), ordered by ifindex."""
        return list_ports(self._socket if bridge.vlan_filtering else None, bridge, self.netns)

    def port(self, bridge, ifindex):
        """PortInfo of link `ifindex` if it is a port of `bridge` now, else None: one request."""
        return read_port(self._socket if bridge.vlan_filtering else None, bridge, self.netns, ifindex)

    def tc_policies(self, own_qdiscs):
        """{ifindex: (egress, ingress)} for the ports in `own_qdiscs` ({ifindex: kind of the
        qdisc xdpbr created there, or None}): one qdisc dump for all of them."""
        found = tcread.qdiscs(self.netns)
        programs = tcx.programs(self.netns, own_qdiscs)  # (ingress ids, egress ids) per port
        out = {}
        for ifindex, own in own_qdiscs.items():
            ingress, egress = programs[ifindex]
            out[ifindex] = tcread.policy(
                found.get(ifindex, []),
                lambda parent, i=ifindex: tcread.filters(self.netns, i, parent),
                lambda direction, i=ingress, e=egress: tcx.foreign(i if direction == "ingress" else e),
                own_qdisc=own,
            )
        return out

    def bridge_nf_options(self, name):
        """The bridge's own br_netfilter switches: {"nf_call_iptables": bool, ...} (IFLA_INFO_DATA)."""
        found = _one_link(self.netns, name=name)
        data = _link_attrs(found)[2] if found else {}
        return {key: bool(_u8(data, kind)) for key, kind in IFLA_BR_NF_CALL.items()}

    def veth_peer(self, port):
        """The VethPeer of a veth port (its namespace and name), or None where it is out of reach."""
        return VethPeer.find(self._socket, port, self.netns)

    def add_veth(self, name, peer, **options):
        at.asked(
            f"add {name}",
            lambda: self._socket.link(
                "add", ifname=name, kind="veth", peer={"ifname": peer, **options}, **options
            ),
        )

    def set_master(self, index, ifname, bridge):
        """Enslave link `index` to `bridge` (a BridgeInfo) and set it up."""
        at.asked(
            f"add {ifname} to {bridge.name}",
            lambda: self._socket.link("set", index=index, master=bridge.ifindex, state="up"),
        )

    def set_up(self, index, ifname):
        at.asked(f"set {ifname} up", lambda: self._socket.link("set", index=index, state="up"))

    def delete_link(self, index, ifname):
        at.asked(f"delete {ifname}", lambda: self._socket.link("del", index=index))

    # the bridge's FDB
    def fdb_add_static(self, ifindex, mac):
        """`bridge fdb replace MAC dev PORT master static`: the bridge forwards MAC to PORT before
        it has seen a frame from it, and never ages the entry out."""
        at.asked(
            f"add the FDB entry {mac}",
            lambda: self._socket.neigh(
                "replace", family=AF_BRIDGE, ifindex=ifindex, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER
            ),
        )

    def fdb_touch(self, ifindex, mac, vid):
        """NTF_USE: tell the bridge the entry is in use, as a frame through it would (aging)."""
        self._socket.neigh(
            "set",
            family=AF_BRIDGE,
            ifindex=ifindex,
            lladdr=mac,
            state=NUD_REACHABLE,
            flags=NTF_MASTER | NTF_USE,
            **({"vlan": vid} if vid else {}),
        )

    # xdpbr's programs on a link (loader/attach.py)
    def xdp_state(self, ifindex):
        return at.xdp_state(self._socket, ifindex)

    def attach_xdp(self, ifindex, ifname, prog_fd, mode, *, expected_fd=None):
        return at.attach_xdp(self._socket, ifindex, ifname, prog_fd, mode, expected_fd=expected_fd)

    def detach_xdp(self, ifindex, mode):
        return at.detach_xdp(self._socket, ifindex, mode)

    def tc_policy(self, ifindex, *, own_qdisc=None):
        """(egress, ingress) policy on the port that is not xdpbr's, each a one-line description
        or None (loader/tcread.py)."""
        return self.tc_policies({ifindex: own_qdisc})[ifindex]

    def ingress_qdisc(self, ifindex):
        """The kind of the port's ingress-capable qdisc ("clsact", "ingress") or None."""
        kinds = {kind for kind, _, _ in tcread.qdiscs(self.netns).get(ifindex, [])}
        return next((k for k in ("clsact", "ingress") if k in kinds), None)

    def add_ingress(self, ifindex):
        return at.add_ingress(self._socket, ifindex)

    def del_ingress(self, ifindex):
        return at.del_ingress(self._socket, ifindex)

    def del_clsact(self, ifindex):
        return at.del_clsact(self._socket, ifindex)

    def foreign_ingress_filters(self, ifindex):
        """The ingress filters of the port that are not xdpbr's: [(kind, priority, name)]."""
        found = tcread.filters(self.netns, ifindex, tcread.INGRESS_PARENT)
        return [f for f in found if f != tcread.XDPBR_FILTER]

    def has_xdpbr_filter(self, ifindex):
        """Is xdpbr's cls_bpf filter (its name at its priority) on the port's ingress?"""
        return tcread.XDPBR_FILTER in tcread.filters(self.netns, ifindex, tcread.INGRESS_PARENT)

    def attach_tc(self, ifindex, ifname, prog_fd, *, replace=False):
        return at.attach_tc(self._socket, ifindex, ifname, prog_fd, replace=replace)

    def detach_tc(self, ifindex):
        return at.detach_tc(self._socket, ifindex)
