"""Links, bridge ports and their FDB through RTNL: the one place above which nobody holds a
netlink socket. `Rtnl` is a network namespace's route-netlink handle (pyroute2 underneath,
opened on first use); its methods are typed kernel operations without policy, and the bridge
and its ports come back as the dataclasses below.
"""

import contextlib
import socket
from dataclasses import dataclass, field

from . import attach as at
from . import tcx
from .errors import NotFound, XdpbrError
from .peer import VethPeer

AF_BRIDGE = socket.AF_BRIDGE
NUD_NOARP, NUD_REACHABLE = 0x40, 0x02
NTF_USE, NTF_MASTER = 0x01, 0x04
BR_STATE_FORWARDING = 3
OPTIONS = {  # a bridge's own br_netfilter switches
    "nf_call_iptables": "IFLA_BR_NF_CALL_IPTABLES",
    "nf_call_ip6tables": "IFLA_BR_NF_CALL_IP6TABLES",
    "nf_call_arptables": "IFLA_BR_NF_CALL_ARPTABLES",
}


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

    @property
    def forwarding(self):
        return self.state == BR_STATE_FORWARDING


BRIDGE_VLAN_INFO_PVID = 1 << 1
BRIDGE_VLAN_INFO_UNTAGGED = 1 << 2
RTEXT_FILTER_BRVLAN = 1 << 1
IFF_LOOPBACK = 0x8


def _linkinfo(link):
    return link.get_attr("IFLA_LINKINFO")


def link_kind(link):
    info = _linkinfo(link)
    return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def _device_kind(link):
    """What to call a device in an error: its link kind, else loopback or physical."""
    return link_kind(link) or ("loopback" if link["flags"] & IFF_LOOPBACK else "physical")


def find_bridge(ipr, name, netns=None):
    """BridgeInfo of bridge `name`, or a clear error when it is missing or not a bridge."""
    where = f' in network namespace "{netns}"' if netns else ""
    links = ipr.get_links(ifname=name) if _exists(ipr, name) else []
    if not links:
        raise NotFound(f"bridge {name} does not exist{where}", fix="see `ip link show type bridge`")
    link = links[0]
    if link_kind(link) != "bridge":
        raise XdpbrError(
            f"{name} is not a bridge (it is a {_device_kind(link)} device){where}",
            fix="name the bridge its ports belong to (`ip link show type bridge`)",
        )
    data = _linkinfo(link).get_attr("IFLA_INFO_DATA")
    return BridgeInfo(
        name=name,
        ifindex=link["index"],
        mac=link.get_attr("IFLA_ADDRESS"),
        vlan_filtering=bool(data.get_attr("IFLA_BR_VLAN_FILTERING")) if data else False,
        netns=netns,
    )


def _exists(ipr, name):
    return bool(ipr.link_lookup(ifname=name))


def port_from_link(link):
    """PortInfo of a bridge port link message (RTM_NEWLINK with slave data)."""
    info = _linkinfo(link)
    slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info else None
    unsupported = []
    state = 0
    isolated = hairpin = False
    if slave:
        state = slave.get_attr("IFLA_BRPORT_STATE") or 0
        isolated = bool(slave.get_attr("IFLA_BRPORT_ISOLATED"))
        hairpin = bool(slave.get_attr("IFLA_BRPORT_MODE"))
        for attr, name in (
            ("IFLA_BRPORT_LOCKED", "locked"),
            ("IFLA_BRPORT_MAB", "mab"),
            ("IFLA_BRPORT_NEIGH_SUPPRESS", "neigh_suppress"),
            ("IFLA_BRPORT_PROXYARP", "proxy_arp"),
            ("IFLA_BRPORT_VLAN_TUNNEL", "vlan_tunnel"),
        ):
            if slave.get_attr(attr):
                unsupported.append(name)
    return PortInfo(
        name=link.get_attr("IFLA_IFNAME"),
        ifindex=link["index"],
        kind=link_kind(link),
        mtu=link.get_attr("IFLA_MTU") or 1500,
        state=state,
        isolated=isolated,
        hairpin=hairpin,
        unsupported_flags=tuple(unsupported),
        peer_ifindex=link.get_attr("IFLA_LINK") or 0,
        peer_netnsid=link.get_attr("IFLA_LINK_NETNSID"),
    )


def list_ports(ipr, bridge):
    """PortInfo of every port of the bridge, with its VLANs when vlan_filtering is on."""
    ports = [
        port_from_link(link) for link in ipr.get_links() if link.get_attr("IFLA_MASTER") == bridge.ifindex
    ]
    if bridge.vlan_filtering:
        vlans = port_vlans(ipr)
        for port in ports:
            port.pvid, port.vlans = vlans.get(port.ifindex, (0, {}))
    return sorted(ports, key=lambda p: p.ifindex)


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
            return bool(index) and bool(self._socket.link_lookup(index=index))
        return bool(self._socket.link_lookup(ifname=name))

    def bridge(self, name):
        """BridgeInfo of bridge `name`, or a clear error when it is missing or not a bridge."""
        return at.asked(f"read {name}", lambda: find_bridge(self._socket, name, self.netns))

    def ports(self, bridge):
        """PortInfo of every port of `bridge` (a BridgeInfo), ordered by ifindex."""
        return list_ports(self._socket, bridge)

    def bridge_nf_options(self, name):
        """The bridge's own br_netfilter switches: {"nf_call_iptables": bool, ...} (IFLA_INFO_DATA)."""
        links = self._socket.get_links(ifname=name)
        info = links[0].get_attr("IFLA_LINKINFO") if links else None
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        return {k: bool(data.get_attr(a)) if data else False for k, a in OPTIONS.items()}

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

    def egress_is_plain(self, ifindex):
        return at.egress_is_plain(self._socket, ifindex)

    def tc_policy(self, ifindex, *, own_qdisc=None):
        """(egress, ingress) policy on the port that is not xdpbr's, each a one-line description
        or None (loader/attach.py tc_policy; TCX programs from loader/tcx.py)."""

        def tcx_ids(index, direction):
            return tcx.foreign_program_ids(self.netns, index, direction)

        return at.tc_policy(self._socket, ifindex, own_qdisc=own_qdisc, tcx_ids=tcx_ids)

    def ingress_qdisc(self, ifindex):
        return at.ingress_qdisc(self._socket, ifindex)

    def add_ingress(self, ifindex):
        return at.add_ingress(self._socket, ifindex)

    def del_ingress(self, ifindex):
        return at.del_ingress(self._socket, ifindex)

    def del_clsact(self, ifindex):
        return at.del_clsact(self._socket, ifindex)

    def foreign_ingress_filters(self, ifindex):
        return at.foreign_ingress_filters(self._socket, ifindex)

    def has_xdpbr_filter(self, ifindex):
        return at.has_xdpbr_filter(self._socket, ifindex)

    def attach_tc(self, ifindex, ifname, prog_fd, *, replace=False):
        return at.attach_tc(self._socket, ifindex, ifname, prog_fd, replace=replace)

    def detach_tc(self, ifindex):
        return at.detach_tc(self._socket, ifindex)


@contextlib.contextmanager
def opened(netns=None):
    """An Rtnl for one command, closed afterwards."""
    rtnl = Rtnl(netns)
    try:
        yield rtnl
    finally:
        rtnl.close()
