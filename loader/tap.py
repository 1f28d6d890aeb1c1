"""A TAP endpoint opened the way QEMU's TAP backend opens it.

IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte virtio_net_hdr_mrg_rxbuf (TUNSETVNETHDRSZ),
TUNSETOFFLOAD so the kernel may hand us GSO and partially checksummed frames, O_NONBLOCK.
Frames go in with writev([hdr, frame]) (EINTR retried, EAGAIN queued until the fd is writable,
as QEMU's tap_send/tap_writable do) and come out with their header.
"""

import collections
import fcntl
import os
import select
import struct

from .errors import XdpbrError
from .netns import entered

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETSNDBUF = 0x400454D4
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VNET_HDR_LEN = 12  # struct virtio_net_hdr_mrg_rxbuf, as QEMU uses with mergeable rx buffers
_HDR = struct.Struct("<BBHHHHH")  # flags gso_type hdr_len gso_size csum_start csum_offset num_buffers


class VnetHdr:
    """struct virtio_net_hdr_mrg_rxbuf."""

    __slots__ = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")

    def __init__(self, flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
        self.flags, self.gso_type, self.hdr_len = flags, gso_type, hdr_len
        self.gso_size, self.csum_start, self.csum_offset = gso_size, csum_start, csum_offset

    def pack(self):
        return _HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset, 0
        )

    @classmethod
    def unpack(cls, raw):
        return cls(*_HDR.unpack_from(raw)[:6])

    def __repr__(self):
        return (
            f"VnetHdr(flags={self.flags}, gso_type={self.gso_type}, gso_size={self.gso_size}, "
            f"csum_start={self.csum_start}, csum_offset={self.csum_offset})"
        )


def _open_tun(netns, flags=0):
    with entered(netns):
        try:
            return os.open("/dev/net/tun", os.O_RDWR | flags)
        except OSError as exc:
            raise XdpbrError(
                "cannot open /dev/net/tun", errno=exc.errno, fix="modprobe tun, or run as root"
            ) from None


def create_persistent(name, netns=None, *, queues=1, owner=0, group=0):
    """A persistent TAP with vnet headers, as a VMM expects to find it: it lives on after this
    call and QEMU opens it by name (`-netdev tap,ifname=NAME,script=no`) as `owner`/`group`."""
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
    fd = _open_tun(netns)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        # ioctl passes a C int; the kernel reads the argument as a uid_t, so ids of 2^31 and
        # above go through as their 32-bit two's complement
        fcntl.ioctl(fd, TUNSETOWNER, owner - 2**32 if owner >= 2**31 else owner)
        fcntl.ioctl(fd, TUNSETGROUP, group - 2**32 if group >= 2**31 else group)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        raise XdpbrError(f"cannot create TAP {name}", errno=exc.errno) from None
    finally:
        os.close(fd)


class TapEndpoint:
    """The VMM side of a TAP device: an fd that reads and writes frames with vnet headers."""

    def __init__(self, ifname, netns=None, *, offloads=TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN):
        self.ifname = ifname
        self.backlog = collections.deque()  # frames waiting for POLLOUT after EAGAIN
        self.eagain = 0
        self.fd = _open_tun(netns, os.O_NONBLOCK)
        try:
            ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, offloads)
        except OSError as exc:
            os.close(self.fd)
            raise XdpbrError(f"cannot set up TAP {ifname}", errno=exc.errno) from None

    def set_sndbuf(self, nbytes):
        """QEMU's `sndbuf=`: how much the kernel may hold for us before writes say EAGAIN."""
        fcntl.ioctl(self.fd, TUNSETSNDBUF, struct.pack("i", nbytes))

    def fileno(self):
        return self.fd

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _writev(self, hdr_bytes, frame):
        while True:
            try:
                return os.writev(self.fd, [hdr_bytes, frame])
            except InterruptedError:
                continue

    def send(self, frame, hdr=None):
        """Write one frame; on EAGAIN it is queued (and kept in order) until flush()."""
        item = ((hdr or VnetHdr()).pack(), bytes(frame))
        if self.backlog:
            self.backlog.append(item)
            return False
        try:
            self._writev(*item)
            return True
        except BlockingIOError:
            self.eagain += 1
            self.backlog.append(item)
            return False

    def flush(self, timeout=1.0):
        """Write queued frames as the fd becomes writable; True when the backlog is empty."""
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while self.backlog:
            if not poller.poll(int(timeout * 1000)):
                return False
            try:
                self._writev(*self.backlog[0])
                self.backlog.popleft()
            except BlockingIOError:
                self.eagain += 1
        return True

    def recv(self, timeout=0.0, bufsize=65536 + VNET_HDR_LEN):
        """(VnetHdr, frame) or None when nothing arrived within timeout."""
        if timeout and not select.select([self.fd], [], [], timeout)[0]:
            return None
        try:
            raw = os.read(self.fd, bufsize)
        except BlockingIOError:
            return None
        return VnetHdr.unpack(raw), raw[VNET_HDR_LEN:]
