"""Enter network namespaces with setns(2), never `ip netns exec` (which remounts /sys and hides
bpffs pins: docs/kernel-notes.md, "Namespaces"). Python 3.11 has no os.setns, so libc's is
called through ctypes.

setns changes the calling thread only; xdpbr's CLI and daemon do namespace work on one thread.

xdpbr itself may be started inside a namespace (`ip netns exec NS xdpbr ...`): `resolve()`
gives the name `ip netns identify` would, so the command does what `xdpbr -n NS` does from the
host, and `enter_host()` moves the daemon to the host's namespace. "The host" is pid 1, seen
through /proc/1 (`host_proc()`).
"""

import contextlib
import ctypes
import ctypes.util
import os
import socket

from .errors import NotFound, UsageError, XdpbrError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
SELF_NS = "/proc/thread-self/ns/{}"
# /proc entries that stand for the host: pid 1, and kthreadd where pid 1 is out of reach (a
# process with less privilege than pid 1, in some sandboxes and hardened units, is refused its
# /proc links); kthreadd lives in the initial namespaces and shares init's root (CLONE_FS).
HOST_PROCS = ("/proc/1", "/proc/2")
PF_KTHREAD = 0x00200000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_run_dir = NETNS_RUN_DIR  # the host's /run/netns where only it names this process's namespace


def netns_path(name):
    return os.path.join(_run_dir, name)


def check_name(name):
    """A namespace name becomes a path component (/run/netns/NAME, pin and socket names):
    refuse what would leave its directory."""
    if name is not None and (not name or "/" in name or name in (".", "..") or "\0" in name or "@" in name):
        raise UsageError(
            f"network namespace name {name!r} is not usable", fix="name one from `ip netns list`"
        )
    return name


def netns_exists(name):
    return os.path.exists(netns_path(check_name(name)))


def check_exists(name):
    """Raise NotFound for a namespace name `ip netns` does not know."""
    if name is not None and not netns_exists(name):
        raise NotFound(f'network namespace "{name}" does not exist', fix="see `ip netns list` for the names")


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise XdpbrError("cannot enter network namespace", errno=err)


@contextlib.contextmanager
def entered(name):
    """Run the body inside namespace `name` (None or "" = stay where we are)."""
    if not name:
        yield
        return
    check_exists(name)
    with entered_path(netns_path(name)):
        yield


@contextlib.contextmanager
def entered_path(path):
    """Run the body inside the namespace whose file is `path` (/run/netns/..., /proc/PID/ns/net)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        os.close(home)
        raise XdpbrError(f"cannot open network namespace {path}", errno=exc.errno) from None
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def interface_names(name, ifindexes):
    """{ifindex: ifname} of those that exist in namespace `name`. One ioctl each: a netlink
    dump of every link costs ~1 s of decoding on a host with 1,000 ports."""
    names = {}
    with entered(name):
        for ifindex in ifindexes:
            try:
                names[ifindex] = socket.if_indextoname(ifindex)
            except OSError:
                continue  # gone meanwhile
    return names


def interface_index(name, ifname):
    """The ifindex of `ifname` in namespace `name`, or None when there is no such interface."""
    with entered(name):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            return None


def existing_index(name, ifname):
    """The ifindex of `ifname` in namespace `name`, which must exist (one that xdpbr made or
    checked a moment ago); NotFound naming it otherwise."""
    index = interface_index(name, ifname)
    if index is None:
        where = f' in network namespace "{name}"' if name else ""
        raise NotFound(f"interface {ifname} does not exist{where}")
    return index


def current_inode():
    return os.stat("/proc/thread-self/ns/net").st_ino


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _kernel_thread(proc):
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            text = f.read()
        return bool(int(text[text.rindex(b")") + 2 :].split()[6]) & PF_KTHREAD)
    except (OSError, ValueError, IndexError):
        return False


def host_proc(candidates=HOST_PROCS):
    """The /proc/PID directory that stands for the host (its namespaces, its root), or None where
    this process may look into none of them. Candidates after the first count only as a kernel
    thread (in a pid namespace of its own, pid 2 is just another process)."""
    for i, proc in enumerate(candidates):
        if i and not _kernel_thread(proc):
            continue
        try:
            os.stat(os.path.join(proc, "ns", "net"))
            os.stat(os.path.join(proc, "root", ""))
        except OSError:
            continue
        return proc
    return None


def in_host_namespace(kind="net", proc=None, ns_file=None):
    """Whether this thread (or `ns_file`) is in the host's namespace of `kind` (net, mnt). True
    where no host process can be looked at: xdpbr then does what it always did."""
    proc = proc or host_proc()
    if proc is None:
        return True
    try:
        return _identity(ns_file or SELF_NS.format(kind)) == _identity(os.path.join(proc, "ns", kind))
    except OSError:
        return True


def _run_dirs(proc=None):
    """/run/netns, and the host's when this mount namespace has another (through /proc/1/root)."""
    dirs = [NETNS_RUN_DIR]
    proc = proc or host_proc()
    if proc is not None:
        host = os.path.join(proc, "root", NETNS_RUN_DIR.lstrip("/"))
        try:
            same = _identity(host) == _identity(NETNS_RUN_DIR)
        except OSError:
            same = not os.path.isdir(host)
        if not same:
            dirs.append(host)
    return dirs


def identify(ns_file=None, run_dirs=None):
    """(name, directory) of the namespace at `ns_file` (this thread's), found as `ip netns
    identify` finds it: the entry of /run/netns (or of the host's) that is the same namespace
    file (device and inode). None when it has no name; the first name, sorted, when it has more."""
    target = _identity(ns_file or SELF_NS.format("net"))
    for directory in _run_dirs() if run_dirs is None else run_dirs:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if _identity(os.path.join(directory, entry)) == target:
                    return entry, directory
            except OSError:
                continue
    return None


def resolve(name):
    """The namespace a command means. `name` (-n) when given; None in the host's network
    namespace, as always; inside another (`ip netns exec NS`, nsenter) that namespace's name,
    so the command does exactly what `xdpbr -n NS` does from the host (the bridge's label, its
    pins, the daemon's adoption). A namespace without a name: XdpbrError naming `xdpbr -n NS`."""
    global _run_dir
    if name is not None or in_host_namespace():
        return name
    found = identify()
    if found is None:
        raise XdpbrError(
            "this network namespace is not the host's and has no name in /run/netns, so the "
            "daemon and later commands could not find its bridges",
            fix="run `xdpbr -n NS ...` from the host, NS a name from `ip netns list`",
        )
    name, _run_dir = found
    return name


def enter_host():
    """Move this thread into the host's network namespace (the daemon, before it starts any
    other thread: it serves every namespace's bridges from there, those attached without -n
    being the host's). Nothing to do in the host's own or where the host cannot be looked at."""
    if in_host_namespace():
        return
    with open(os.path.join(host_proc(), "ns", "net"), "rb") as f:
        _setns(f.fileno())


def nsenter_prefix(path):
    """argv prefix that runs a tool inside the namespace at `path` (a /run/netns or /proc file)."""
    return ["nsenter", f"--net={path}", "--"]


class KeptFiles:
    """Files and sockets opened inside one network namespace and kept open. An open /proc/net or
    /proc/sys/net file, like a socket, stays bound to the namespace it was opened in, so reading
    it again needs neither setns (~20 us) nor open (~20 us a file): most of what a daemon's poll
    of many namespaces costs besides the kernel's own work. The namespace is entered only to
    open what is not open yet (a file that did not exist: a module loaded since). A name whose
    namespace was deleted and made again gets fresh files (`check`)."""

    def __init__(self, name):
        self.name = check_name(name)
        self.files = {}  # path -> open file
        self.sockets = {}  # (family, type, proto) -> socket
        self.identity = self._identity()

    def _identity(self):
        if not self.name:
            return None
        try:
            st = os.stat(netns_path(self.name))
        except FileNotFoundError:
            return None  # check() says so
        return (st.st_dev, st.st_ino)

    def check(self):
        """Drop everything when the name now means another namespace; raise NotFound when it
        means none."""
        check_exists(self.name)
        identity = self._identity()
        if identity != self.identity:
            self.close()
            self.identity = identity

    def read(self, path):
        """The text of `path` inside the namespace, or None where it does not exist."""
        kept = self.files.get(path)
        if kept is not None:
            try:
                kept.seek(0)
                return kept.read()
            except OSError:  # its module went away: open it again, or find it gone
                self.files.pop(path).close()
        try:
            with entered(self.name):
                kept = open(path)  # noqa: SIM115 - kept open on purpose
        except FileNotFoundError:
            return None
        self.files[path] = kept
        return kept.read()

    def socket(self, family, type_, proto):
        key = (family, type_, proto)
        if key not in self.sockets:
            with entered(self.name):
                self.sockets[key] = socket.socket(family, type_, proto)
        return self.sockets[key]

    def close(self):
        for kept in [*self.files.values(), *self.sockets.values()]:
            kept.close()
        self.files.clear()
        self.sockets.clear()


def bridge_nf(name, kept=None):
    """br_netfilter's `bridge-nf-NAME` sysctl (call-iptables, filter-vlan-tagged, ...) of the
    namespace the thread is in, or of `kept`'s (a KeptFiles). Absent: br_netfilter is not
    loaded, so off. /proc/sys/net answers for the opening thread's namespace; br_netfilter's
    sysctls are per namespace."""
    path = f"/proc/sys/net/bridge/bridge-nf-{name}"
    if kept is not None:
        return (kept.read(path) or "").strip() == "1"
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def bridge_nf_call(family, kept=None):
    """`bridge-nf-call-FAMILY` (iptables, ip6tables, arptables): does the bridge call that family?"""
    return bridge_nf(f"call-{family}", kept)
