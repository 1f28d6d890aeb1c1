"""Which xdpbr this process is: every path it owns on the host derives from one instance name.

Two xdpbr instances on one host (production and a test run, a benchmark, the demo) share
nothing: each has its own pins, run directory (writer lock, broker sockets, endpoint records),
configuration file and held-bridge markers. The default instance (no name) keeps the paths
xdpbr has always used:

    /sys/fs/bpf/xdpbr[-NAME]             bridges' pins, host tracepoint maps and links, the
                                         daemon's record (xdpbr_daemon)
    /sys/fs/bpf/xdpbr-endpoints[-NAME]   AF_XDP endpoints' XSKMAPs and programs
    /run/xdpbr[-NAME]                    lock, BRIDGE.sock, endpoints/ records
    /etc/xdpbr/xdpbr[-NAME].toml         the daemon's configuration
    /var/lib/xdpbr[-NAME]                bridges held by `xdpbr detach`

The name comes from `--instance NAME` or XDPBR_INSTANCE; `select()` sets the variable, so
processes this one starts (a daemon under test, iperf3 helpers) belong to the same instance.

Pins always go to the host's bpffs, where the daemon and later commands look: a process in a
mount namespace of its own whose /sys/fs/bpf is not the host's (`ip netns exec` remounts /sys,
and a bpffs mounted there vanishes with the command) pins through the host's root,
/proc/1/root/sys/fs/bpf/... (`bpffs()`).
"""

import ctypes
import ctypes.util
import os
import re

from . import netns
from .errors import UsageError, XdpbrError

ENV = "XDPBR_INSTANCE"
BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_bpffs = None  # bpffs() once found: where this process reaches the host's bpffs
# A path component on bpffs (which forbids dots) and in /run, /etc, /var/lib. A name starting
# with "endpoints" would make /sys/fs/bpf/xdpbr-NAME an endpoints root of another instance.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def check(name):
    """`name` if it can name an instance, else a UsageError saying what can."""
    if name == "" or (_NAME.fullmatch(name) and not name.startswith("endpoints")):
        return name
    raise UsageError(
        f"instance name {name!r} is not usable",
        fix="use 1-32 of a-z, 0-9, '-' and '_', starting with a letter or digit (not 'endpoints')",
    )


def select(name):
    """Make `name` this process's instance (and its children's)."""
    os.environ[ENV] = check(name)


def name():
    return os.environ.get(ENV, "")


def _suffix():
    n = check(name())
    return f"-{n}" if n else ""


def is_bpffs(path):
    """Whether `path` is on a bpffs (statfs f_type; f_type is the first field, a long)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def find_bpffs(local=BPFFS, host=None):
    """Where this process reaches the host's bpffs: `local` (/sys/fs/bpf) when it is the host's,
    i.e. the same file system as `host` (the host's /sys/fs/bpf through /proc/1/root, which the
    daemon and every later command see), or when no host root can be looked at (xdpbr then does
    what it always did); `host` when `local` is another (`ip netns exec` remounts /sys: its
    /sys/fs/bpf is an empty sysfs directory, and a bpffs mounted there would vanish with the
    command, pins and all). XdpbrError when the host's /sys/fs/bpf is not a bpffs."""
    if host is None:
        proc = netns.host_proc()
        if proc is None:
            return local
        host = os.path.join(proc, "root", local.lstrip("/"))
    try:
        host_dev = os.stat(host).st_dev
    except OSError:
        return local
    try:
        if os.stat(local).st_dev == host_dev:
            return local  # the host's own (a bpffs not mounted yet is ensure_bpffs()'s to mount)
    except OSError:
        pass
    if not is_bpffs(host):
        raise XdpbrError(
            f"{local} here is not the host's bpffs, and the host has none mounted at {local} "
            f"(seen as {host}): pins made here would vanish with this mount namespace",
            fix=f"mount -t bpf bpf {local} on the host, or run `xdpbr -n NS ...` from the host",
        )
    return host


def bpffs():
    """The host's bpffs as this process reaches it: /sys/fs/bpf, or the host's through
    /proc/1/root where this mount namespace has another /sys (find_bpffs); found once."""
    global _bpffs
    if _bpffs is None:
        _bpffs = find_bpffs()
    return _bpffs


def bpf_root():
    return os.path.join(bpffs(), f"xdpbr{_suffix()}")


def daemon_record_pin():
    """The daemon's own record (struct xdpbr_daemon): a file beside the bridges' directories."""
    return os.path.join(bpf_root(), "xdpbr_daemon")


def endpoint_pin_root():
    return os.path.join(bpffs(), f"xdpbr-endpoints{_suffix()}")


def run_dir():
    return f"/run/xdpbr{_suffix()}"


def endpoint_record_root():
    """Endpoint records, one directory per bridge label (loader/bridge_id.py)."""
    return os.path.join(run_dir(), "endpoints")


def held_dir():
    """Bridges held by `xdpbr detach`, one marker file per bridge label."""
    return os.path.join(state_dir(), "detached")


def config_path():
    return f"/etc/xdpbr/xdpbr{_suffix()}.toml"


def state_dir():
    return f"/var/lib/xdpbr{_suffix()}"
