"""A bridge's maps sized at attach (-DXDPBR_MAX_PORTS, -DXDPBR_FDB_SIZE through --max-ports and
--fdb-size): the pins have that capacity, the fast path forwards, a re-attach keeps the sizes,
and a change of size is an upgrade that rebuilds those maps from the kernel."""

import json
import os

import pytest
from xdpbr.control.datapath import state
from xdpbr.loader import bpfsys, pins

from tests.helpers import xdpbr


def capacity(lab, name):
    fd = bpfsys.obj_get(os.path.join(pins.pin_dir(lab.bridge, lab.switch), name))
    try:
        return bpfsys.map_info(fd).max_entries
    finally:
        os.close(fd)


def forwarded(lab):
    assert lab.c1.ping(lab.c2.ip, count=3)
    return state.forwarded(lab.bridge, lab.switch, lab.c1.port)


@pytest.mark.root
def test_a_bridge_attached_at_a_non_default_size_forwards_and_keeps_its_size(two_containers):
    lab = two_containers
    res = xdpbr(
        "-n", lab.switch, "attach", lab.bridge, "--mode", "tc", "--max-ports", "64", "--fdb-size", "512"
    )
    assert res.returncode == 0, res.stderr
    assert (capacity(lab, "xdpbr_ports"), capacity(lab, "xdpbr_fdb")) == (64, 512)
    assert capacity(lab, "xdpbr_stats") == 64 * 2 * 32
    assert forwarded(lab) > 0

    res = xdpbr("-n", lab.switch, "attach", lab.bridge, "--mode", "tc")  # sizes left out: kept
    assert res.returncode == 0, res.stderr
    assert (capacity(lab, "xdpbr_ports"), capacity(lab, "xdpbr_fdb")) == (64, 512)

    before = forwarded(lab)
    res = xdpbr("-j", "-n", lab.switch, "attach", lab.bridge, "--mode", "tc", "--max-ports", "128")
    assert res.returncode == 0, res.stderr
    assert (capacity(lab, "xdpbr_ports"), capacity(lab, "xdpbr_fdb")) == (128, 512)
    [shown] = json.loads(res.stdout)
    assert [p["port"] for p in shown["ports"]] == [lab.c1.port, lab.c2.port]  # rebuilt from the kernel
    assert forwarded(lab) > 0, "no fast path after the resize"
    assert before > 0


@pytest.mark.parametrize(
    "option, value", [("--max-ports", "4"), ("--max-ports", "5000"), ("--fdb-size", "1")]
)
def test_sizes_outside_their_range_are_usage_errors(option, value):
    res = xdpbr("attach", "br0", option, value)
    assert res.returncode == 2 and "expected" in res.stderr and len(res.stderr.splitlines()) == 1
