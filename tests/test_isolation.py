"""Runs of the demo and the benchmark leave another xdpbr instance on the host alone.

The "production" here is an instance of its own (`prod-<hex>`), set up entirely through the
CLI as an operator would: a bridge attached, an AF_XDP endpoint, its daemon running, its broker
socket answering. The demo and the hotplug benchmark (set-up, measurement and teardown) then
run beside it; afterwards its pins, program ids, broker socket and daemon are as they were.
"""

import contextlib
import json
import os
import secrets
import subprocess
import sys

import pytest
from xdpbr.control.endpoints import client as broker
from xdpbr.loader import bpfsys, instance, pins, tcx

from tests.helpers import ROOT, remove_instance_state


@contextlib.contextmanager
def selected(name):
    """Paths of instance `name` while inside (this process only)."""
    old = instance.name()
    instance.select(name)
    try:
        yield
    finally:
        instance.select(old)


def xdpbr(name, *argv, timeout=300):
    res = subprocess.run(
        [sys.executable, "-m", "xdpbr.control.cli", "--instance", name, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def tc_programs(netns, ifindex):
    """The TC programs on a port: its TCX programs and its ingress filters' programs."""
    ingress, _ = tcx.programs(netns, [ifindex])[ifindex]
    return sorted(str(i) for i in ingress)


def snapshot(lab, name):
    """What a run beside the instance could disturb."""
    with selected(name):
        root, sock = instance.bpf_root(), broker.socket_path(lab.bridge, lab.switch)
        prog_ids = {}
        for parent, _, files in os.walk(root):
            for f in files:
                if f.startswith("prog_"):
                    fd = bpfsys.obj_get(os.path.join(parent, f))
                    prog_ids[f] = bpfsys.prog_info(fd).id
                    os.close(fd)
        reply, fds = broker.request(sock, "vmp")
        for fd in fds:
            os.close(fd)
        links = json.loads(subprocess.check_output(["ip", "-n", lab.switch, "-j", "-d", "link", "show"]))
        return {
            "pins": sorted(
                os.path.relpath(os.path.join(p, f), root) for p, _, fs in os.walk(root) for f in fs
            ),
            "prog_ids": prog_ids,
            "port_xdp": {link["ifname"]: link.get("xdp", {}).get("prog", {}).get("id") for link in links},
            "port_tc": {link["ifname"]: tc_programs(lab.switch, link["ifindex"]) for link in links},
            "socket_inode": os.stat(sock).st_ino,
            "broker_ok": reply.get("ok"),
            "attached": pins.attached_bridges(),
        }


@pytest.mark.root
def test_the_demo_and_the_hotplug_bench_leave_a_production_instance_untouched(
    two_containers, daemon, tmp_path
):
    lab, prod = two_containers, f"prod-{secrets.token_hex(3)}"
    try:
        xdpbr(prod, "-n", lab.switch, "endpoint", "add", lab.bridge, "vmp", "--afxdp")
        xdpbr(prod, "-n", lab.switch, "attach", lab.bridge, "--mode", "xdp+tc")
        production = daemon(env={"XDPBR_INSTANCE": prod})
        before = snapshot(lab, prod)
        assert before["broker_ok"] and before["prog_ids"] and before["attached"]
        assert all(before["port_xdp"][p] and before["port_tc"][p] for p in (lab.c1.port, lab.c2.port))

        demo = subprocess.run(
            [sys.executable, "-m", "testbed.demo"], capture_output=True, text=True, cwd=ROOT, timeout=600
        )
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
        bench = subprocess.run(
            [sys.executable, "-m", "xdpbr.control.cli", "bench", "hotplug", "--png", str(tmp_path / "b.png")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        assert bench.returncode == 0, bench.stderr[-2000:]

        assert production.proc.poll() is None, "the production daemon was stopped"
        assert snapshot(lab, prod) == before
    finally:
        if "production" in locals():
            production.stop()
        for argv in (["endpoint", "del", lab.bridge, "vmp"], ["detach", lab.bridge]):
            subprocess.run(
                [sys.executable, "-m", "xdpbr.control.cli", "--instance", prod, "-n", lab.switch, *argv],
                capture_output=True,
                cwd=ROOT,
                check=False,
            )
        with selected(prod):
            remove_instance_state()
