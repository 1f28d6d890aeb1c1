"""libxdp (xdp-tools) through ctypes: UMEM and AF_XDP socket creation, nothing compiled here.

libxdp creates the UMEM, the sockets, their four rings and their mmaps, and binds; xdpbr then
drives the rings from Python over the memory libxdp mapped (loader/afxdp.Ring), never through
libxdp's ring helpers (inline in C; a ctypes call per frame costs ~300 ns), so libxdp's cached
ring state is never mixed with ours. XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD always: xdpbr loads its
own XDP program and puts the socket into its own XSKMAP (libxdp's dispatcher fails here anyway:
docs/kernel-notes.md, "AF_XDP").
"""

import ctypes
import os

from .errors import Unsupported, XdpbrError

LIBXDP_SONAME = "libxdp.so.1"
XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD = 1 << 0


class XskRingStruct(ctypes.Structure):
    """struct xsk_ring_prod / xsk_ring_cons (xdp/xsk.h, DEFINE_XSK_RING). libxdp keeps a
    pointer to it until the socket or UMEM is deleted: the owner must keep it alive."""

    _fields_ = [
        ("cached_prod", ctypes.c_uint32),
        ("cached_cons", ctypes.c_uint32),
        ("mask", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("producer", ctypes.c_void_p),
        ("consumer", ctypes.c_void_p),
        ("ring", ctypes.c_void_p),
        ("flags", ctypes.c_void_p),
    ]


class XskUmemConfig(ctypes.Structure):
    _fields_ = [
        ("fill_size", ctypes.c_uint32),
        ("comp_size", ctypes.c_uint32),
        ("frame_size", ctypes.c_uint32),
        ("frame_headroom", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class XskSocketConfig(ctypes.Structure):
    _fields_ = [
        ("rx_size", ctypes.c_uint32),
        ("tx_size", ctypes.c_uint32),
        ("libxdp_flags", ctypes.c_uint32),
        ("xdp_flags", ctypes.c_uint32),
        ("bind_flags", ctypes.c_uint16),
    ]


_lib = None


def lib():
    """libxdp.so.1 with the prototypes xdpbr uses (loaded on first use)."""
    global _lib
    if _lib is None:
        try:
            handle = ctypes.CDLL(LIBXDP_SONAME, use_errno=True)
        except OSError:
            raise Unsupported(f"{LIBXDP_SONAME} is missing", fix="apt-get install libxdp1") from None
        ring_p, vp = ctypes.POINTER(XskRingStruct), ctypes.c_void_p
        handle.xsk_umem__create.argtypes = [
            ctypes.POINTER(vp),
            vp,
            ctypes.c_uint64,
            ring_p,
            ring_p,
            ctypes.POINTER(XskUmemConfig),
        ]
        handle.xsk_socket__create.argtypes = [
            ctypes.POINTER(vp), ctypes.c_char_p, ctypes.c_uint32, vp, ring_p, ring_p,
            ctypes.POINTER(XskSocketConfig),
        ]  # fmt: skip
        handle.xsk_socket__create_shared.argtypes = [
            ctypes.POINTER(vp), ctypes.c_char_p, ctypes.c_uint32, vp, ring_p, ring_p, ring_p, ring_p,
            ctypes.POINTER(XskSocketConfig),
        ]  # fmt: skip
        for name in ("xsk_umem__delete", "xsk_socket__fd", "xsk_umem__fd"):
            getattr(handle, name).argtypes = [vp]
        handle.xsk_socket__delete.argtypes = [vp]
        handle.xsk_socket__delete.restype = None
        _lib = handle
    return _lib


def _check(ret, what, fix=None):
    """libxdp returns a negative errno."""
    if ret < 0:
        raise XdpbrError(what, errno=-ret, fix=fix)


def umem_create(area_address, size, fill, comp, ring_size, frame_size, headroom=0):
    """xsk_umem__create over memory the caller owns; returns the `struct xsk_umem *`."""
    umem = ctypes.c_void_p()
    cfg = XskUmemConfig(ring_size, ring_size, frame_size, headroom, 0)
    ret = lib().xsk_umem__create(ctypes.byref(umem), area_address, size, fill, comp, ctypes.byref(cfg))
    if ret == -97:  # EAFNOSUPPORT: no AF_XDP in this kernel
        raise Unsupported("this kernel has no AF_XDP sockets", errno=97)
    _check(ret, "libxdp cannot create a UMEM", fix="raise RLIMIT_MEMLOCK (ulimit -l) if ENOMEM/EPERM")
    return umem


def socket_create(ifname, queue, umem, rx, tx, ring_size, bind_flags, fill=None, comp=None):
    """xsk_socket__create (the UMEM's first socket) or xsk_socket__create_shared (with its own
    `fill`/`comp` rings): bound to (ifname, queue) in the calling thread's namespace, no XDP
    program loaded. Returns the `struct xsk_socket *`."""
    xsk = ctypes.c_void_p()
    cfg = XskSocketConfig(ring_size, ring_size, XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD, 0, bind_flags)
    name = os.fsencode(ifname)
    if fill is None:
        ret = lib().xsk_socket__create(ctypes.byref(xsk), name, queue, umem, rx, tx, ctypes.byref(cfg))
    else:
        ret = lib().xsk_socket__create_shared(
            ctypes.byref(xsk), name, queue, umem, rx, tx, fill, comp, ctypes.byref(cfg)
        )
    return xsk, ret


def socket_fd(xsk):
    return lib().xsk_socket__fd(xsk)


def socket_delete(xsk):
    lib().xsk_socket__delete(xsk)


def umem_delete(umem):
    _check(lib().xsk_umem__delete(umem), "libxdp cannot delete the UMEM (a socket still uses it)")
