"""AF_XDP sockets driven from Python: UMEM, the four rings over mmapped memory, in batches.

This is the consumer side (what a VMM does with a socket xdpbr hands over, and what xdpbr's
own Python endpoint does): XDP_UMEM_REG, the ring sizes, XDP_MMAP_OFFSETS, mmap of each ring,
bind. libxdp 1.3.1 (Debian 12) has no xsk_umem__create_with_fd for a socket made elsewhere,
and its ring helpers are inline (a ctypes call per frame costs ~300 ns), so the rings are read
and written here directly: a producer writes descriptors, then its index; a consumer reads the
index, then the descriptors, then stores its own index (x86 keeps stores in order, KERNEL-FACTS).
"""

import array
import ctypes
import ctypes.util
import errno
import mmap
import select
import socket
import struct
import time

from loader.errors import Unsupported, XdpbrError
from loader.netns import entered

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_STATISTICS = 5, 6, 7
XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING = 0, 0x80000000
XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING = 0x100000000, 0x180000000
XDP_SHARED_UMEM, XDP_COPY, XDP_ZEROCOPY, XDP_USE_NEED_WAKEUP = 1 << 0, 1 << 1, 1 << 2, 1 << 3
XDP_RING_NEED_WAKEUP = 1

FRAME_SIZE = 2048
NUM_FRAMES = 4096
RING_SIZE = 2048
BIND_RETRY_S = 0.2  # a queue released just now answers EBUSY for 10-35 ms (KERNEL-FACTS)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_OFFSETS = struct.Struct(
    "=16Q"
)  # struct xdp_mmap_offsets: rx, tx, fr, cr x (producer, consumer, desc, flags)
_UMEM_REG = struct.Struct("=QQIIII")  # addr, len, chunk_size, headroom, flags, tx_metadata_len
_SOCKADDR_XDP = struct.Struct("=HHIII")  # family, flags, ifindex, queue_id, shared_umem_fd
_STATISTICS = struct.Struct("=6Q")


class Ring:
    """One AF_XDP ring in mmapped memory: `entry` is 8 (fill, completion: addresses) or 16
    (rx, tx: struct xdp_desc {u64 addr; u32 len; u32 options})."""

    def __init__(self, fd, pgoff, offsets, size, entry):
        producer, consumer, desc, flags = offsets
        self.map = mmap.mmap(
            fd,
            desc + size * entry,
            mmap.MAP_SHARED | mmap.MAP_POPULATE,
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=pgoff,
        )
        self.u32 = memoryview(self.map).cast("I")
        self.q64 = memoryview(self.map)[desc : desc + size * entry].cast("Q")
        self.producer, self.consumer, self.flags = producer // 4, consumer // 4, flags // 4
        self.desc, self.size, self.mask, self.entry = desc, size, size - 1, entry

    def needs_wakeup(self):
        return bool(self.u32[self.flags] & XDP_RING_NEED_WAKEUP)

    # producer side (fill, tx)
    def free(self):
        return self.size - (self.u32[self.producer] - self.u32[self.consumer]) % (1 << 32)

    def produce(self, addrs, lens=None):
        """Write descriptors (addresses; with `lens`, struct xdp_desc), then publish them;
        returns how many fit. Whole runs are copied with slice assignments, not per entry."""
        head = self.u32[self.producer]
        n = min(len(addrs), self.free())
        if not n:
            return 0
        if self.entry == 8:
            words = array.array("Q", addrs[:n])
        else:
            words = array.array("Q", [0]) * (2 * n)
            words[0::2] = array.array("Q", addrs[:n])
            words[1::2] = array.array("Q", lens[:n])  # len in the low half, options 0
        per = self.entry // 8
        start = head & self.mask
        first = min(n, self.size - start)  # up to the end of the ring, then from its start
        self.q64[start * per : (start + first) * per] = words[: first * per]
        if first < n:
            self.q64[0 : (n - first) * per] = words[first * per :]
        self.u32[self.producer] = (head + n) & 0xFFFFFFFF
        return n

    # consumer side (rx, completion)
    def consume(self, limit=1 << 16):
        """Read what the kernel produced (at most `limit`), then release it: a list of
        addresses (fill/completion) or (addresses, lengths) (rx/tx)."""
        tail = self.u32[self.consumer]
        n = min((self.u32[self.producer] - tail) % (1 << 32), limit)
        per = self.entry // 8
        start = tail & self.mask
        first = min(n, self.size - start)
        words = self.q64[start * per : (start + first) * per].tolist()
        if first < n:
            words += self.q64[0 : (n - first) * per].tolist()
        self.u32[self.consumer] = (tail + n) & 0xFFFFFFFF
        if per == 1:
            return words
        return words[0::2], [w & 0xFFFFFFFF for w in words[1::2]]

    def close(self):
        self.q64.release()
        self.u32.release()
        self.map.close()


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
    """A UMEM and its rings set up on an AF_XDP socket, then bound to (ifindex, queue).

    With `share=` another XskSocket, this one uses that socket's UMEM (XDP_SHARED_UMEM, its
    own fill and completion rings): a relay then moves descriptors between the two, and no
    frame is copied (`forward`)."""

    def __init__(
        self, sock, ifindex, queue=0, *, zerocopy=False, frames=NUM_FRAMES, ring_size=RING_SIZE, share=None
    ):
        self.sock, self.fd = sock, sock.fileno()
        self.frames, self.share, self.ring_size = frames, share, ring_size
        self.umem = (
            share.umem if share else mmap.mmap(-1, frames * FRAME_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        )
        self.rings = []
        try:
            self._setup(ifindex, queue, zerocopy)
        except BaseException:
            self.close()
            raise

    def _setup(self, ifindex, queue, zerocopy):
        if not self.share:
            self._umem_view = ctypes.c_char.from_buffer(self.umem)  # released in close()
            base = ctypes.addressof(self._umem_view)
            reg = _UMEM_REG.pack(base, len(self.umem), FRAME_SIZE, 0, 0, 0)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
        size = self.ring_size
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            self.sock.setsockopt(SOL_XDP, opt, size)
        off = _OFFSETS.unpack(self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _OFFSETS.size))
        self.rx = Ring(self.fd, XDP_PGOFF_RX_RING, off[0:4], size, 16)
        self.tx = Ring(self.fd, XDP_PGOFF_TX_RING, off[4:8], size, 16)
        self.fill = Ring(self.fd, XDP_UMEM_PGOFF_FILL_RING, off[8:12], size, 8)
        self.comp = Ring(self.fd, XDP_UMEM_PGOFF_COMPLETION_RING, off[12:16], size, 8)
        self.rings = [self.rx, self.tx, self.fill, self.comp]
        self.copy_mode = not zerocopy  # copy mode transmits only inside sendto(): kick every batch
        if self.share:  # the frames belong to the owner of the UMEM; flags are inherited
            self.free_tx = []
            self.copy_mode = self.share.copy_mode
            self._bind(ifindex, queue, XDP_SHARED_UMEM, shared_fd=self.share.fd)
            return
        # half the frames wait in the fill ring for the kernel, half are ours to send from
        half = self.frames // 2
        self.fill.produce([i * FRAME_SIZE for i in range(min(half, size))])
        self.free_tx = [i * FRAME_SIZE for i in range(half, self.frames)]
        self._bind(ifindex, queue, XDP_USE_NEED_WAKEUP | (XDP_ZEROCOPY if zerocopy else XDP_COPY))

    def _bind(self, ifindex, queue, flags, shared_fd=0):
        addr = ctypes.create_string_buffer(_SOCKADDR_XDP.pack(AF_XDP, flags, ifindex, queue, shared_fd))
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            if _libc.bind(self.fd, addr, len(addr.raw)) == 0:
                return
            err = ctypes.get_errno()
            if err == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            what = f"cannot bind an AF_XDP socket to ifindex {ifindex} queue {queue}"
            if err == errno.EBUSY:
                raise XdpbrError(
                    what + " (the queue stayed busy)", errno=err, fix="is another socket bound there?"
                )
            raise XdpbrError(what, errno=err)

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
            if self.tx.u32[self.tx.consumer] == self.tx.u32[self.tx.producer]:
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
        self.sock.close()
        if not self.share:
            self.__dict__.pop("_umem_view", None)
            self.umem.close()


class XskRedirect:
    """bpf/afxdp.c compiled once: the XDP program and its XSKMAP (queue -> socket)."""

    def __init__(self):
        from bcc import BPF

        from loader.compile import BPF_DIR, bcc_compile

        self.bpf = bcc_compile("the AF_XDP redirect program", src_file=f"{BPF_DIR}/afxdp.c")
        self.prog = self.bpf.load_func(b"xsk_redirect", BPF.XDP)
        self.map_fd = self.bpf[b"xdpbr_xsks"].map_fd
        self.stats_fd = self.bpf[b"xdpbr_xsk_stats"].map_fd

    def put(self, queue, sock):
        """Frames of rx queue `queue` go to `sock` (bound or not yet: KERNEL-FACTS)."""
        from loader import bpfsys

        bpfsys.map_update(self.map_fd, ctypes.c_uint32(queue), ctypes.c_int32(sock.fileno()))

    def remove(self, queue):
        from loader import bpfsys

        bpfsys.map_delete(self.map_fd, ctypes.c_uint32(queue))

    def close(self):
        self.bpf.cleanup()


def forward(src, dst):
    """Move what arrived on `src` to `dst`'s TX ring as descriptors (dst shares src's UMEM):
    no frame is copied. Frames dst has sent go back to src's fill ring. Returns how many moved."""
    addrs, lens = src.rx.consume()
    moved = dst.tx.produce(addrs, lens) if addrs else 0
    if moved < len(addrs):  # dst's TX ring is full: those frames are dropped, as a NIC would
        src.fill.produce(addrs[moved:])
    if moved:
        dst._kick()
    done = dst.comp.consume()
    if done:
        src.fill.produce(done)
    if src.fill.needs_wakeup():
        select.select([src.fd], [], [], 0)
    return moved


class XskCounter(ctypes.Structure):
    """struct xdpbr_xsk_counter in bpf/afxdp.c."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


XSK_TO_SOCKET, XSK_NO_SOCKET = 0, 1


def read_xsk_stats(stats_fd):
    """{"to_socket": (packets, bytes), "no_socket": (packets, bytes)}, per-CPU slots summed."""
    from loader import bpfsys

    ncpu = bpfsys.possible_cpus()
    out = {}
    for name, index in (("to_socket", XSK_TO_SOCKET), ("no_socket", XSK_NO_SOCKET)):
        values = (XskCounter * ncpu)()
        bpfsys.map_lookup(stats_fd, ctypes.c_uint32(index), values)
        out[name] = (sum(v.packets for v in values), sum(v.bytes for v in values))
    return out
