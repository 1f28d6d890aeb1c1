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
"""

import os
import re

from .errors import UsageError

ENV = "XDPBR_INSTANCE"
BPFFS = "/sys/fs/bpf"
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


def bpf_root():
    return os.path.join(BPFFS, f"xdpbr{_suffix()}")


def daemon_record_pin():
    """The daemon's own record (struct xdpbr_daemon): a file beside the bridges' directories."""
    return os.path.join(bpf_root(), "xdpbr_daemon")


def endpoint_pin_root():
    return os.path.join(BPFFS, f"xdpbr-endpoints{_suffix()}")


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
