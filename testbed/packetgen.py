"""`PacketFrames`: the traffic source that needs no live frames, for rate-bounded use.

An AF_PACKET socket with PACKET_QDISC_BYPASS hands frames straight to the device's
ndo_start_xmit, `sendmmsg` a batch at a time (one syscall per batch; Python 3.11 has no
sendmmsg, so libc's through ctypes). On this machine it offers ~0.56 Mframes/s from one CPU at
60 B, below the Linux bridge's capacity: it serves rate-bounded scenarios (restart at 100
kframes/s, the control plane, seeding the closed loop of testbed/bounceloop.py), never a
capacity figure. Same interface as `LiveFrames`: `send(count)`, `run_for(...)`, `sent`.
"""

import ctypes
import ctypes.util
import errno
import os
import socket
import time

from xdpbr.loader.netns import entered

from testbed.trafficgen import Traffic, paced

PACKET_QDISC_BYPASS = 20  # linux/if_packet.h
SOL_PACKET = 263
SO_SNDBUFFORCE = 32  # asm-generic/socket.h: root may exceed net.core.wmem_max
SEND_BUFFER = 8 << 20
# Never block in the kernel: a frame that circulates as the same skb (the closed loop's TC
# bouncer redirects skbs) keeps its socket's send buffer charged for as long as it lives, so a
# blocking send could wait for ever; a full buffer is EAGAIN, retried until the deadline.
MSG_DONTWAIT = 0x40
STALL_S = 2.0  # a device that takes nothing for this long ends a send without a deadline
BATCH = 64  # frames a sendmmsg call: amortises the syscall, keeps bursts far below a veth ring
MAX_FRAMES = 4096  # distinct frames prepared (one per flow, cycled)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


def flow_frames(traffic):
    """One frame per flow (at most MAX_FRAMES), the UDP source port written as gen_tx does."""
    if not isinstance(traffic, Traffic):
        return [bytes(traffic)]
    base = traffic.frame()
    frames = []
    for i in range(min(traffic.flows, MAX_FRAMES)):
        f = bytearray(base)
        f[traffic.sport_offset : traffic.sport_offset + 2] = (traffic.base_sport + i).to_bytes(2, "big")
        frames.append(bytes(f))
    return frames


class PacketFrames:
    """Send `traffic` (a Traffic, or one frame as bytes) out of `ifname` in `netns` through an
    AF_PACKET socket, bounded in count and time. `sent` counts the frames the kernel took
    (sendmmsg's answer); a frame the device refuses (its ring full: veth drops it, ENOBUFS) is
    counted in `refused` and not sent again."""

    def __init__(self, netns, ifname, traffic):
        with entered(netns):  # a socket belongs to the namespace it is created in
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: sends only
        self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        # room for a whole closed-loop fill of 1514 B frames (255 x ~2.3 KB of truesize): the
        # seeded skbs stay charged to this socket while they circulate (see MSG_DONTWAIT)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SEND_BUFFER)
        self.sock.bind((ifname, 0))
        self.frames = flow_frames(traffic)
        self._buffers = [ctypes.create_string_buffer(f, len(f)) for f in self.frames]
        # every message built once: entry i carries frame i % frames, and a batch starting at
        # any frame is BATCH consecutive entries, so a call costs no Python work per frame (at
        # ~1 us a frame, filling them per call took half the source's CPU)
        n = len(self._buffers) + BATCH
        self._iov, self._msgs = (_Iovec * n)(), (_Mmsghdr * n)()
        for i in range(n):
            buf = self._buffers[i % len(self._buffers)]
            self._iov[i].iov_base, self._iov[i].iov_len = ctypes.addressof(buf), len(buf)
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self._next = 0  # the next flow's frame
        self.sent = 0
        self.refused = 0  # frames the device refused (ring full: ENOBUFS), and dropped

    def send(self, count, deadline=None, retry=True):
        """Send `count` frames in batches; returns how many the kernel took (all of them unless
        the device refuses for longer than `deadline`, a monotonic time, or for STALL_S). With
        `retry` False a refused frame is not sent again but counted as handed over (an open-loop
        offer, whatever the device takes): the answer is then frames offered, taken or refused."""
        done, progress = 0, time.monotonic()
        while done < count:
            n = min(BATCH, count - done)
            first = ctypes.addressof(self._msgs) + self._next * ctypes.sizeof(_Mmsghdr)
            got = _libc.sendmmsg(self.sock.fileno(), first, n, MSG_DONTWAIT)
            if got < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                    raise OSError(err, f"sendmmsg: {os.strerror(err)}")
                if err == errno.EINTR:
                    continue
                got = 0
            self.sent += got
            now = time.monotonic()
            if got:
                progress = now
            if got < n:  # sendmmsg stops at the first frame refused (its error kept for later)
                self.refused += 1
                if not retry:
                    got += 1
                elif (deadline is not None and now > deadline) or now - progress > STALL_S:
                    done += got
                    break
                elif got == 0:
                    time.sleep(0.0002)  # the device is full: let it drain
            done += got
            self._next = (self._next + got) % len(self._buffers)
        return done

    def run_for(self, seconds, per_call=None, rate=None, count=None, retry=True):
        """Send for about `seconds` (flat out, or at `rate` frames/s), at most `count` frames;
        returns the frames sent (offered, with `retry` False: see send)."""
        per_call = per_call or (max(1, min(BATCH, int(rate * 0.001))) if rate else BATCH * 16)
        return paced(
            lambda n, deadline: self.send(n, deadline=deadline, retry=retry), seconds, per_call, rate, count
        )

    def close(self):
        self.sock.close()
