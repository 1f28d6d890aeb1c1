"""Crafted Ethernet frames for datapath tests, with correct, pending or absent checksums."""

import socket
import struct

from xdpbr.loader.packets import csum16, ether, ipv4, l4_with_checksum, mac, udp4  # noqa: F401 - re-exported

BROADCAST = "ff:ff:ff:ff:ff:ff"


def tcp4(src, dst, payload=b"y" * 20, csum="full", sport=1000, dport=2000):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    l4 = l4_with_checksum(6, socket.inet_aton(src), socket.inet_aton(dst), hdr, 16, payload, csum)
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
    return ipv6(src, dst, 6, l4_with_checksum(6, s, d, hdr, 16, payload, csum))


def ipv6_with_ext(src, dst):
    """IPv6 with a hop-by-hop header in front of UDP: the L4 header is not where XDP looks."""
    hbh = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    return ipv6(src, dst, 0, hbh + struct.pack("!HHHH", 1, 2, 8, 0))


IPV4 = 0x0800
IPV6 = 0x86DD


def tcp4_with_options(src, dst, csum="full"):
    """IPv4 with 4 bytes of options (ihl 6) in front of TCP."""
    plain = tcp4(src, dst, csum=csum)
    header, l4 = bytearray(plain[:20]), plain[20:]
    header[0] = 0x46
    header[2:4] = struct.pack("!H", 24 + len(l4))
    header[10:12] = b"\0\0"
    header += b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    header[10:12] = struct.pack("!H", 0xFFFF ^ csum16(bytes(header)))
    return bytes(header) + l4
