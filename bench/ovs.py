"""ovs-afxdp: Open vSwitch's userspace datapath with AF_XDP ports, the peer afxdp-loop is
compared with, on the same host and in the same run.

The same veths as afxdp-loop (generator -> ga/xa, xb/gb -> sink, gb's NAPI on the generator's
CPU), but xa and xb are `type=afxdp` ports of an OVS bridge with `datapath_type=netdev`, one
flow `in_port=xa,actions=output:xb`, and the PMD thread pinned to the relay's CPU.

OVS runs as a private instance: its own database, sockets and logs in a temporary directory,
and ovs-vswitchd inside the benchmark's namespace. That matters on a host that runs OVS itself:
at start ovs-vswitchd deletes every kernel datapath its database does not list, and kernel
datapaths are per namespace, so in a fresh namespace there is none to delete. The binaries come
from Debian's openvswitch-switch (3.1, built with AF_XDP), unpacked by `make bench` into
.venv/ovs without installing the package (no service starts), or from an installed OVS.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from xdpbr.loader.netns import netns_path, nsenter_prefix

from bench.afxdp import build_endpoint_veths
from bench.taps import RelayLoop
from bench.veth import SWITCH_CPU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNPACKED = os.path.join(ROOT, ".venv", "ovs")
BRIDGE = "brovs"


def binaries():
    """{name: path} of the OVS programs, from .venv/ovs or the system, or None."""
    places = {
        "ovsdb-tool": ["usr/bin"],
        "ovsdb-server": ["usr/sbin"],
        "ovs-vsctl": ["usr/bin"],
        "ovs-ofctl": ["usr/bin"],
        "ovs-vswitchd": ["usr/lib/openvswitch-switch", "usr/sbin"],
    }
    found = {}
    for name, dirs in places.items():
        candidates = [os.path.join(base, d, name) for base in (UNPACKED, "/") for d in dirs]
        path = next((c for c in candidates if os.access(c, os.X_OK)), None) or shutil.which(name)
        if not path:
            return None
        found[name] = path
    schema = [
        os.path.join(base, "usr/share/openvswitch/vswitch.ovsschema") for base in (UNPACKED, "/")
    ]  # fmt: skip
    found["schema"] = next((s for s in schema if os.path.exists(s)), None)
    return found if found["schema"] else None


def unavailable():
    """Why the OVS comparison cannot run here, or None."""
    if binaries() is None:
        return "Open vSwitch is not installed (`make bench` unpacks Debian's into .venv/ovs)"
    return None


class OvsAfxdpLoop(RelayLoop):
    """Kernel -> AF_XDP port xa -> OVS PMD thread -> AF_XDP port xb -> XDP sink."""

    name = "ovs-afxdp"
    SETTLE_S = 0.3
    # each sendto() of OVS 3.1 moves at most 32 of its TX ring's frames (copy mode), and it
    # calls sendto only when it has frames to send: what is left when the loop stops waits for
    # the next frames (seen as loss in one window, negative loss in the next)
    KICK_FRAMES = 8

    def __init__(self):
        self.bin = binaries()
        super().__init__("xdpbr-bench-ovs", programs=True)

    def _build(self):
        self.dir = tempfile.mkdtemp(prefix="xdpbr-bench-ovs-")
        self.undo.push(shutil.rmtree, self.dir, True)
        self.ns = self.lab.netns("ovs")
        build_endpoint_veths(self)  # as afxdp-loop's
        self._start_ovs()

    def _run(self, tool, *argv):
        env = dict(os.environ, OVS_RUNDIR=self.dir, OVS_LOGDIR=self.dir, OVS_DBDIR=self.dir)
        env["OVS_SYSCONFDIR"] = self.dir
        env["OVS_PKGDATADIR"] = os.path.dirname(self.bin["schema"])
        cmd = [*nsenter_prefix(netns_path(self.ns)), self.bin[tool], *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(argv)}: {res.stderr.strip()}")
        return res.stdout

    def _start_ovs(self):
        d, db = self.dir, f"unix:{self.dir}/db.sock"
        self._run("ovsdb-tool", "create", f"{d}/conf.db", self.bin["schema"])
        common = ["--detach", "--no-chdir"]
        self._run("ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/db.pid",
                  f"--log-file={d}/db.log", *common)  # fmt: skip
        self.undo.push(self._kill, f"{d}/db.pid")
        self._run("ovs-vsctl", f"--db={db}", "--no-wait", "init")
        self._run("ovs-vswitchd", db, f"--pidfile={d}/vswitchd.pid", f"--log-file={d}/vswitchd.log", *common)
        self.undo.push(self._kill, f"{d}/vswitchd.pid")
        mask = hex(1 << (SWITCH_CPU % os.cpu_count()))
        self._run("ovs-vsctl", f"--db={db}", "set", "Open_vSwitch", ".", f"other_config:pmd-cpu-mask={mask}",
                  "--", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")  # fmt: skip
        for port in ("xa", "xb"):  # native XDP, copy mode: all veth offers
            self._run("ovs-vsctl", f"--db={db}", "add-port", BRIDGE, port, "--", "set", "interface", port,
                      "type=afxdp", "options:xdp-mode=native")  # fmt: skip
        listing = self._run("ovs-vsctl", f"--db={db}", "--columns=error", "--bare", "list", "interface")
        if errors := listing.split():
            raise RuntimeError(f"OVS could not add its AF_XDP ports: {' '.join(errors)}")
        self._run("ovs-ofctl", "del-flows", BRIDGE)
        self._run("ovs-ofctl", "add-flow", BRIDGE, "in_port=xa,actions=output:xb")
        self._pause()

    def _vswitchd_pid(self):
        with open(f"{self.dir}/vswitchd.pid") as f:
            return int(f.read().strip())

    def _pause(self):
        """Its PMD thread busy-polls a whole CPU: stopped while the other paths are measured."""
        os.kill(self._vswitchd_pid(), signal.SIGSTOP)

    def measure(self, size, window, warmup=0.5):
        os.kill(self._vswitchd_pid(), signal.SIGCONT)
        try:
            return super().measure(size, window, warmup)
        finally:
            self._pause()

    @staticmethod
    def _kill(pidfile):
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGCONT)  # it may be paused
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def relay(self, deadline):
        """The relay is OVS's PMD thread; the child only waits out the window."""
        time.sleep(max(0.0, deadline - time.monotonic()))
        return 0
