"""xdpbr never touches another tool's XDP program, qdisc or filter; re-attaching replaces its
own programs in place; writers are serialised."""

import subprocess

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.loader import tcx
from xdpbr.loader.errors import XdpbrError
from xdpbr.loader.lock import writer_lock

from testbed.trafficgen import BenchPrograms, attach_program


@pytest.fixture
def foreign():
    programs = BenchPrograms()  # its `sink` program plays another tool's XDP program
    yield programs
    programs.close()


def xdp_prog_name(lab, port):
    out = subprocess.run(
        ["ip", "-n", lab.switch, "link", "show", port], capture_output=True, text=True
    ).stdout
    return out.split(" name ")[1].split()[0] if " name " in out else None


@pytest.mark.root
def test_another_tools_xdp_program_is_left_alone(two_containers, foreign):
    lab = two_containers
    detach_foreign = attach_program(lab.switch, lab.c1.port, foreign.sink.fd)
    try:
        with pytest.raises(XdpbrError, match=f"{lab.c1.port} already runs another XDP program"):
            attachment.attach(lab.bridge, lab.switch, mode="xdp")
        assert xdp_prog_name(lab, lab.c1.port) == "sink"
        assert xdp_prog_name(lab, lab.c2.port) is None, "the failed attach must roll back the other port"
        # auto keeps the port accelerated with TC and says why
        subprocess.run(["ip", "-n", lab.switch, "link", "set", lab.c2.port, "type", "veth"], check=False)
        attachment.attach(lab.bridge, lab.switch)
        ports = {p["port"]: p for p in state.show(lab.bridge, lab.switch)[0]["ports"]}
        assert (ports[lab.c1.port]["mode"], ports[lab.c1.port]["why"]) == ("tc", "auto")
        attachment.detach(lab.bridge, lab.switch)
        assert xdp_prog_name(lab, lab.c1.port) == "sink", "detach must not remove another tool's program"
    finally:
        detach_foreign()


@pytest.mark.root
def test_another_tools_tc_filter_and_qdisc_survive_detach(two_containers):
    lab = two_containers
    sw = ["tc", "-n", lab.switch]
    subprocess.run([*sw, "qdisc", "add", "dev", lab.c1.port, "clsact"], check=True)
    subprocess.run(
        [
            *sw,
            "filter",
            "add",
            "dev",
            lab.c1.port,
            "ingress",
            "pref",
            "10",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "classid",
            "1:1",
        ],
        check=True,
    )
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    assert lab.c1.ping(lab.c2.ip)
    attachment.detach(lab.bridge, lab.switch)
    filters = subprocess.run(
        [*sw, "filter", "show", "dev", lab.c1.port, "ingress"], capture_output=True, text=True
    ).stdout
    assert "u32" in filters and "xdpbr" not in filters
    qdiscs = subprocess.run([*sw, "qdisc", "show", "dev", lab.c1.port], capture_output=True, text=True).stdout
    assert "clsact" in qdiscs, "a qdisc xdpbr did not create stays"
    qdiscs = subprocess.run([*sw, "qdisc", "show", "dev", lab.c2.port], capture_output=True, text=True).stdout
    assert "clsact" not in qdiscs, "the qdisc xdpbr created goes"


@pytest.mark.root
def test_reattach_replaces_the_programs_while_traffic_flows(two_containers):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp+tc")
    first = state.show(lab.bridge, lab.switch)[0]
    attachment.attach(lab.bridge, lab.switch, mode="xdp+tc")
    second = state.show(lab.bridge, lab.switch)[0]
    assert second["xdp_prog_id"] != first["xdp_prog_id"] and second["tc_prog_id"] != first["tc_prog_id"]
    assert {p["xdp_prog_id"] for p in second["ports"]} == {second["xdp_prog_id"]}
    assert {p["tc_prog_id"] for p in second["ports"]} == {second["tc_prog_id"]}
    [c1] = [p for p in second["ports"] if p["port"] == lab.c1.port]
    ingress, _ = tcx.programs(lab.switch, [c1["ifindex"]])[c1["ifindex"]]
    assert ingress == [second["tc_prog_id"]], "one TCX link, its program replaced"
    assert lab.c1.ping(lab.c2.ip)


@pytest.mark.root
def test_writers_are_serialised():
    with writer_lock():
        with pytest.raises(XdpbrError, match="another xdpbr is changing the host"):
            with writer_lock(timeout=0.1):
                pass
