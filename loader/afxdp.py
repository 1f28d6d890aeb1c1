"""AF_XDP sockets driven from Python: UMEM, the four rings over mmapped memory, in batches.

This is the consumer side (what a VMM does with a socket xdpbr hands over, and what xdpbr's
own Python endpoint does): XDP_UMEM_REG, the ring sizes, XDP_MMAP_OFFSETS, mmap of each ring,
bind. libxdp 1.3.1 (Debian 12) has no xsk_umem__create_with_fd for a socket made elsewhere,
and its ring helpers are inline (a ctypes call per frame costs ~300 ns), so the rings are read
and written here directly: a producer writes descriptors, then its index; a consumer reads the
index, then the descriptors, then stores its own index (x86 keeps stores in order:
docs/kernel-notes.md, "AF_XDP").
"""

import ctypes
import ctypes.util
import errno
import mmap
import os
import select
import socket
import struct
import time

from . import bpfsys, libxdp
from .compile import BPF_DIR, bcc_compile
from .errors import Unsupported, XdpbrError
from .layouts import XskCounter
from .netns import entered
from .xsk_ring import Ring

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_STATISTICS = 5, 6, 7
XDP_MAX_TX_SKB_BUDGET = 9  # Linux 6.17+: frames one copy-mode sendto() sends (default 32)
XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING = 0, 0x80000000
XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING = 0x100000000, 0x180000000
XDP_SHARED_UMEM, XDP_COPY, XDP_ZEROCOPY, XDP_USE_NEED_WAKEUP = 1 << 0, 1 << 1, 1 << 2, 1 << 3
XDP_RING_NEED_WAKEUP = 1

FRAME_SIZE = 2048
NUM_FRAMES = 4096
RING_SIZE = 2048
BIND_RETRY_S = 0.2  # a queue released just now answers EBUSY for 10-35 ms (docs/kernel-notes.md, "AF_XDP")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_OFFSETS = struct.Struct(
    "=16Q"
)  # struct xdp_mmap_offsets: rx, tx, fr, cr x (producer, consumer, desc, flags)
_UMEM_REG = struct.Struct("=QQIIII")  # addr, len, chunk_size, headroom, flags, tx_metadata_len
_SOCKADDR_XDP = struct.Struct("=HHIII")  # family, flags, ifindex, queue_id, shared_umem_fd
_STATISTICS = struct.Struct("=6Q")


def _bind_flags(zerocopy):
    return XDP_USE_NEED_WAKEUP | (XDP_ZEROCOPY if zerocopy else XDP_COPY)


def _retry_busy(attempt, what):
    """Call attempt() -> 0 or an errno until it succeeds; a queue released just now answers
    EBUSY for 10-35 ms (docs/kernel-notes.md, "AF_XDP"), so EBUSY is retried for
    BIND_RETRY_S, then refused."""
    deadline = time.monotonic() + BIND_RETRY_S
    while err := attempt():
        if err != errno.EBUSY:
            raise XdpbrError(what, errno=err)
        if time.monotonic() >= deadline:
            fix = "is another socket bound there?"
            raise XdpbrError(f"{what} (the queue stayed busy)", errno=err, fix=fix)
        time.sleep(0.005)


def new_socket(netns=None):
    """An AF_XDP socket, not bound (what xdpbr puts into an XSKMAP and hands over)."""
    with entered(netns):
        try:
            return socket.socket(AF_XDP, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        except OSError as exc:
            raise Unsupported("this kernel has no AF_XDP sockets", errno=exc.errno) from None


def from_fd(fd):
    """A socket object for a handed-over AF_XDP fd (family given: getsockname() cannot tell)."""
    return socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=fd)


class XskSocket:
    """A UMEM and its four rings on one AF_XDP socket, bound to (interface, queue); frames
    go in and out in batches over the ring memory.

    Two ways to get one: `XskSocket(sock, ifindex, queue)` sets up a socket made elsewhere by
    hand (a handed-over fd: what a VMM does, since libxdp 1.3.1 cannot adopt an fd), and
    `XskSocket.create(ifname, queue)` lets libxdp make and bind it (xdpbr's own sockets).
    With `share=` another XskSocket, this one uses that socket's UMEM (XDP_SHARED_UMEM, its
    own fill and completion rings): a relay then moves descriptors between the two, and no
    frame is copied (`forward`)."""

    def __init__(
        self, sock, ifindex, queue=0, *, zerocopy=False, frames=NUM_FRAMES, ring_size=RING_SIZE, share=None
    ):
        self._init_umem(frames, ring_size, share)
        self.sock, self.fd = sock, sock.fileno()
        try:
            self._setup(ifindex, queue, zerocopy)
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(
        cls,
        ifname,
        queue=0,
        *,
        netns=None,
        zerocopy=False,
        frames=NUM_FRAMES,
        ring_size=RING_SIZE,
        share=None,
    ):
        """A socket made and bound by libxdp (xsk_umem__create, then xsk_socket__create or,
        with `share=`, xsk_socket__create_shared) with INHIBIT_PROG_LOAD: the caller puts it
        into its own XSKMAP. `ifname` is looked up in `netns`."""
        made = []

        def attempt():  # a failed bind leaves libxdp's socket unusable: start afresh each time
            self = cls.__new__(cls)
            self._init_umem(frames, ring_size, share)
            try:
                with entered(netns):
                    err = self._create(ifname, queue, zerocopy)
            except BaseException:
                self.close()
                raise
            if err:
                self.close()
            else:
                made.append(self)
            return err

        _retry_busy(attempt, f"libxdp cannot bind an AF_XDP socket to {ifname} queue {queue}")
        return made[0]

    def _init_umem(self, frames, ring_size, share):
        self.frames, self.share, self.ring_size = frames, share, ring_size
        self.rings, self._undo, self.sock = [], [], None
        if share:
            self.umem = share.umem
        else:
            self.umem = mmap.mmap(-1, frames * FRAME_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._umem_view = ctypes.c_char.from_buffer(self.umem)  # released in close()

    def _create(self, ifname, queue, zerocopy):
        """One libxdp attempt; returns 0 or the errno of a failed bind."""

        structs = self._structs = [libxdp.XskRingStruct() for _ in range(4)]  # libxdp keeps pointers
        rx, tx, fill, comp = (ctypes.byref(s) for s in structs)
        if self.share:
            umem = self.share._libxdp_umem
        else:
            umem = self._libxdp_umem = libxdp.umem_create(
                ctypes.addressof(self._umem_view), len(self.umem), fill, comp, self.ring_size, FRAME_SIZE
            )
            self._undo.append(lambda: libxdp.umem_delete(umem))
        shared = (fill, comp) if self.share else (None, None)
        xsk, ret = libxdp.socket_create(
            ifname, queue, umem, rx, tx, self.ring_size, _bind_flags(zerocopy), *shared
        )
        if ret < 0:
            return -ret
        self._undo.append(lambda: libxdp.socket_delete(xsk))
        # a second file descriptor of the same socket, for poll, sendto and getsockopt; libxdp
        # closes its own in xsk_socket__delete
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=os.dup(libxdp.socket_fd(xsk)))
        self.fd = self.sock.fileno()
        self.rx, self.tx = Ring.from_libxdp(structs[0], 16), Ring.from_libxdp(structs[1], 16)
        self.fill, self.comp = Ring.from_libxdp(structs[2], 8), Ring.from_libxdp(structs[3], 8)
        self.rings = [self.rx, self.tx, self.fill, self.comp]
        self._start(zerocopy)
        return 0

    def _setup(self, ifindex, queue, zerocopy):
        if not self.share:
            base = ctypes.addressof(self._umem_view)
            reg = _UMEM_REG.pack(base, len(self.umem), FRAME_SIZE, 0, 0, 0)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
        size = self.ring_size
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            self.sock.setsockopt(SOL_XDP, opt, size)
        off = _OFFSETS.unpack(self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _OFFSETS.size))
        self.rx = Ring.mapped(self.fd, XDP_PGOFF_RX_RING, off[0:4], size, 16)
        self.tx = Ring.mapped(self.fd, XDP_PGOFF_TX_RING, off[4:8], size, 16)
        self.fill = Ring.mapped(self.fd, XDP_UMEM_PGOFF_FILL_RING, off[8:12], size, 8)
        self.comp = Ring.mapped(self.fd, XDP_UMEM_PGOFF_COMPLETION_RING, off[12:16], size, 8)
        self.rings = [self.rx, self.tx, self.fill, self.comp]
        self._start(zerocopy)
        if self.share:  # flags are inherited from the UMEM's owner
            self._bind(ifindex, queue, XDP_SHARED_UMEM, shared_fd=self.share.fd)
        else:
            self._bind(ifindex, queue, _bind_flags(zerocopy))

    def _start(self, zerocopy):
        """Hand the UMEM's frames out: half wait in the fill ring for the kernel, half are ours
        to send from. A socket sharing a UMEM sends the owner's frames (descriptors)."""
        self.copy_mode = not zerocopy  # copy mode transmits only inside sendto(): kick every batch
        if self.copy_mode:
            self._raise_tx_budget()
        if self.share:
            self.free_tx = []
            self.copy_mode = self.share.copy_mode
            return
        half = self.frames // 2
        self.fill.produce([i * FRAME_SIZE for i in range(min(half, self.ring_size))])
        self.free_tx = [i * FRAME_SIZE for i in range(half, self.frames)]

    def _raise_tx_budget(self):
        """Let one sendto() send a whole TX ring instead of 32 frames: a relay of 16k-frame
        batches then makes one system call a batch. Older kernels lack the option (ENOPROTOOPT)
        and keep 32: the kick loop below covers them."""
        try:
            self.sock.setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET, self.ring_size)
        except OSError as exc:
            if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                raise

    def _bind(self, ifindex, queue, flags, shared_fd=0):
        addr = ctypes.create_string_buffer(_SOCKADDR_XDP.pack(AF_XDP, flags, ifindex, queue, shared_fd))

        def attempt():
            return 0 if _libc.bind(self.fd, addr, len(addr.raw)) == 0 else ctypes.get_errno()

        _retry_busy(attempt, f"cannot bind an AF_XDP socket to ifindex {ifindex} queue {queue}")

    def send(self, frames):
        """Queue frames on the TX ring and kick the kernel; returns how many were queued."""
        self.reclaim()
        n = min(len(frames), len(self.free_tx))
        addrs, lens = self.free_tx[-n:] if n else [], [len(f) for f in frames[:n]]
        del self.free_tx[len(self.free_tx) - n :]
        umem = self.umem
        for addr, frame in zip(addrs, frames, strict=False):
            umem[addr : addr + len(frame)] = frame
        sent = self.tx.produce(addrs, lens)
        self.free_tx.extend(addrs[sent:])
        if sent and (self.copy_mode or self.tx.needs_wakeup()):
            self._kick()
        return sent

    def _kick(self):
        """sendto() transmits up to 32 descriptors a call in copy mode: call it until the
        kernel has taken the whole TX ring (bounded)."""
        for _ in range(self.ring_size // 32 + 1):
            try:
                self.sock.send(b"", socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS):
                    raise
            if not self.tx.available():
                return

    def reclaim(self):
        """Frames the kernel finished sending come back to the TX pool."""
        self.free_tx.extend(self.comp.consume())

    def recv(self, timeout=0.0):
        """Frames that arrived (bytes each), waiting up to `timeout` seconds for the first."""
        addrs, lens = self.rx.consume()
        if not addrs and timeout:
            select.select([self.fd], [], [], timeout)
            addrs, lens = self.rx.consume()
        umem = self.umem
        frames = [umem[addr : addr + length] for addr, length in zip(addrs, lens, strict=True)]
        self.fill.produce([addr - addr % FRAME_SIZE for addr in addrs])  # the buffers go back
        if self.fill.needs_wakeup():
            select.select([self.fd], [], [], 0)  # poll() is the wakeup for the RX side
        return frames

    def statistics(self):
        """XDP_STATISTICS: rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full,
        rx_fill_ring_empty_descs, tx_ring_empty_descs."""
        raw = self.sock.getsockopt(SOL_XDP, XDP_STATISTICS, _STATISTICS.size)
        names = (
            "rx_dropped",
            "rx_invalid_descs",
            "tx_invalid_descs",
            "rx_ring_full",
            "rx_fill_ring_empty_descs",
            "tx_ring_empty_descs",
        )
        return dict(zip(names, _STATISTICS.unpack(raw.ljust(_STATISTICS.size, b"\0")), strict=True))

    def close(self):
        for ring in self.rings:
            ring.close()
        self.rings = []
        if self.sock is not None:
            self.sock.close()
        undo, self._undo = self._undo, []
        for step in reversed(undo):  # libxdp: the socket, then its UMEM
            step()
        if not self.share:
            self.__dict__.pop("_umem_view", None)
            self.umem.close()


class XskRedirect:
    """bpf/afxdp.c compiled once: the XDP program and its XSKMAP (queue -> socket)."""

    def __init__(self):
        from bcc import BPF

        self.bpf = bcc_compile("the AF_XDP redirect program", src_file=f"{BPF_DIR}/afxdp.c")
        self.prog = self.bpf.load_func(b"xsk_redirect", BPF.XDP)
        self.map_fd = self.bpf[b"xdpbr_xsks"].map_fd
        self.stats_fd = self.bpf[b"xdpbr_xsk_stats"].map_fd

    def put(self, queue, sock):
        """Frames of rx queue `queue` go to `sock` (bound or not yet: docs/kernel-notes.md, "AF_XDP")."""

        bpfsys.map_update(self.map_fd, ctypes.c_uint32(queue), ctypes.c_int32(sock.fileno()))

    def remove(self, queue):

        bpfsys.map_delete(self.map_fd, ctypes.c_uint32(queue))

    def close(self):
        self.bpf.cleanup()


def forward(src, dst):
    """Move what arrived on `src` to `dst`'s TX ring as descriptors (dst shares src's UMEM):
    no frame is copied, and no Python object is made per frame. Frames dst has sent go back to
    src's fill ring. Returns how many moved."""
    moved = src.rx.move_to(dst.tx)
    if not dst.tx.free():  # what is left cannot go out: dropped, as a NIC would
        addrs, _ = src.rx.consume()
        src.fill.produce(addrs)
    if moved:
        dst._kick()
    dst.comp.move_to(src.fill)
    if src.fill.needs_wakeup():
        select.select([src.fd], [], [], 0)
    return moved


XSK_TO_SOCKET, XSK_NO_SOCKET = 0, 1


def read_xsk_stats(stats_fd):
    """{"to_socket": (packets, bytes), "no_socket": (packets, bytes)}, per-CPU slots summed."""

    ncpu = bpfsys.possible_cpus()
    out = {}
    for name, index in (("to_socket", XSK_TO_SOCKET), ("no_socket", XSK_NO_SOCKET)):
        values = (XskCounter * ncpu)()
        bpfsys.map_lookup(stats_fd, ctypes.c_uint32(index), values)
        out[name] = (sum(v.packets for v in values), sum(v.bytes for v in values))
    return out
