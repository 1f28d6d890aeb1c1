"""VLAN-aware forwarding through a real vlan_filtering bridge.

The decisions themselves (PVID, membership, tag push/pop, QinQ) are covered on crafted frames
in test_datapath.py; this runs them end to end where the kernel can filter VLANs at all.
"""

import subprocess

import pytest
from xdpbr.control.datapath import attachment, state

from testbed.lab import Lab


def _kernel_filters_vlans():
    with Lab(prefix="xdpbr-t-probe") as lab:
        lab.make_bridge()
        res = subprocess.run(
            ["ip", "-n", lab.switch, "link", "set", "br0", "type", "bridge", "vlan_filtering", "1"],
            capture_output=True,
            text=True,
        )
        return res.returncode == 0, res.stderr.strip()


@pytest.fixture(scope="module")
def vlan_support():
    ok, why = _kernel_filters_vlans()
    if not ok:
        pytest.skip(f"this kernel cannot filter VLANs on a bridge (CONFIG_BRIDGE_VLAN_FILTERING): {why}")


@pytest.mark.root
def test_access_ports_in_one_vlan_are_fast_pathed_and_other_vlans_are_not_reached(vlan_support, lab):
    lab.make_bridge()
    c1, c2, c3 = lab.container("c1"), lab.container("c2"), lab.container("c3")
    lab.in_switch("ip", "link", "set", "br0", "type", "bridge", "vlan_filtering", "1")
    for host, vid in ((c1, 10), (c2, 10), (c3, 20)):
        lab.in_switch("bridge", "vlan", "del", "dev", host.port, "vid", "1")
        lab.in_switch("bridge", "vlan", "add", "dev", host.port, "vid", str(vid), "pvid", "untagged")
    lab.wait_forwarding()
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert c1.ping(c2.ip, count=3)
    assert not c1.ping(c3.ip, count=1), "a port in another VLAN must stay unreachable"
    rows = {(r["port"], r["reason"]): r["packets"] for r in state.stats(lab.bridge, lab.switch)}
    assert rows.get((c1.port, "forward"), 0) >= 2
    ports = {p["port"]: p for p in state.show(lab.bridge, lab.switch)[0]["ports"]}
    assert ports[c1.port]["pvid"] == 10 and ports[c3.port]["pvid"] == 20
