"""Host-wide tracepoint programs (bpf/host_tracepoints.c): XDP redirect errors counted on
xdp:xdp_redirect_err and xdp:xdp_devmap_xmit, and FDB learn times noted on
bridge:br_fdb_update. Attached with bpf_links (BPF_LINK_CREATE on a tracepoint perf event)
that are pinned, so they go on without any xdpbr process.

Pins, beside the bridges' directories in the instance's /sys/fs/bpf/xdpbr[-INSTANCE]/: the
maps xdpbr_redirect_errors and xdpbr_fdb_learned, the links link_<tracepoint>. Installed by the
instance's first attach, removed with its last detach. Limits: xdp_devmap_xmit names devices by
ifindex only, and an ifindex is per namespace, so its drops are attributed to the bridge port
with that ifindex; learn times are keyed by (MAC, VLAN) host-wide, so two bridges learning one
MAC at once share a time.
"""

import ctypes
import ctypes.util
import os

from . import bpfsys, instance
from .compile import BPF_DIR, bcc_compile
from .errors import XdpbrError
from .layouts import LearnKey, RedirectKey

SOURCE = os.path.join(BPF_DIR, "host_tracepoints.c")
REDIRECT_ERRORS_PIN = "xdpbr_redirect_errors"  # names in the instance's bpffs root
FDB_LEARNED_PIN = "xdpbr_fdb_learned"
# (system, tracepoint) -> program
TRACEPOINTS = {
    ("xdp", "xdp_redirect_err"): b"count_redirect_err",
    ("xdp", "xdp_devmap_xmit"): b"count_devmap_xmit",
    ("bridge", "br_fdb_update"): b"note_fdb_learned",
}
TRACEFS = "/sys/kernel/tracing"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
BPF_PERF_EVENT = 41


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


def _pin(name):
    return os.path.join(instance.bpf_root(), name)


def _link_pin(tracepoint):
    return _pin(f"link_{tracepoint[1]}")


def _pins():
    return [_pin(REDIRECT_ERRORS_PIN), _pin(FDB_LEARNED_PIN), *(_link_pin(t) for t in TRACEPOINTS)]


def installed():
    return all(os.path.exists(path) for path in _pins())


def _tracepoint_id(system, name):
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        os.system(f"mount -t tracefs tracefs {TRACEFS} 2>/dev/null")
    try:
        with open(os.path.join(TRACEFS, "events", system, name, "id")) as f:
            return int(f.read())
    except OSError as exc:
        raise XdpbrError(
            f"no tracepoint {system}:{name}", errno=exc.errno, fix=f"mount -t tracefs tracefs {TRACEFS}"
        ) from None


def _attach_pinned(prog_fd, tracepoint):
    system, name = tracepoint
    attr = _PerfEventAttr(
        type=PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(_PerfEventAttr),
        config=_tracepoint_id(system, name),
        sample_period=1,
        wakeup_events=1,
    )
    perf_fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if perf_fd < 0:
        raise XdpbrError(f"cannot open tracepoint {system}:{name}", errno=ctypes.get_errno())
    try:
        try:
            link_fd = bpfsys.link_create(prog_fd, perf_fd, BPF_PERF_EVENT)
        except XdpbrError as exc:
            raise XdpbrError(f"cannot attach to tracepoint {system}:{name}", errno=exc.errno) from None
        try:
            bpfsys.obj_pin(link_fd, _link_pin(tracepoint))
        finally:
            os.close(link_fd)
    finally:
        os.close(perf_fd)


def install():
    """Load and attach the programs once per host (idempotent; an older set is replaced)."""
    if installed():
        return
    remove()
    from bcc import BPF

    cflags = [f'-DXDPBR_ROOT="{instance.bpf_root()}"']
    bpf = bcc_compile("the host tracepoint programs", src_file=SOURCE, cflags=cflags)
    try:
        for tracepoint, func in TRACEPOINTS.items():
            _attach_pinned(bpf.load_func(func, BPF.TRACEPOINT).fd, tracepoint)
    except BaseException:
        remove()
        raise
    finally:
        bpf.cleanup()


def remove():
    """Unpin the links (which detaches the programs) and the maps."""
    for path in _pins():
        if os.path.exists(path):
            os.unlink(path)


def read_redirect_errors():
    """{(map_id, ifindex): errors} with per-CPU values summed; {} when not installed."""
    try:
        fd = bpfsys.obj_get(_pin(REDIRECT_ERRORS_PIN))
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


class LearnTimes:
    """When the bridge learned a MAC (bridge:br_fdb_update), for the daemon's sync lag."""

    def __init__(self):
        self.fd = None

    def pop(self, mac, vid):
        """CLOCK_MONOTONIC ns at which (mac, vid) was last learned, removed from the map; None
        when unknown (added by hand, learned before the programs were installed)."""
        if self.fd is None:
            try:
                self.fd = bpfsys.obj_get(_pin(FDB_LEARNED_PIN))
            except XdpbrError:
                return None  # not installed (yet): try again at the next event
        key = LearnKey(vid=vid)
        key.mac[:] = bytes.fromhex(mac.replace(":", ""))
        value = ctypes.c_uint64()
        if not bpfsys.map_lookup(self.fd, key, value):
            return None
        bpfsys.map_delete(self.fd, key)
        return value.value

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
