"""xdpbr started inside a namespace (`ip netns exec NS xdpbr ...`) does what `xdpbr -n NS` does
from the host: its pins go to the host's bpffs (`ip netns exec` remounts /sys, and a bpffs
mounted there vanishes with the command), the bridge is labelled with the namespace's name
(found as `ip netns identify` finds it), a daemon started the same way adopts it, and an unnamed
namespace is refused in one line. The lookups themselves are tested on files, without root."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
from conftest import DaemonProcess  # READY=1, the record, settled(), stop(): only the command differs
from xdpbr.control.datapath import state
from xdpbr.loader import instance, netns, pins
from xdpbr.loader.bridge_id import BridgeId
from xdpbr.loader.errors import XdpbrError

from tests.helpers import ROOT, WAIT_S, wait_for, xdpbr

CLI = [sys.executable, "-m", "xdpbr.control.cli"]  # this checkout's, as tests.helpers.xdpbr runs it


def in_netns(name, *argv):
    """`ip netns exec NAME xdpbr ARGV` (the test instance comes with the environment)."""
    return subprocess.run(
        ["ip", "netns", "exec", name, *CLI, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


class DaemonInNetns(DaemonProcess):
    """`ip netns exec NETNS xdpbr daemon`, waited for as the conftest daemon is."""

    def __init__(self, name):
        self._dir = tempfile.mkdtemp(prefix="xdpbr-t-notify-")
        notify_path = os.path.join(self._dir, "notify")  # a path: reachable from any namespace
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.messages = []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", name, *CLI, "daemon"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NOTIFY_SOCKET": notify_path},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        finally:
            self._close_notify()


@pytest.fixture
def netns_daemon():
    started = []

    def start(name):
        started.append(DaemonInNetns(name))
        return started[-1]

    yield start
    for d in started:
        d.stop()


def ports(lab):
    return {p["port"]: p["mode"] for b in state.show(lab.bridge, lab.switch) for p in b["ports"]}


@pytest.mark.root
def test_ip_netns_exec_pins_into_the_hosts_bpffs_as_dash_n_does(two_containers):
    lab = two_containers
    res = in_netns(lab.switch, "-j", "attach", "br0", "--mode", "tc")
    assert res.returncode == 0, res.stderr
    [shown] = json.loads(res.stdout)
    assert (shown["bridge"], shown["netns"], shown["fast_path_active"]) == ("br0", lab.switch, True)
    # the host's bpffs, under the test instance's root, at the path `-n` uses
    directory = BridgeId("br0", lab.switch).pin_dir
    assert directory == os.path.join("/sys/fs/bpf", f"xdpbr-{instance.name()}", f"br0@{lab.switch}")
    assert {"xdpbr_fdb", "xdpbr_ports", "prog_tc"} <= set(os.listdir(directory))

    from_host = xdpbr("-j", "-n", lab.switch, "show")
    assert from_host.returncode == 0, from_host.stderr
    [seen] = json.loads(from_host.stdout)
    assert (seen["bridge"], seen["netns"], seen["fast_path_active"]) == ("br0", lab.switch, True)
    assert [p["port"] for p in seen["ports"]] == [lab.c1.port, lab.c2.port]
    inside = in_netns(lab.switch, "-j", "show")
    assert inside.returncode == 0, inside.stderr
    assert [(b["bridge"], b["netns"]) for b in json.loads(inside.stdout)] == [("br0", lab.switch)]

    res = in_netns(lab.switch, "detach", "br0")
    assert (res.returncode, res.stderr) == (0, "")
    assert not os.path.exists(directory)
    assert json.loads(xdpbr("-j", "-n", lab.switch, "show").stdout) == []


@pytest.mark.root
def test_a_daemon_under_ip_netns_exec_adopts_the_bridge_and_a_port_that_joins_later(lab, netns_daemon):
    lab.make_bridge()
    lab.c1 = lab.container("c1")
    lab.wait_forwarding()
    res = in_netns(lab.switch, "attach", "br0")
    assert res.returncode == 0, res.stderr
    d = netns_daemon(lab.switch)
    assert d.settled().bridges == 1
    # it serves every namespace's bridges from the host's network namespace
    assert os.stat(f"/proc/{d.proc.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino

    lab.c2 = lab.container("c2")  # hot-plugged: a veth in `auto` gets tc
    assert wait_for(lambda: ports(lab).get(lab.c2.port) == "tc", timeout=WAIT_S), ports(lab)
    assert ports(lab) == {lab.c1.port: "tc", lab.c2.port: "tc"}
    stderr = d.stop()
    assert "not attached" not in stderr, stderr


@pytest.mark.root
def test_an_unnamed_namespace_is_refused_in_one_line_and_nothing_is_pinned():
    root = instance.bpf_root()
    before = sorted(os.listdir(root)) if os.path.isdir(root) else []
    script = "ip link add br0 type bridge && ip link set br0 up && exec " + " ".join(CLI) + " attach br0"
    res = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 1
    assert res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith("xdpbr: this network namespace is not the host's and has no name")
    assert "`xdpbr -n NS ...`" in line
    assert (sorted(os.listdir(root)) if os.path.isdir(root) else []) == before


# The lookups, on files: a hard link has the device and inode of its target, as a /run/netns
# bind mount has those of the namespace.


def test_identify_finds_the_name_whose_file_is_the_namespace(tmp_path):
    ns = tmp_path / "self_ns"
    ns.write_text("")
    local, host = tmp_path / "run_netns", tmp_path / "host_run_netns"
    local.mkdir()
    host.mkdir()
    (local / "other").write_text("")
    assert netns.identify(str(ns), [str(local), str(host)]) is None
    os.link(ns, host / "tenant")
    assert netns.identify(str(ns), [str(local), str(host)]) == ("tenant", str(host))
    os.link(ns, local / "blue")
    os.link(ns, local / "alpha")
    assert netns.identify(str(ns), [str(local), str(host), str(tmp_path / "missing")]) == (
        "alpha",
        str(local),
    )


def fake_proc(directory, net, kernel_thread=False):
    """A /proc/PID stand-in: ns/net (a hard link of `net`), root, and stat's flags field."""
    os.makedirs(os.path.join(directory, "ns"))
    os.link(net, os.path.join(directory, "ns", "net"))
    os.makedirs(os.path.join(directory, "root"))
    flags = netns.PF_KTHREAD if kernel_thread else 0
    with open(os.path.join(directory, "stat"), "w") as f:
        f.write(f"2 (kthreadd) S 0 0 0 0 -1 {flags} 0 0\n")
    return directory


def test_the_host_is_pid_1_or_kthreadd_where_pid_1_is_out_of_reach(tmp_path):
    host_ns, other_ns = tmp_path / "host_ns", tmp_path / "other_ns"
    host_ns.write_text("")
    other_ns.write_text("")
    init = fake_proc(str(tmp_path / "1"), host_ns)
    kthreadd = fake_proc(str(tmp_path / "2"), host_ns, kernel_thread=True)
    unreachable = str(tmp_path / "none")
    assert netns.host_proc((init, kthreadd)) == init
    assert netns.host_proc((unreachable, kthreadd)) == kthreadd
    assert netns.host_proc((unreachable, fake_proc(str(tmp_path / "p2"), host_ns))) is None  # not a kthread

    assert netns.in_host_namespace(proc=init, ns_file=str(host_ns))
    assert not netns.in_host_namespace(proc=init, ns_file=str(other_ns))
    assert netns.in_host_namespace(proc=unreachable, ns_file=str(other_ns))  # cannot tell: as always


def test_resolve_keeps_an_explicit_name_and_the_hosts_namespace_unnamed():
    assert netns.resolve("tenant") == "tenant"  # -n wins, nothing looked up
    if netns.in_host_namespace():
        assert netns.resolve(None) is None


def test_the_bpffs_is_the_hosts_where_this_one_is_another(tmp_path):
    local, host = tmp_path / "local", tmp_path / "host"
    local.mkdir()
    host.mkdir()
    # the same file system: the host's own (as `pins.ensure_bpffs` finds it, mounted or not)
    assert instance.find_bpffs(str(local), str(host)) == str(local)
    # no host root to look at: what xdpbr always did
    assert instance.find_bpffs(str(local), str(tmp_path / "missing")) == str(local)
    # another file system where the host's is no bpffs: refused, naming `xdpbr -n NS`
    other = tempfile.mkdtemp(dir="/dev/shm") if os.path.isdir("/dev/shm") else None
    if other is None or os.stat(other).st_dev == os.stat(local).st_dev:
        pytest.skip("no second file system to stand in for a remounted /sys")
    try:
        with pytest.raises(XdpbrError, match=r"would vanish.*`xdpbr -n NS \.\.\.`"):
            instance.find_bpffs(other, str(host))
        if instance.is_bpffs(pins.BPFFS):  # a real bpffs as the host's: its path is used
            assert instance.find_bpffs(other, pins.BPFFS) == pins.BPFFS
    finally:
        shutil.rmtree(other)
    assert not instance.is_bpffs(str(local))
