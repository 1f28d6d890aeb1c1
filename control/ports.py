"""Read a bridge and its ports from the kernel (pyroute2, RTNL)."""

from control.model import BridgeInfo, PortInfo
from loader.errors import NotFound, XdpbrError

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
