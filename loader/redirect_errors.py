"""Counting XDP redirect errors host-wide: bpf/redirect_errors.c on the xdp:xdp_redirect_err
and xdp:xdp_devmap_xmit tracepoints, attached with bpf_links (BPF_LINK_CREATE on a tracepoint
perf event) that are pinned, so the counting goes on without any xdpbr process.

Pins, beside the bridges' directories: /sys/fs/bpf/xdpbr/xdpbr_redirect_errors (the map) and
link_xdp_redirect_err, link_xdp_devmap_xmit. Installed by the first attach, removed with the
last detach. Limit: xdp_devmap_xmit names devices by ifindex only, and an ifindex is per
namespace, so its drops are attributed to the bridge port with that ifindex.
"""

import ctypes
import ctypes.util
import os

from loader import bpfsys, pins
from loader.compile import BPF_DIR, bcc_compile
from loader.errors import XdpbrError

SOURCE = os.path.join(BPF_DIR, "redirect_errors.c")
MAP_PIN = os.path.join(pins.ROOT, "xdpbr_redirect_errors")
TRACEPOINTS = {"xdp_redirect_err": b"count_redirect_err", "xdp_devmap_xmit": b"count_devmap_xmit"}
TRACEFS = "/sys/kernel/tracing"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
BPF_LINK_CREATE = 28
BPF_PERF_EVENT = 41


class RedirectKey(ctypes.Structure):
    """struct xdpbr_redirect_key { __u32 map_id; __u32 ifindex; };"""

    _fields_ = [("map_id", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("rest", ctypes.c_uint8 * 76),
    ]


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
    ]


def _link_pin(name):
    return os.path.join(pins.ROOT, f"link_{name}")


def installed():
    return os.path.exists(MAP_PIN) and all(os.path.exists(_link_pin(n)) for n in TRACEPOINTS)


def _tracepoint_id(name):
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        os.system(f"mount -t tracefs tracefs {TRACEFS} 2>/dev/null")
    try:
        with open(os.path.join(TRACEFS, "events", "xdp", name, "id")) as f:
            return int(f.read())
    except OSError as exc:
        raise XdpbrError(
            f"no tracepoint xdp:{name}", errno=exc.errno, fix=f"mount -t tracefs tracefs {TRACEFS}"
        ) from None


def _attach_pinned(prog_fd, name):
    attr = _PerfEventAttr(
        type=PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(_PerfEventAttr),
        config=_tracepoint_id(name),
        sample_period=1,
        wakeup_events=1,
    )
    perf_fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if perf_fd < 0:
        raise XdpbrError(f"cannot open tracepoint xdp:{name}", errno=ctypes.get_errno())
    try:
        link = _LinkCreateAttr(prog_fd=prog_fd, target_fd=perf_fd, attach_type=BPF_PERF_EVENT)
        link_fd = bpfsys._bpf(BPF_LINK_CREATE, link)
        if link_fd < 0:
            raise XdpbrError(f"cannot attach to tracepoint xdp:{name}", errno=-link_fd)
        try:
            bpfsys.obj_pin(link_fd, _link_pin(name))
        finally:
            os.close(link_fd)
    finally:
        os.close(perf_fd)


def install():
    """Load and attach the counters once per host (idempotent)."""
    if installed():
        return
    remove()
    from bcc import BPF

    bpf = bcc_compile("the redirect error counters", src_file=SOURCE, cflags=[f'-DXDPBR_ROOT="{pins.ROOT}"'])
    try:
        for name, func in TRACEPOINTS.items():
            _attach_pinned(bpf.load_func(func, BPF.TRACEPOINT).fd, name)
    except BaseException:
        remove()
        raise
    finally:
        bpf.cleanup()


def remove():
    """Unpin the links (which detaches the programs) and the map."""
    for path in [*(_link_pin(n) for n in TRACEPOINTS), MAP_PIN]:
        if os.path.exists(path):
            os.unlink(path)


def read():
    """{(map_id, ifindex): errors} with per-CPU values summed; {} when not installed."""
    try:
        fd = bpfsys.obj_get(MAP_PIN)
    except XdpbrError:
        return {}
    try:
        ncpu = bpfsys.possible_cpus()
        out = {}
        for key in bpfsys.map_keys(fd, RedirectKey):
            values = (ctypes.c_uint64 * ncpu)()
            if bpfsys.map_lookup(fd, key, values):
                out[(key.map_id, key.ifindex)] = sum(values)
        return out
    finally:
        os.close(fd)
