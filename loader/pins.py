"""The bpffs layout of one accelerated bridge and the checks before reusing it.

/sys/fs/bpf/xdpbr[-INSTANCE]/<bridge>           a bridge in the namespace xdpbr runs in
/sys/fs/bpf/xdpbr[-INSTANCE]/<bridge>@<netns>   a bridge in network namespace <netns> (`-n`)
/sys/fs/bpf/xdpbr[-INSTANCE]/xdpbr_daemon       the daemon's record (a file: bridges are directories)

Interface names cannot contain '/', so the name is a single path component; '@' separates the
namespace, so two namespaces with a bridge of the same name never share pins.
"""

import ctypes
import errno
import os

from . import bpfsys, instance, netns
from .bridge_id import BridgeId
from .errors import NotFound, XdpbrError
from .layouts import DAEMON_SPEC, FDB_SIZE, LAYOUT_VERSION, MAX_PORTS, U32, DaemonRecord, Meta, map_specs

BPFFS = instance.BPFFS
PROG_PINS = {"xdp": "prog_xdp", "tc": "prog_tc", "clock": "prog_clock"}


def ensure_bpffs():
    """Mount bpffs if the host has not (pins need it): only in the host's mount namespace, since
    one mounted in another vanishes with it, pins and all (instance.bpffs() finds the host's)."""
    if os.path.ismount(instance.bpffs()):
        return
    if not netns.in_host_namespace("mnt"):
        raise XdpbrError(
            f"bpffs is not mounted at {BPFFS} on the host, and one mounted in this mount namespace "
            "would vanish with it",
            fix=f"mount -t bpf bpf {BPFFS} on the host, or run `xdpbr -n NS ...` from the host",
        )
    if os.system(f"mount -t bpf bpf {BPFFS} 2>/dev/null") != 0:
        raise XdpbrError(f"bpffs is not mounted at {BPFFS}", fix=f"mount -t bpf bpf {BPFFS}")


def pin_dir(bridge, netns=None):
    return BridgeId(bridge, netns).pin_dir


def attached_bridges():
    """(bridge, netns) of every bridge with pins, sorted."""
    root = instance.bpf_root()
    if not os.path.isdir(root):
        return []
    found = (BridgeId.parse(e) for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
    return sorted((b.name, b.netns) for b in found)


def sizes(directory):
    """(max_ports, fdb_size) a bridge was compiled with (-DXDPBR_MAX_PORTS, -DXDPBR_FDB_SIZE),
    read from its pinned maps' capacities; the defaults where nothing is pinned yet."""
    found = []
    for name, default in (("xdpbr_ports", MAX_PORTS), ("xdpbr_fdb", FDB_SIZE)):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            found.append(default)
            continue
        fd = bpfsys.obj_get(path)
        try:
            found.append(bpfsys.map_info(fd).max_entries)
        finally:
            os.close(fd)
    return tuple(found)


class PinnedMaps:
    """Open fds of one bridge's pinned maps, layouts checked. Use as a context manager."""

    def __init__(self, directory, specs=None):
        self.directory = directory
        self.specs = specs or map_specs(*sizes(directory))
        self.fds = {}

    def open(self):
        if not os.path.isdir(self.directory):
            raise NotFound(f"no xdpbr state at {self.directory}")
        try:
            for name, spec in self.specs.items():
                fd = bpfsys.obj_get(os.path.join(self.directory, name))
                self.fds[name] = fd
                check_layout(fd, spec, os.path.join(self.directory, name))
            check_version(self.fds["xdpbr_meta"], self.directory)
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def __getitem__(self, name):
        return self.fds[name]


def check_layout(fd, spec, path):
    """A pin is reused only if type, key/value size and capacity match (bcc does not check)."""
    info = bpfsys.map_info(fd)
    import ctypes

    found = (
        bpfsys.MAP_TYPES.get(info.type, str(info.type)),
        info.key_size,
        info.value_size,
        info.max_entries,
    )
    want = (spec.map_type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value), spec.max_entries)
    if found != want:
        raise XdpbrError(
            f"pinned map {path} has layout {found}, this xdpbr expects {want}",
            fix="detach the bridge with the xdpbr that attached it, or remove the pin directory",
        )


def check_version(meta_fd, directory):
    meta = Meta()
    if bpfsys.map_lookup(meta_fd, U32(0), meta) and meta.layout_version not in (0, LAYOUT_VERSION):
        raise XdpbrError(
            f"pins in {directory} are layout version {meta.layout_version}, this xdpbr uses {LAYOUT_VERSION}",
            fix="detach the bridge with the xdpbr that attached it",
        )


def stale_maps(directory, specs=None):
    """Names of the pinned maps an attach must rebuild: those whose layout (type, key/value
    size, capacity) is not this xdpbr's, or every map when the layout version differs."""
    specs = specs or map_specs(*sizes(directory))
    stale = []
    for name, spec in specs.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue  # a map this version adds: bcc creates it
        fd = bpfsys.obj_get(path)
        try:
            check_layout(fd, spec, path)
            if name == "xdpbr_meta":
                check_version(fd, directory)
        except XdpbrError:
            if name == "xdpbr_meta":  # another layout version: nothing old can be trusted
                return [n for n in specs if os.path.exists(os.path.join(directory, n))]
            stale.append(name)
        finally:
            os.close(fd)
    return stale


def set_aside(directory, names):
    """Move pins out of the way (bpffs renames; it forbids dots in names) so new maps can be
    pinned; returns a function that puts them back (a failed attach) and one that drops them
    (a successful one)."""
    moved = []
    for name in names:
        old, new = os.path.join(directory, name), os.path.join(directory, f"{name}_old_layout")
        os.rename(old, new)
        moved.append((old, new))

    def restore():
        for old, new in moved:
            if os.path.exists(old):
                os.unlink(old)
            os.rename(new, old)

    def drop():
        for _, new in moved:
            os.unlink(new)

    return restore, drop


def remove_dir(directory):
    """Unpin everything under a bridge's directory (programs stay while attached)."""
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        os.unlink(os.path.join(directory, entry))
    os.rmdir(directory)


class DaemonRecordPin:
    """The instance's daemon record (struct xdpbr_daemon, layouts.DAEMON_SPEC), pinned at
    instance.daemon_record_pin(): the running daemon writes it once a loop turn; `show`, the
    metrics and `xdpbr daemon --reload` read it. Use as a context manager."""

    def __init__(self, fd):
        self.fd = fd

    @classmethod
    def open(cls, create=False):
        """The pinned record, or None when there is none (no daemon ran in this instance) or it
        has another layout. With `create` (the daemon), a missing record is created and pinned,
        and one of another layout (another xdpbr's) is replaced."""
        path = instance.daemon_record_pin()
        try:
            fd = bpfsys.obj_get(path)
        except NotFound:
            fd = None
        if fd is not None:
            try:
                check_layout(fd, DAEMON_SPEC, path)
                return cls(fd)
            except XdpbrError:
                os.close(fd)
                if not create:
                    return None
                os.unlink(path)
        if not create:
            return None
        os.makedirs(instance.bpf_root(), exist_ok=True)
        spec = DAEMON_SPEC
        fd = bpfsys.map_create(
            spec.map_type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value), spec.max_entries, spec.name
        )
        try:
            bpfsys.obj_pin(fd, path)
        except XdpbrError as exc:
            os.close(fd)
            if exc.errno != errno.EEXIST:
                raise
            return cls.open()  # another daemon of this instance pinned one meanwhile
        return cls(fd)

    def read(self):
        """The record; read until two reads agree, so a reader never sees a half-written one."""
        last = None
        for _ in range(5):
            record = DaemonRecord()
            bpfsys.map_lookup(self.fd, U32(0), record)
            if last is not None and bytes(record) == bytes(last):
                break
            last = record
        return record

    def write(self, record):
        bpfsys.map_update(self.fd, U32(0), record)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def process_start(pid):
    """When process `pid` started (/proc/PID/stat starttime, clock ticks since boot), None when
    there is no such process: with the pid it tells a process from a later one reusing its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    return int(text[text.rindex(b")") + 2 :].split()[19])


def read_daemon_record():
    """(record, running) of the instance's daemon: the DaemonRecord, and whether the process it
    names still runs (not a reused pid); None when no daemon has left a record."""
    pin = DaemonRecordPin.open()
    if pin is None:
        return None
    with pin:
        record = pin.read()
    running = bool(record.pid) and process_start(record.pid) == record.pid_start
    return record, running
