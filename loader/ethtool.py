"""Two offload switches through the SIOCETHTOOL ioctl, in the calling thread's namespace:
GRO (a veth peer needs NAPI for XDP redirects: docs/kernel-notes.md, "Redirects into a
veth") and transmit checksumming (an AF_XDP endpoint's bridge port). The legacy commands
(struct ethtool_value) do exactly what `ethtool -K IF gro|tx on|off` does: ETHTOOL_STXCSUM
covers the same tx-checksum-* features, and the kernel drops what depends on them (TSO) the
same way. No ethtool binary, no process per port.
"""

import ctypes
import errno
import fcntl
import socket
import struct

from .errors import NotFound, XdpbrError

SIOCETHTOOL = 0x8946
# (get, set) commands of include/uapi/linux/ethtool.h
GRO = (0x2B, 0x2C)  # ETHTOOL_GGRO, ETHTOOL_SGRO
TX_CHECKSUM = (0x16, 0x17)  # ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM
_NAMES = {GRO: "gro", TX_CHECKSUM: "tx"}


def _ioctl(ifname, cmd, data=0):
    """One ethtool_value command on `ifname`; returns the value's data."""
    value = (ctypes.c_uint32 * 2)(cmd, data)  # struct ethtool_value { __u32 cmd; __u32 data; }
    # struct ifreq: the name, then ifr_data (a pointer) in a 24-byte union
    ifreq = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCETHTOOL, ifreq)
    return value[1]


def enabled(ifname, feature):
    """Whether `feature` (GRO, TX_CHECKSUM) is on; None when the device cannot say."""
    try:
        return bool(_ioctl(ifname, feature[0]))
    except OSError:
        return None


def switch(ifname, feature, on):
    """Switch `feature` on or off; a refusal is one line naming the interface."""
    try:
        _ioctl(ifname, feature[1], int(bool(on)))
    except OSError as exc:
        state = "on" if on else "off"
        if exc.errno == errno.ENODEV:
            raise NotFound(f"interface {ifname} does not exist") from None
        raise XdpbrError(f"cannot switch {_NAMES[feature]} {state} on {ifname}", errno=exc.errno) from None
