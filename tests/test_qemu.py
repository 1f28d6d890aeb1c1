"""`xdpbr endpoint qemu-args` writes for the QEMU at hand, and `xdpbr endpoint launch` starts it.

Pure tests: the recipes for QEMU 10.1 (map-path=), 9.0 (the launcher with sock-fds=) and 7.2
(no af-xdp: the TAP endpoint instead), through the CLI with --qemu-version and an endpoint
record in a temporary directory. The root test runs the printed launcher against a real
daemon's broker, with a stand-in for QEMU that checks the fds it receives.
"""

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest
from xdpbr.control.cli import main as cli
from xdpbr.control.endpoints import lifecycle as endpoints
from xdpbr.control.endpoints import qemu
from xdpbr.loader import instance
from xdpbr.loader.errors import UsageError, XdpbrError

AFXDP = {
    "bridge": "br0",
    "netns": None,
    "name": "vm1",
    "path": "afxdp",
    "why": "requested",
    "ifname": "vm1",
    "port": "vm1-p",
    "mac": "52:54:00:12:34:56",
    "queues": 2,
    "owner": 0,
    "group": 0,
    "pins": "/sys/fs/bpf/xdpbr-endpoints/br0/vm1",
}
TAP = dict(AFXDP, name="vm2", ifname="vm2", port="vm2", path="tap", queues=1, pins=None, mac=None)
DEVICE = "-device virtio-net-pci,netdev=vm1,mac=52:54:00:12:34:56"


@pytest.fixture
def records(tmp_path, monkeypatch):
    """Endpoint records where `xdpbr endpoint qemu-args` reads them, and a CLI that runs as if
    root (these commands only read the records)."""
    monkeypatch.setattr(endpoints, "record_root", lambda: str(tmp_path))
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.delenv(instance.ENV, raising=False)  # the host's own instance: no --instance
    os.makedirs(tmp_path / "br0")
    for rec in (AFXDP, TAP):
        (tmp_path / "br0" / f"{rec['name']}.json").write_text(json.dumps(rec))
    return tmp_path


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_qemu_10_1_and_later_gets_the_pinned_xskmap_in_one_line(records, capsys):
    code, out, err = run_cli(capsys, "endpoint", "qemu-args", "br0", "vm1", "--qemu-version", "10.1")
    assert (code, err) == (0, "")
    assert out == (
        "-netdev af-xdp,id=vm1,ifname=vm1,inhibit=on,queues=2,"
        f"map-path=/sys/fs/bpf/xdpbr-endpoints/br0/vm1/xsks {DEVICE}\n"
    )


def test_qemu_8_2_to_10_0_gets_a_launcher_that_fills_in_sock_fds(records, capsys):
    code, out, err = run_cli(capsys, "endpoint", "qemu-args", "vm1", "--qemu-version", "9.0")
    assert (code, err) == (0, "")
    comment, command = out.splitlines()
    assert comment.startswith("# QEMU 9.0 takes AF_XDP sockets from its caller (sock-fds=)")
    assert command == (
        "xdpbr endpoint launch br0 vm1 -- qemu-system-x86_64 -netdev "
        f"af-xdp,id=vm1,ifname=vm1,inhibit=on,queues=2,sock-fds=@FDS@ {DEVICE}"
    )
    for edge in ("8.2", "10.0"):
        assert qemu.recipe(AFXDP, qemu.parse_version(edge))["form"] == "sock-fds"


def test_qemu_before_8_2_is_told_af_xdp_needs_8_2_and_offered_the_tap_endpoint(records, capsys):
    code, out, err = run_cli(capsys, "endpoint", "qemu-args", "br0", "vm1", "--qemu-version", "7.2")
    assert (code, out) == (1, "")
    assert err == (
        "xdpbr: af-xdp needs QEMU 8.2 or later, this is QEMU 7.2; use a TAP endpoint: "
        "`xdpbr endpoint del br0 vm1` then `xdpbr endpoint add br0 vm1 --tap`\n"
    )


def test_the_recipe_in_json_names_its_form(records, capsys):
    code, out, _ = run_cli(capsys, "-j", "endpoint", "qemu-args", "vm1", "--qemu-version", "9.2")
    doc = json.loads(out)
    assert (code, doc["form"], doc["qemu_version"]) == (0, "sock-fds", "9.2")
    assert doc["launch"][:6] == ["xdpbr", "endpoint", "launch", "br0", "vm1", "--"]


def test_a_tap_endpoint_gets_vhost_only_where_dev_vhost_net_exists(records, capsys):
    assert qemu.recipe(TAP, vhost_net=False)["args"] == [
        "-netdev",
        "tap,id=vm2,ifname=vm2,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=vm2",
    ]
    assert qemu.recipe(TAP, vhost_net=True)["args"][1].endswith(",vhost=on")
    code, out, _ = run_cli(capsys, "endpoint", "qemu-args", "vm2")  # no QEMU needed for a TAP
    assert code == 0
    assert ("vhost=on" in out) == os.path.exists("/dev/vhost-net")


def test_the_version_comes_from_the_installed_qemu(tmp_path):
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)'\n")
    fake.chmod(0o755)
    assert qemu.version(str(fake)) == (7, 2)
    assert qemu.parse_version("10.1.2") == (10, 1)
    with pytest.raises(XdpbrError, match=r"^/nonexistent/qemu not found; install QEMU, or give --qemu PATH"):
        qemu.version("/nonexistent/qemu")
    with pytest.raises(UsageError, match="expected X.Y"):
        qemu.version(qemu_version="nine")


def test_launch_refuses_a_command_without_the_fd_placeholder():
    with pytest.raises(UsageError, match="no @FDS@ in the QEMU command"):
        qemu.launch("br0", None, "vm1", ["qemu-system-x86_64", "-netdev", "af-xdp,id=n0"])


# --- against a running daemon's broker -----------------------------------------------------

STAND_IN = r"""
import ctypes, json, os, re, socket, sys

if sys.argv[1:] == ["--version"]:
    print("QEMU emulator version 9.2.0 (a stand-in for tests/test_qemu.py)")
    sys.exit(0)
args = " ".join(sys.argv[1:])
queues = int(re.search(r"af-xdp,.*queues=(\d+)", args).group(1))
fds = [int(fd) for fd in re.search(r"sock-fds=([0-9:]+)", args).group(1).split(":")]
libc = ctypes.CDLL(None, use_errno=True)
domains = []
for fd in fds:  # getsockopt(2) itself: Python's socket() calls getsockname, which AF_XDP refuses
    value, size = ctypes.c_int(), ctypes.c_uint(4)
    if libc.getsockopt(fd, socket.SOL_SOCKET, socket.SO_DOMAIN, ctypes.byref(value), ctypes.byref(size)):
        sys.exit(f"fd {fd}: {os.strerror(ctypes.get_errno())}")
    domains.append(value.value)
report = {"queues": queues, "fds": fds, "domains": domains, "netns": os.stat("/proc/self/ns/net").st_ino}
print(json.dumps(report))
sys.exit(0 if len(fds) == queues and set(domains) == {44} else 3)
"""


@pytest.mark.root
def test_the_printed_launcher_hands_qemu_one_af_xdp_socket_per_queue(two_containers, daemon, tmp_path):
    from xdpbr.control.endpoints.client import socket_path

    from tests.helpers import ROOT, accelerate, wait_for, xdpbr

    lab = two_containers
    endpoints.add(lab.bridge, lab.switch, "vm1", mac=AFXDP["mac"], queues=2)
    try:
        accelerate(lab, daemon)
        assert wait_for(lambda: os.path.exists(socket_path(lab.bridge, lab.switch)), timeout=5)
        stand_in = tmp_path / "qemu-system-x86_64"
        stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

        res = xdpbr("-n", lab.switch, "endpoint", "qemu-args", lab.bridge, "vm1", "--qemu", str(stand_in))
        assert res.returncode == 0, res.stderr
        command = shlex.split(res.stdout.splitlines()[-1])
        assert command[command.index("--") + 1] == str(stand_in)
        if command[0] == "xdpbr":  # on PATH: run this checkout's
            command[0:1] = [sys.executable, "-m", "xdpbr.control.cli"]
        started = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert started.returncode == 0, started.stdout + started.stderr
        report = json.loads(started.stdout)
        assert report["queues"] == 2 and len(report["fds"]) == 2
        assert report["domains"] == [44, 44], "AF_XDP sockets (SO_DOMAIN 44)"
        # QEMU looks the interface up by name: the launcher started it in the endpoint's namespace
        assert report["netns"] == os.stat(f"/run/netns/{lab.switch}").st_ino

        # someone the broker's socket does not admit gets one line, and no QEMU starts
        refused = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.startswith("xdpbr: cannot reach the broker at ")
        assert len(refused.stderr.splitlines()) == 1
    finally:
        endpoints.delete(lab.bridge, lab.switch, "vm1")
