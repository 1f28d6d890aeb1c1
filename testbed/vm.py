"""A VM stand-in: a network namespace whose kernel plays the guest, joined to a TAP endpoint by a
userspace loop that does what QEMU's main loop does for a virtio-net NIC on a TAP backend.

The guest is a veth pair inside its own namespace: the guest side has the IP address, its peer
is the "virtio NIC". An AF_PACKET socket with PACKET_VNET_HDR on the peer sees the guest's
frames as a virtio device would: TSO super-frames with a GSO header and partial checksums with
NEEDS_CSUM. The loop writes them into the TAP with writev([vnet_hdr, frame]) and hands what the
TAP delivers back to the guest, waiting for POLLOUT when the TAP says EAGAIN (tap_writable).
"""

import errno
import os
import select
import socket
import threading

from xdpbr.loader.errors import XdpbrError
from xdpbr.loader.netns import entered
from xdpbr.loader.tap import VNET_HDR_LEN, TapEndpoint

SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
PACKET_HDR_LEN = 10  # struct virtio_net_hdr, without num_buffers


class GuestRelay:
    """Moves frames between a guest namespace's virtio stand-in and a TAP endpoint."""

    def __init__(self, tap: TapEndpoint, guest_netns, nic_ifname):
        self.tap = tap
        self.frames_to_tap = 0
        self.frames_to_guest = 0
        with entered(guest_netns):
            self.pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                self.pkt.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                self.pkt.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self.pkt.bind((nic_ifname, ETH_P_ALL))
            except OSError as exc:
                self.pkt.close()
                raise XdpbrError(f"cannot open the guest NIC {nic_ifname}", errno=exc.errno) from None
        self.pkt.setblocking(False)
        self._stop_r, self._stop_w = os.pipe()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"relay-{tap.ifname}")

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        os.write(self._stop_w, b"x")
        self.thread.join(5)
        self.pkt.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _loop(self):
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        poller.register(self.pkt.fileno(), select.POLLIN)
        poller.register(self.tap.fileno(), select.POLLIN)
        while True:
            try:
                for fd, _ in poller.poll(1000):
                    if fd == self._stop_r:
                        return
                    if fd == self.pkt.fileno():
                        self._guest_to_tap()
                    elif fd == self.tap.fileno():
                        self._tap_to_guest()
                if self.tap.backlog:
                    # Back-pressure: stop reading the guest until the TAP drains (tap_writable).
                    self.tap.flush(timeout=1.0)
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                    return  # the TAP device was deleted under the VM: its NIC is gone
                raise

    def _guest_to_tap(self):
        for _ in range(64):
            try:
                raw = self.pkt.recv(65536 + PACKET_HDR_LEN)
            except BlockingIOError:
                return
            hdr = raw[:PACKET_HDR_LEN] + b"\x00\x00"  # num_buffers
            self.tap.send(raw[PACKET_HDR_LEN:], hdr=_RawHdr(hdr))
            self.frames_to_tap += 1

    def _tap_to_guest(self):
        for _ in range(64):
            try:
                raw = os.read(self.tap.fileno(), 65536 + VNET_HDR_LEN)
            except BlockingIOError:
                return
            try:
                self.pkt.send(raw[:PACKET_HDR_LEN] + raw[VNET_HDR_LEN:])
                self.frames_to_guest += 1
            except OSError:
                pass  # the guest NIC dropped it, as a full virtqueue would


class _RawHdr:
    """A vnet header already in wire form."""

    def __init__(self, raw):
        self.raw = raw

    def pack(self):
        return self.raw
