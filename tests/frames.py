"""Crafted Ethernet frames for datapath tests, with correct, pending or absent checksums."""

import socket
import struct

BROADCAST = "ff:ff:ff:ff:ff:ff"


def mac(text):
    return bytes(int(x, 16) for x in text.split(":"))


def csum16(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fold_pseudo(src, dst, proto, length):
    """The folded pseudo-header sum: what CHECKSUM_PARTIAL leaves in the checksum field."""
    return csum16(src + dst + struct.pack("!HH", proto, length))


def ether(dst, src, ethertype, payload, vlan=None, outer=None):
    """An Ethernet frame; vlan=vid adds an 802.1Q tag, outer=(tpid, vid) one more in front."""
    hdr = mac(dst) + mac(src)
    if outer:
        hdr += struct.pack("!HH", outer[0], outer[1])
    if vlan is not None:
        hdr += struct.pack("!HH", 0x8100, vlan)
    return hdr + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, l4, frag_off=0):
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag_off, 64, proto, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", 0xFFFF ^ csum16(hdr)) + hdr[12:]
    return hdr


def _l4(proto, src, dst, header, csum_at, payload, csum):
    body = bytearray(header + payload)
    if csum == "full":
        total = csum16(src + dst + struct.pack("!HH", proto, len(body)) + bytes(body))
        value = 0xFFFF ^ total or 0xFFFF
    elif csum == "partial":
        value = fold_pseudo(src, dst, proto, len(body))
    else:
        value = 0
    struct.pack_into("!H", body, csum_at, value)
    return bytes(body)


def udp4(src, dst, payload=b"x" * 18, csum="full", sport=1000, dport=2000):
    l4 = _l4(
        17,
        socket.inet_aton(src),
        socket.inet_aton(dst),
        struct.pack("!HHHH", sport, dport, 8 + len(payload), 0),
        6,
        payload,
        csum,
    )
    return ipv4(src, dst, 17, l4) + l4


def tcp4(src, dst, payload=b"y" * 20, csum="full", sport=1000, dport=2000):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    l4 = _l4(6, socket.inet_aton(src), socket.inet_aton(dst), hdr, 16, payload, csum)
    return ipv4(src, dst, 6, l4) + l4


def ipv6(src, dst, nexthdr, l4):
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(l4),
            nexthdr,
            64,
            socket.inet_pton(socket.AF_INET6, src),
            socket.inet_pton(socket.AF_INET6, dst),
        )
        + l4
    )


def tcp6(src, dst, payload=b"z" * 20, csum="full"):
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    hdr = struct.pack("!HHIIBBHHH", 1000, 2000, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return ipv6(src, dst, 6, _l4(6, s, d, hdr, 16, payload, csum))


def ipv6_with_ext(src, dst):
    """IPv6 with a hop-by-hop header in front of UDP: the L4 header is not where XDP looks."""
    hbh = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    return ipv6(src, dst, 0, hbh + struct.pack("!HHHH", 1, 2, 8, 0))


IPV4 = 0x0800
IPV6 = 0x86DD
