"""The MAC parser, and Ethernet/IPv4/UDP headers with correct checksums: what the Python AF_XDP
endpoint needs to answer ARP and ping and to send UDP. Frames of a given size for traffic
sources and tests are built in testbed/frames.py."""

import socket
import struct


def mac(text):
    """The six bytes of "52:54:00:12:34:56"; ValueError unless six hex octets."""
    octets = text.split(":")
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(x, 16) for x in octets)


def csum16(data):
    """One's complement sum of 16-bit big-endian words, folded (not inverted)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


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
    return hdr[:10] + struct.pack("!H", 0xFFFF ^ csum16(hdr)) + hdr[12:]


def l4_with_checksum(proto, src, dst, header, csum_at, payload, csum):
    """TCP/UDP segment; csum: 'full' (complete), 'partial' (pseudo-header sum, as an offload
    leaves it), or 'none' (zero)."""
    body = bytearray(header + payload)
    if csum == "full":
        total = csum16(src + dst + struct.pack("!HH", proto, len(body)) + bytes(body))
        value = (0xFFFF ^ total) or 0xFFFF
    elif csum == "partial":
        value = csum16(src + dst + struct.pack("!HH", proto, len(body)))
    else:
        value = 0
    struct.pack_into("!H", body, csum_at, value)
    return bytes(body)


def udp4(src, dst, payload=b"x" * 18, csum="full", sport=1000, dport=2000):
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    l4 = l4_with_checksum(17, socket.inet_aton(src), socket.inet_aton(dst), header, 6, payload, csum)
    return ipv4(src, dst, 17, l4) + l4
