"""Rulesets in the shapes real hypervisor hosts load, for tests/test_nfpolicy.py.

Each shape is the input its tool would load (iptables-legacy-restore, ip6tables, arptables,
ebtables-nft or nft commands). `python -m tests.nf_fixtures` (root) loads each one in a throwaway
namespace `xdpbr-nf-<hex>` and records what the kernel hands back (the legacy tables' raw
getsockopt answers, `nft -j` and `nft -a` output) in tests/fixtures/nf/<name>.json, so the unit
tests parse real kernel data without root.
"""

import base64
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent / "fixtures" / "nf"

# OpenStack Neutron's iptables firewall driver (neutron/agent/linux/iptables_firewall.py, as
# `iptables-save` shows it on a linuxbridge compute node): one tap with security groups (tap1),
# one with port security off (tap2); eth1 is the uplink. Every per-VM chain is reached only
# through per-tap physdev jumps; conntrack zones are set per tap in raw PREROUTING.
_SG = '-m comment --comment "Direct traffic from the VM interface to the security group chain."'
_SGC = "neutron-linuxbri-sg-chain"
_ZONE = '-m comment --comment "Set zone for port"'
OPENSTACK = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:neutron-linuxbri-PREROUTING - [0:0]
-A PREROUTING -j neutron-linuxbri-PREROUTING
-A neutron-linuxbri-PREROUTING -m physdev --physdev-in tap1 {_ZONE} -j CT --zone 4097
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:neutron-filter-top - [0:0]
:neutron-linuxbri-FORWARD - [0:0]
:neutron-linuxbri-INPUT - [0:0]
:neutron-linuxbri-i1 - [0:0]
:neutron-linuxbri-local - [0:0]
:neutron-linuxbri-o1 - [0:0]
:neutron-linuxbri-s1 - [0:0]
:neutron-linuxbri-sg-chain - [0:0]
:neutron-linuxbri-sg-fallback - [0:0]
-A INPUT -j neutron-linuxbri-INPUT
-A FORWARD -j neutron-filter-top
-A FORWARD -j neutron-linuxbri-FORWARD
-A neutron-filter-top -j neutron-linuxbri-local
-A neutron-linuxbri-FORWARD -m physdev --physdev-out tap1 --physdev-is-bridged {_SG} -j {_SGC}
-A neutron-linuxbri-FORWARD -m physdev --physdev-in tap1 --physdev-is-bridged {_SG} -j {_SGC}
-A neutron-linuxbri-INPUT -m physdev --physdev-in tap1 --physdev-is-bridged -j neutron-linuxbri-o1
-A neutron-linuxbri-i1 -m state --state RELATED,ESTABLISHED -j RETURN
-A neutron-linuxbri-i1 -p tcp -m tcp --dport 22 -j RETURN
-A neutron-linuxbri-i1 -m state --state INVALID -j DROP
-A neutron-linuxbri-i1 -j neutron-linuxbri-sg-fallback
-A neutron-linuxbri-o1 -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN
-A neutron-linuxbri-o1 -j neutron-linuxbri-s1
-A neutron-linuxbri-o1 -p udp -m udp --sport 67 --dport 68 -j DROP
-A neutron-linuxbri-o1 -m state --state RELATED,ESTABLISHED -j RETURN
-A neutron-linuxbri-o1 -j RETURN
-A neutron-linuxbri-s1 -s 10.0.0.5/32 -m mac --mac-source FA:16:3E:00:00:01 -j RETURN
-A neutron-linuxbri-s1 -j DROP
-A neutron-linuxbri-sg-chain -m physdev --physdev-out tap1 --physdev-is-bridged -j neutron-linuxbri-i1
-A neutron-linuxbri-sg-chain -m physdev --physdev-in tap1 --physdev-is-bridged -j neutron-linuxbri-o1
-A neutron-linuxbri-sg-chain -j ACCEPT
-A neutron-linuxbri-sg-fallback -j DROP
COMMIT
"""

# Docker 20-24 with its legacy iptables backend (moby/libnetwork `iptables-save`): FORWARD
# policy DROP, its DOCKER chains, one published port. Bridge docker0.
DOCKER = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""

# libvirt nwfilter `clean-traffic` on VM port vnet0 (libvirt's nwfilter_ebiptables_driver.c,
# as `ebtables -t nat -L` shows it; Debian 12's ebtables is ebtables-nft, so these land in the
# nftables bridge family). vnet1 is a VM without a filter.
LIBVIRT = [
    "-t nat -N libvirt-I-vnet0",
    "-t nat -N libvirt-O-vnet0",
    "-t nat -N I-vnet0-ipv4-ip",
    "-t nat -N I-vnet0-arp-mac",
    "-t nat -A PREROUTING -i vnet0 -j libvirt-I-vnet0",
    "-t nat -A POSTROUTING -o vnet0 -j libvirt-O-vnet0",
    "-t nat -A libvirt-I-vnet0 -s ! 52:54:00:12:34:56 -j DROP",
    "-t nat -A libvirt-I-vnet0 -p IPv4 -j I-vnet0-ipv4-ip",
    "-t nat -A libvirt-I-vnet0 -p ARP -j I-vnet0-arp-mac",
    "-t nat -A libvirt-I-vnet0 -p 0x835 -j ACCEPT",
    "-t nat -A libvirt-I-vnet0 -j DROP",
    "-t nat -A I-vnet0-ipv4-ip -p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN",
    "-t nat -A I-vnet0-ipv4-ip -p IPv4 --ip-src 192.168.122.10 -j RETURN",
    "-t nat -A I-vnet0-ipv4-ip -j DROP",
    "-t nat -A I-vnet0-arp-mac -p ARP --arp-mac-src 52:54:00:12:34:56 -j RETURN",
    "-t nat -A I-vnet0-arp-mac -j DROP",
    "-t nat -A libvirt-O-vnet0 -p IPv4 -j ACCEPT",
    "-t nat -A libvirt-O-vnet0 -p ARP -j ACCEPT",
    "-t nat -A libvirt-O-vnet0 -j DROP",
]

# libvirt's default NAT network (`virsh net-start default`, libvirt's iptables backend,
# src/network/network_iptables.c: every rule is --insert-ed, so each chain reads in reverse
# order of the calls): its private chains in filter, nat and mangle. Bridge virbr0.
LIBVIRT_NAT = """*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LIBVIRT_PRT - [0:0]
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -o virbr0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LIBVIRT_PRT - [0:0]
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -s 192.168.122.0/24 -d 224.0.0.0/24 -j RETURN
-A LIBVIRT_PRT -s 192.168.122.0/24 -d 255.255.255.255/32 -j RETURN
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p udp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:LIBVIRT_FWI - [0:0]
:LIBVIRT_FWO - [0:0]
:LIBVIRT_FWX - [0:0]
:LIBVIRT_INP - [0:0]
:LIBVIRT_OUT - [0:0]
-A INPUT -j LIBVIRT_INP
-A FORWARD -j LIBVIRT_FWX
-A FORWARD -j LIBVIRT_FWI
-A FORWARD -j LIBVIRT_FWO
-A OUTPUT -j LIBVIRT_OUT
-A LIBVIRT_FWI -d 192.168.122.0/24 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWO -s 192.168.122.0/24 -i virbr0 -j ACCEPT
-A LIBVIRT_FWO -i virbr0 -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 67 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 67 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 68 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 68 -j ACCEPT
COMMIT
"""

# The raw-table advice for bridged traffic ("do not track what is only bridged"): NOTRACK for
# everything br_netfilter hands to iptables from bridge br0, in both spellings.
NOTRACK = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -i br0 -j CT --notrack
-A PREROUTING -i br0 -j NOTRACK
COMMIT
"""

SHAPES = {
    "openstack": [("iptables-legacy-restore", OPENSTACK)],
    "libvirt_nat": [("iptables-legacy-restore", LIBVIRT_NAT)],
    "notrack": [("iptables-legacy-restore", NOTRACK)],
    "openstack_nft": [("iptables-nft-restore", OPENSTACK)],
    "docker": [("iptables-legacy-restore", DOCKER)],
    "libvirt": [("ebtables-nft " + cmd, None) for cmd in LIBVIRT],
}


def add_wildcard_chain(ns, table, chain, prefix, hook="ingress", policy="accept"):
    """A netdev table `table` with base chain `chain` bound to every device named `prefix*`,
    written over netlink (NFTA_DEVICE_PREFIX, Linux 6.16 and later): nft 1.0.6 cannot write it.
    Raises OSError with the kernel's refusal."""
    import socket
    import struct

    from xdpbr.loader import rtnl
    from xdpbr.loader.netns import entered

    def nla(kind, payload):
        return rtnl.nla(kind, payload)

    def msg(kind, flags, seq, family, body, res_id=0):
        payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
        return rtnl.HEADER.pack(rtnl.HEADER.size + len(payload), kind, flags, seq, 0) + payload

    nested, create, netdev, subsys = 0x8000, 0x400, 5, 10  # NLA_F_NESTED, NLM_F_CREATE, NFPROTO_NETDEV
    ack = rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK
    devs = nla(4 | nested, nla(2, prefix.encode() + b"\0"))  # NFTA_HOOK_DEVS { NFTA_DEVICE_PREFIX }
    hooknum = {"ingress": 0, "egress": 1}[hook]
    hook_attr = nla(1, struct.pack(">I", hooknum)) + nla(2, struct.pack(">i", 0)) + devs
    body = (
        nla(1, table.encode() + b"\0")  # NFTA_CHAIN_TABLE
        + nla(3, chain.encode() + b"\0")  # NFTA_CHAIN_NAME
        + nla(4 | nested, hook_attr)  # NFTA_CHAIN_HOOK
        + nla(5, struct.pack(">I", {"drop": 0, "accept": 1}[policy]))  # NFTA_CHAIN_POLICY
        + nla(7, b"filter\0")  # NFTA_CHAIN_TYPE
    )
    batch = (
        msg(0x10, rtnl.NLM_F_REQUEST, 1, 0, b"", subsys)  # NFNL_MSG_BATCH_BEGIN
        + msg(subsys << 8 | 0, ack | create, 2, netdev, nla(1, table.encode() + b"\0"))  # NEWTABLE
        + msg(subsys << 8 | 3, ack | create, 3, netdev, body)  # NEWCHAIN
        + msg(0x11, rtnl.NLM_F_REQUEST, 4, 0, b"", subsys)  # NFNL_MSG_BATCH_END
    )
    with entered(ns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, rtnl.NETLINK_NETFILTER)
    with sock:
        sock.bind((0, 0))
        sock.send(batch)
        sock.settimeout(2)
        acked = set()
        while acked != {2, 3}:
            buf = sock.recv(65536)
            pos = 0
            while pos + rtnl.HEADER.size <= len(buf):
                length, kind, _flags, seq, _pid = rtnl.HEADER.unpack_from(buf, pos)
                if kind == rtnl.NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", buf, pos + rtnl.HEADER.size)
                    if code:
                        raise OSError(-code, f"the kernel refused a netdev chain on {prefix}*")
                    acked.add(seq)
                pos += (length + 3) & ~3


def load(name):
    """(legacy tables as loader.xtables.Table, nftables Ruleset) recorded for shape `name`."""
    from xdpbr.loader import nftables, xtables

    data = json.loads((HERE / f"{name}.json").read_text())
    tables = [
        xtables.parse(
            t["family"], t["name"], t["valid"], t["hook_entry"], t["underflow"], base64.b64decode(t["blob"])
        )  # fmt: skip
        for t in data["legacy"]
    ]
    texts, devices = nftables.parse_text(data["nft_text"])
    ruleset = nftables.Ruleset(tuple(i for i in data["nft_json"] if "metainfo" not in i), texts, devices, "")
    return tables, ruleset


def record(name, ns):
    """Load shape `name` in namespace `ns` and write its fixture."""
    from xdpbr.loader import xtables
    from xdpbr.loader.netns import entered

    for argv, stdin in SHAPES[name]:
        subprocess.run(["ip", "netns", "exec", ns, *argv.split()], input=stdin, text=True, check=True)
    legacy = []
    with entered(ns):
        for family in ("ip", "ip6", "arp"):
            for t in xtables.table_names(family):
                valid, hook_entry, underflow, blob = xtables.read_raw(family, t)
                blob64 = base64.b64encode(blob).decode()
                legacy.append({"family": family, "name": t, "valid": valid, "hook_entry": list(hook_entry),
                               "underflow": list(underflow), "blob": blob64})  # fmt: skip
    nft = ["ip", "netns", "exec", ns, "nft"]
    nft_json = json.loads(
        subprocess.run([*nft, "-j", "list", "ruleset"], capture_output=True, check=True).stdout
    )
    nft_text = subprocess.run(
        [*nft, "-a", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout
    out = {"legacy": legacy, "nft_json": nft_json["nftables"], "nft_text": nft_text}
    (HERE / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")


def main():
    HERE.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or SHAPES:
        ns = f"xdpbr-nf-{os.urandom(4).hex()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            record(name, ns)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=True)


if __name__ == "__main__":
    main()
