"""One AF_XDP ring (RX, TX, fill or completion) over its mapped memory, driven from Python.

A producer writes descriptors, then its index; a consumer reads the index, then the
descriptors, then stores its own index (x86 keeps stores in order: docs/kernel-notes.md,
"AF_XDP"). The memory is mapped here (a socket set up by hand, loader/afxdp.XskSocket) or by
libxdp (read through the pointers in its `struct xsk_ring_*`); libxdp's cached ring state is
never used.
"""

import array
import ctypes
import mmap

XDP_RING_NEED_WAKEUP = 1

# a writable memoryview of raw memory (ctypes arrays export "<B", which memoryview cannot cast)
_memory_at = ctypes.pythonapi.PyMemoryView_FromMemory
_memory_at.restype, _memory_at.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
PyBUF_WRITE = 0x200


class Ring:
    """One AF_XDP ring in mmapped memory: `entry` is 8 (fill, completion: addresses) or 16
    (rx, tx: struct xdp_desc {u64 addr; u32 len; u32 options})."""

    def __init__(self, producer, consumer, flags, desc, size, entry, keep=()):
        """`producer`, `consumer`, `flags`: one-word views; `desc`: the descriptors as u64
        words; `keep`: what must outlive the views (the mmap)."""
        self.prod, self.cons, self.flag, self.q64 = producer, consumer, flags, desc
        self.size, self.mask, self.entry, self.keep = size, size - 1, entry, list(keep)

    @classmethod
    def mapped(cls, fd, pgoff, offsets, size, entry):
        """Map the ring of socket `fd` at page offset `pgoff` (XDP_MMAP_OFFSETS: producer,
        consumer, desc, flags)."""
        producer, consumer, desc, flags = offsets
        area = mmap.mmap(
            fd,
            desc + size * entry,
            mmap.MAP_SHARED | mmap.MAP_POPULATE,
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=pgoff,
        )
        view = memoryview(area)
        words = view.cast("I")
        return cls(
            words[producer // 4 : producer // 4 + 1],
            words[consumer // 4 : consumer // 4 + 1],
            words[flags // 4 : flags // 4 + 1],
            view[desc : desc + size * entry].cast("Q"),
            size,
            entry,
            keep=(words, view, area),
        )

    @classmethod
    def from_libxdp(cls, ring, entry):
        """The ring libxdp mapped, from its `struct xsk_ring_*` (loader/libxdp.XskRingStruct)."""

        def words(address, nbytes, fmt):
            return _memory_at(address, nbytes, PyBUF_WRITE).cast(fmt)

        return cls(
            words(ring.producer, 4, "I"),
            words(ring.consumer, 4, "I"),
            words(ring.flags, 4, "I"),
            words(ring.ring, ring.size * entry, "Q"),
            ring.size,
            entry,
        )

    def needs_wakeup(self):
        return bool(self.flag[0] & XDP_RING_NEED_WAKEUP)

    def _read(self, n):
        """The words of the `n` entries after the consumer index (a copy), wrapping at the
        ring's end; not released."""
        per, start = self.entry // 8, self.cons[0] & self.mask
        first = min(n, self.size - start)
        words = array.array("Q")
        words.frombytes(self.q64[start * per : (start + first) * per].cast("B"))
        words.frombytes(self.q64[0 : (n - first) * per].cast("B"))
        return words

    def _write(self, words):
        """Write whole entries' `words` after the producer index, wrapping; not published."""
        per, start = self.entry // 8, self.prod[0] & self.mask
        n = len(words) // per
        first = min(n, self.size - start)
        self.q64[start * per : (start + first) * per] = words[: first * per]
        self.q64[0 : (n - first) * per] = words[first * per :]

    def _publish(self, n):
        self.prod[0] = (self.prod[0] + n) & 0xFFFFFFFF  # after the descriptors (x86 order)

    def _release(self, n):
        self.cons[0] = (self.cons[0] + n) & 0xFFFFFFFF

    def available(self):
        return (self.prod[0] - self.cons[0]) % (1 << 32)

    # producer side (fill, tx)
    def free(self):
        return self.size - self.available()

    def produce(self, addrs, lens=None):
        """Write descriptors (addresses; with `lens`, struct xdp_desc), then publish them;
        returns how many fit. Whole runs are copied with slice assignments, not per entry."""
        n = min(len(addrs), self.free())
        if not n:
            return 0
        if self.entry == 8:
            words = array.array("Q", addrs[:n])
        else:
            words = array.array("Q", [0]) * (2 * n)
            words[0::2] = array.array("Q", addrs[:n])
            words[1::2] = array.array("Q", lens[:n])  # len in the low half, options 0
        self._write(words)
        self._publish(n)
        return n

    # consumer side (rx, completion)
    def consume(self, limit=1 << 16):
        """Read what the kernel produced (at most `limit`), then release it: a list of
        addresses (fill/completion) or (addresses, lengths) (rx/tx)."""
        n = min(self.available(), limit)
        words = self._read(n).tolist()
        self._release(n)
        if self.entry == 8:
            return words
        return words[0::2], [w & 0xFFFFFFFF for w in words[1::2]]

    def move_to(self, other):
        """Move descriptors from this ring (consumer side) to `other` (producer side, same
        entry size) as raw words, no Python object per entry: RX -> TX, completion -> fill.
        Returns how many moved."""
        n = min(self.available(), other.free())
        if n:
            other._write(self._read(n))
            other._publish(n)
            self._release(n)
        return n

    def close(self):
        for view in (self.prod, self.cons, self.flag, self.q64, *self.keep):
            view.release() if isinstance(view, memoryview) else view.close()
        self.keep = []
