"""Frames for traffic sources and tests, built on loader.packets' headers."""

from xdpbr.loader.packets import ether, udp4


def udp_frame(dst_mac, src_mac, src_ip, dst_ip, size, sport=1000, dport=2000, csum="full"):
    """A UDP/IPv4 frame of exactly `size` bytes (without FCS), checksums complete (or the UDP
    one 'none'/'partial', see loader.packets.l4_with_checksum)."""
    payload = bytes(max(0, size - 14 - 20 - 8))
    return ether(dst_mac, src_mac, 0x0800, udp4(src_ip, dst_ip, payload, csum=csum, sport=sport, dport=dport))
