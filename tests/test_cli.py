"""The operator CLI: exact JSON, exact error lines, exit codes, and nothing left half-attached."""

import json
import os
import subprocess

import pytest
from xdpbr.control.datapath import attachment
from xdpbr.loader import pins

from tests.helpers import xdpbr


def host_state(lab):
    """What xdpbr could have left on the lab's ports: XDP programs, qdiscs, pins."""
    links = subprocess.run(
        ["ip", "-n", lab.switch, "-d", "link", "show"], capture_output=True, text=True
    ).stdout
    qdiscs = subprocess.run(["tc", "-n", lab.switch, "qdisc", "show"], capture_output=True, text=True).stdout
    return {
        "xdp": "prog/xdp" in links,
        "clsact": "clsact" in qdiscs,
        "pins": os.path.exists(pins.pin_dir(lab.bridge, lab.switch)),
    }


NOTHING = {"xdp": False, "clsact": False, "pins": False}


@pytest.mark.root
def test_attach_show_detach_round_trip_in_json(two_containers):
    lab = two_containers
    res = xdpbr("-j", "-n", lab.switch, "attach", "br0", "--mode", "tc")
    assert res.returncode == 0, res.stderr
    [shown] = json.loads(res.stdout)
    assert {
        k: shown[k] for k in ("bridge", "netns", "mode", "xdp_mode", "netfilter", "fast_path_active")
    } == {
        "bridge": "br0",
        "netns": lab.switch,
        "mode": "tc",
        "xdp_mode": "any",
        "netfilter": "respect",
        "fast_path_active": True,
    }
    assert [(p["port"], p["mode"], p["why"], p["xdp_mode"]) for p in shown["ports"]] == [
        (lab.c1.port, "tc", "requested", "none"),
        (lab.c2.port, "tc", "requested", "none"),
    ]
    assert all(p["tc_prog_id"] == shown["tc_prog_id"] > 0 for p in shown["ports"])
    again = json.loads(xdpbr("-j", "-n", lab.switch, "show", "br0").stdout)
    assert [p["port"] for p in again[0]["ports"]] == [lab.c1.port, lab.c2.port]

    res = xdpbr("-n", lab.switch, "detach", "br0")
    assert (res.returncode, res.stderr) == (0, "")
    assert host_state(lab) == NOTHING
    assert json.loads(xdpbr("-j", "-n", lab.switch, "show").stdout) == []


@pytest.mark.root
def test_missing_bridge_is_one_line_and_exit_1(two_containers):
    res = xdpbr("-n", two_containers.switch, "attach", "nope0")
    assert res.returncode == 1
    assert res.stderr == (
        f'xdpbr: bridge nope0 does not exist in network namespace "{two_containers.switch}"; '
        "see `ip link show type bridge`\n"
    )


@pytest.mark.root
def test_a_port_is_not_a_bridge(two_containers):
    lab = two_containers
    res = xdpbr("-n", lab.switch, "attach", lab.c1.port)
    assert res.returncode == 1
    assert res.stderr.startswith(f"xdpbr: {lab.c1.port} is not a bridge (it is a veth device)")
    assert host_state(lab) == NOTHING


@pytest.mark.root
def test_missing_namespace_names_the_fix():
    res = xdpbr("-n", "xdpbr-t-no-such-ns", "show")
    assert (res.returncode, res.stderr) == (
        1,
        'xdpbr: network namespace "xdpbr-t-no-such-ns" does not exist; see `ip netns list` for the names\n',
    )


def test_usage_errors_exit_2():
    res = xdpbr("attach", "br0", "--mode", "fast")
    assert res.returncode == 2
    assert res.stderr.startswith("xdpbr: argument --mode: invalid choice: 'fast'")
    assert len(res.stderr.splitlines()) == 1
    assert xdpbr().returncode == 2


@pytest.mark.root
@pytest.mark.parametrize(
    "argv, line",
    [
        # a negative grace would wrap to an endless one in the u64 the fast path reads
        (["attach", "br0", "--grace", "-5"], "argument --grace: '-5': must be above zero and finite"),
        (["attach", "br0", "--grace", "inf"], "argument --grace: 'inf': must be above zero and finite"),
        (["stats", "--watch", "--interval", "0"], "argument --interval: '0': must be above zero and finite"),
        (["stats", "--watch", "--count", "x"], "argument --count: 'x' is not a number"),
        (["daemon", "--metrics", "70000"], "--metrics '70000': expected [ADDR:]PORT"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(argv, line):
    res = xdpbr(*argv)
    assert (res.returncode, res.stderr.split(";")[0]) == (2, f"xdpbr: {line}")  # then the fix


@pytest.mark.root
def test_bench_refuses_what_it_cannot_measure_before_building_anything():
    for argv, message in (
        (("bench", "fastpth"), "xdpbr: unknown scenario 'fastpth'; scenarios: bridge, fastpath, limit, "),
        (("bench", "--rounds", "3"), "xdpbr: --rounds 3: at least 5 rounds"),
        (("bench", "--flows", "0"), "xdpbr: --flows 0: expected 1 to 1024"),
        (("bench", "scale", "--destinations", "5000"), "xdpbr: --destinations 5000: expected 1 to 4096"),
    ):
        res = xdpbr(*argv)
        assert res.returncode in (1, 2), res
        assert res.stderr.startswith(message), res.stderr
        assert len(res.stderr.splitlines()) == 1
    assert not [
        ns
        for ns in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
        if ns.startswith("xdpbr-bench")
    ]


@pytest.mark.root
def test_not_root_is_refused_with_the_fix():
    res = xdpbr("show", user="65534")
    assert res.returncode == 1
    assert res.stderr == (
        "xdpbr: must run as root (BPF maps and netlink need CAP_BPF and CAP_NET_ADMIN); run it with sudo\n"
    )


@pytest.mark.root
def test_explicit_mode_a_port_cannot_run_is_an_error_and_rolls_back(two_containers):
    lab = two_containers
    # a veth whose peer has a jumbo MTU cannot run native XDP without frags support
    lab.c2.run("ip", "link", "set", "eth0", "mtu", "9000")
    res = xdpbr("-n", lab.switch, "attach", "br0", "--mode", "xdp", "--xdp-mode", "native")
    assert res.returncode == 1
    assert res.stderr.startswith(
        f"xdpbr: cannot attach native XDP to {lab.c2.port}: veth: Peer MTU is too large"
    )
    assert res.stderr.rstrip().endswith("use --mode tc, or --xdp-mode generic")
    assert host_state(lab) == NOTHING, "the port that did attach must be rolled back"
    # auto lowers instead, and says why
    res = xdpbr("-j", "-n", lab.switch, "attach", "br0", "--mode", "xdp+tc")
    ports = {p["port"]: p for p in json.loads(res.stdout)[0]["ports"]}
    assert ports[lab.c2.port]["xdp_mode"] == "generic", "explicit xdp falls back to generic XDP"


@pytest.mark.root
def test_auto_falls_back_to_tc_when_a_driver_has_no_native_xdp_and_says_why(lab):
    lab.make_bridge()
    # an overlay uplink: auto's table says xdp+tc for it, the vxlan driver has no native XDP
    subprocess.run(
        ["ip", "-n", lab.switch, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789"],
        check=True,
    )
    subprocess.run(["ip", "-n", lab.switch, "link", "set", "vx0", "master", "br0", "up"], check=True)
    lab.wait_forwarding()
    res = xdpbr("-j", "-n", lab.switch, "attach", "br0")
    assert res.returncode == 0, res.stderr
    [port] = json.loads(res.stdout)[0]["ports"]
    assert (port["port"], port["mode"], port["why"], port["xdp_mode"]) == (
        "vx0",
        "tc",
        "no_native_xdp",
        "none",
    )
    text = xdpbr("-n", lab.switch, "show").stdout
    assert "no_native_xdp" in text
    # asked for explicitly, the same port is an error with the fix
    res = xdpbr("-n", lab.switch, "attach", "br0", "--mode", "xdp", "--xdp-mode", "native")
    assert res.returncode == 1
    assert res.stderr.startswith("xdpbr: cannot attach native XDP to vx0")


@pytest.mark.root
def test_missing_kernel_headers_name_the_package_and_leave_nothing(two_containers, monkeypatch):
    from xdpbr.loader import compile as comp
    from xdpbr.loader.errors import XdpbrError

    monkeypatch.setattr(comp, "_release_build_dir", lambda: None)
    monkeypatch.setattr(comp.glob, "glob", lambda pattern: [])
    with pytest.raises(XdpbrError) as err:
        attachment.attach("br0", two_containers.switch)
    assert "no kernel headers found" in str(err.value)
    assert str(err.value).endswith("apt-get install linux-headers-amd64 (or run make setup)")
    assert host_state(two_containers) == NOTHING


@pytest.mark.root
def test_port_set_is_remembered_and_checked(two_containers):
    lab = two_containers
    assert xdpbr("-n", lab.switch, "attach", "br0").returncode == 0
    res = xdpbr("-j", "-n", lab.switch, "port", "set", "br0", lab.c1.port, "mode", "bridge")
    assert res.returncode == 0, res.stderr
    rows = {r["port"]: (r["mode"], r["why"]) for r in json.loads(res.stdout)}
    assert rows == {lab.c1.port: ("bridge", "requested"), lab.c2.port: ("tc", "auto")}
    # remembered in bpffs: a re-attach keeps it
    res = xdpbr("-j", "-n", lab.switch, "attach", "br0")
    assert {p["port"]: p["mode"] for p in json.loads(res.stdout)[0]["ports"]}[lab.c1.port] == "bridge"

    res = xdpbr("-n", lab.switch, "port", "set", "br0", "lo", "mode", "tc")
    assert (res.returncode, res.stderr) == (
        1,
        "xdpbr: lo is not a port of bridge br0; enslave it with `ip link set lo master br0`\n",
    )
    res = xdpbr("-n", lab.switch, "port", "set", "br0", "nope", "mode", "tc")
    assert (res.returncode, res.stderr) == (1, "xdpbr: interface nope does not exist\n")


@pytest.mark.root
def test_detach_of_a_bridge_that_is_not_attached(two_containers):
    res = xdpbr("-n", two_containers.switch, "detach", "br0")
    assert (res.returncode, res.stderr) == (
        1,
        f'xdpbr: bridge br0 is not attached in network namespace "{two_containers.switch}"; '
        "see `xdpbr show`\n",
    )


@pytest.mark.root
def test_fdb_show_and_stats_watch_in_json(two_containers):
    lab = two_containers
    subprocess.run(
        [
            "bridge",
            "-n",
            lab.switch,
            "fdb",
            "add",
            "02:00:00:00:00:42",
            "dev",
            lab.c1.port,
            "master",
            "static",
        ],
        check=True,
    )
    # no daemon in this test: a long grace keeps the fast path on however slow the host is
    assert xdpbr("-n", lab.switch, "attach", "br0", "--grace", "600").returncode == 0
    rows = json.loads(xdpbr("-j", "-n", lab.switch, "fdb", "show", "br0").stdout)
    assert {
        "bridge": "br0",
        "mac": "02:00:00:00:00:42",
        "vlan": 0,
        "port": lab.c1.port,
        "flags": ["static"],
        "fast_path_used_s_ago": None,
    } in rows
    assert lab.c1.ping(lab.c2.ip)
    rows = json.loads(xdpbr("-j", "-n", lab.switch, "stats", "br0").stdout)
    assert any(r["reason"] == "forward" and r["attach"] == "tc" and r["packets"] > 0 for r in rows)
    assert set(rows[0]) == {"bridge", "port", "attach", "reason", "packets", "bytes"}
    # --watch gives rates, one JSON object an interval (tests/test_watch.py for the figures)
    res = xdpbr("-j", "-n", lab.switch, "stats", "br0", "--watch", "--interval", "0.1", "--count", "2")
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(docs) == 2
    assert set(docs[1]) == {"time", "interval_s", "bridges", "total"}
    assert [p["port"] for p in docs[1]["bridges"][0]["ports"]] == [lab.c1.port, lab.c2.port]


@pytest.mark.root
def test_two_namespaces_with_a_bridge_of_the_same_name_do_not_share_pins(two_containers):
    from testbed.lab import Lab

    with Lab(prefix="xdpbr-t") as other:
        other.make_bridge()
        other.container("c9")
        other.wait_forwarding()
        assert xdpbr("-n", two_containers.switch, "attach", "br0").returncode == 0
        assert xdpbr("-n", other.switch, "attach", "br0").returncode == 0
        shown = json.loads(xdpbr("-j", "show").stdout)
        mine = {(b["bridge"], b["netns"]) for b in shown}
        assert {("br0", two_containers.switch), ("br0", other.switch)} <= mine
        assert pins.pin_dir("br0", two_containers.switch) != pins.pin_dir("br0", other.switch)


@pytest.mark.root
def test_listing_every_bridge_skips_one_that_is_detached_meanwhile(two_containers):
    lab = two_containers
    assert xdpbr("-n", lab.switch, "attach", "br0").returncode == 0
    # what a concurrent detach leaves for an instant: a directory whose pins are gone
    ghost = pins.pin_dir("ghost0", lab.switch + "-gone")
    os.makedirs(ghost)
    try:
        res = xdpbr("-j", "show")
        assert res.returncode == 0, res.stderr
        assert ("br0", lab.switch) in {(b["bridge"], b["netns"]) for b in json.loads(res.stdout)}
        assert xdpbr("-j", "stats").returncode == 0
        named = xdpbr("-n", lab.switch + "-gone", "show", "ghost0")
        assert named.returncode == 1
    finally:
        os.rmdir(ghost)
