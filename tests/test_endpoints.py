"""`xdpbr endpoint`: AF_XDP and TAP endpoints on a bridge, frames through the fast path."""

import json
import os

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.control.endpoints import lifecycle as endpoints
from xdpbr.control.endpoints import qemu
from xdpbr.loader import bpfsys, instance
from xdpbr.loader.afxdp import XskSocket, new_socket
from xdpbr.loader.errors import NotFound, UsageError, XdpbrError
from xdpbr.loader.netns import entered, netns_path, nsenter_prefix

from testbed.frames import udp_frame
from testbed.lab import sh
from tests.helpers import xdpbr
from tests.traffic import frames_on, packet_socket, xsk_frames

GUEST = "52:54:00:00:00:31"


def links(lab):
    return sh("ip", "-n", lab.switch, "-br", "link", "show")


def forward(lab, port):
    return state.forwarded(lab.bridge, lab.switch, port)


@pytest.mark.root
def test_an_afxdp_endpoint_exchanges_frames_with_a_container_on_the_fast_path(two_containers):
    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)  # the bridge knows c1
    rec = endpoints.add(lab.bridge, lab.switch, "vm1", mac=GUEST)
    assert (rec["path"], rec["port"], rec["ifname"]) == ("afxdp", "vm1-p", "vm1")
    assert GUEST in sh("bridge", "-n", lab.switch, "fdb", "show", "dev", "vm1-p")
    attachment.attach(lab.bridge, lab.switch)  # the mirror takes the guest's static entry
    # what the broker does: a socket into the endpoint's XSKMAP at its queue, handed over
    with entered(lab.switch):
        sock = new_socket(lab.switch)
        xsks = bpfsys.obj_get(os.path.join(rec["pins"], "xsks"))
        try:
            import ctypes

            bpfsys.map_update(xsks, ctypes.c_uint32(0), ctypes.c_int32(sock.fileno()))
        finally:
            os.close(xsks)
        xsk = XskSocket(sock, int(sh("ip", "-n", lab.switch, "-o", "link", "show", "vm1").split(":")[0]), 0)
    try:
        pkt = packet_socket(lab.c1.netns, "eth0")
        to_guest = [udp_frame(GUEST, lab.c1.mac, lab.c1.ip, "10.200.0.31", 60 + i) for i in range(20)]
        before = forward(lab, lab.c1.port)
        for frame in to_guest:
            pkt.send(frame)
        assert xsk_frames(xsk, len(to_guest), dst=GUEST) == to_guest
        assert forward(lab, lab.c1.port) >= before + len(to_guest)  # container -> guest: fast path
        assert endpoints.counters(rec)["to_socket"][0] >= len(to_guest)  # counted by the endpoint
        replies = [udp_frame(lab.c1.mac, GUEST, "10.200.0.31", lab.c1.ip, 100 + i) for i in range(20)]
        before = forward(lab, "vm1-p")
        assert xsk.send(replies) == len(replies)
        assert frames_on(pkt, len(replies), src=GUEST) == replies
        assert forward(lab, "vm1-p") >= before + len(replies)  # guest -> container: fast path
        pkt.close()
    finally:
        xsk.close()
    endpoints.delete(lab.bridge, lab.switch, "vm1")
    assert "vm1" not in links(lab)
    assert not os.path.exists(rec["pins"])
    assert endpoints.show(lab.bridge, lab.switch) == []


def _has_uid(uid):
    import pwd

    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


@pytest.mark.root
def test_a_tap_endpoint_is_a_persistent_vnet_hdr_tap_on_the_bridge(two_containers):
    lab = two_containers
    rec = endpoints.add(lab.bridge, lab.switch, "vm2", path="tap", mac=GUEST, owner=1000, group=1000)
    assert (rec["path"], rec["port"]) == ("tap", "vm2")
    detail = sh("ip", "-n", lab.switch, "-d", "link", "show", "vm2")
    assert "tun type tap" in detail and "vnet_hdr on" in detail and "persist on" in detail
    owner = __import__("pwd").getpwuid(1000).pw_name if _has_uid(1000) else "1000"
    assert f"user {owner} " in detail
    assert f"master {lab.bridge}" in detail
    args = qemu.recipe_text(qemu.qemu_args(lab.bridge, lab.switch, "vm2"))
    assert args.startswith("-netdev tap,id=vm2,ifname=vm2,script=no,downscript=no")
    # QEMU refuses vhost=on without /dev/vhost-net (tests/test_qemu.py for each QEMU version)
    assert ("vhost=on" in args) == os.path.exists("/dev/vhost-net")
    by_name = xdpbr("-n", lab.switch, "endpoint", "qemu-args", "vm2")  # the grammar
    assert by_name.returncode == 0 and by_name.stdout.strip() == args
    missing = xdpbr("-n", lab.switch, "endpoint", "qemu-args", "vm9")
    assert missing.returncode == 1 and "no endpoint vm9" in missing.stderr
    res = xdpbr("-n", lab.switch, "-j", "endpoint", "show", lab.bridge)
    assert res.returncode == 0 and '"path":"tap"' in res.stdout
    assert xdpbr("-n", lab.switch, "endpoint", "del", lab.bridge, "vm2").returncode == 0
    assert "vm2" not in links(lab)


@pytest.mark.root
def test_endpoints_get_their_queues_offloads_and_static_entry_from_the_kernel(two_containers):
    """What `add` asks of netlink and ethtool, read back with iproute2's and ethtool's own eyes."""
    lab = two_containers
    endpoints.add(lab.bridge, lab.switch, "vm8", mac=GUEST, queues=3)
    cli = ["-j", "-n", lab.switch, "endpoint", "add", lab.bridge, "vm9", "--tap", "--queues", "2"]
    res = xdpbr(*cli, "--mac", "52:54:00:00:00:39")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert (row["name"], row["path"], row["queues"], row["present"]) == ("vm9", "tap", 2, True)
    for ifname in ("vm8", "vm8-p"):
        detail = sh("ip", "-n", lab.switch, "-d", "link", "show", "dev", ifname)
        assert "numtxqueues 3 numrxqueues 3" in detail, detail
    # a TAP's queues are the fds its VMM opens by name (IFF_MULTI_QUEUE), not a fixed count
    assert "vnet_hdr on multi_queue" in sh("ip", "-n", lab.switch, "-d", "link", "show", "dev", "vm9")
    assert "master br0 state UP" in sh("ip", "-n", lab.switch, "link", "show", "dev", "vm8-p")
    assert " UP " in sh("ip", "-n", lab.switch, "-br", "link", "show", "dev", "vm8")
    fdb = sh("bridge", "-n", lab.switch, "fdb", "show", "br", lab.bridge)
    assert f"{GUEST} dev vm8-p master {lab.bridge} static" in fdb, fdb
    assert f"52:54:00:00:00:39 dev vm9 master {lab.bridge} static" in fdb, fdb
    ethtool_k = [*nsenter_prefix(netns_path(lab.switch)), "ethtool", "-k"]
    assert "tx-checksumming: off" in sh(*ethtool_k, "vm8-p")
    assert "tx-checksumming: on" in sh(*ethtool_k, "vm8")  # the VMM's side keeps its own


@pytest.mark.root
def test_endpoint_errors_are_clear_and_leave_nothing(two_containers):
    lab = two_containers
    with pytest.raises(UsageError, match="endpoint name"):
        endpoints.add(lab.bridge, lab.switch, "a/b")
    with pytest.raises(NotFound, match="bridge nobr does not exist"):
        endpoints.add("nobr", lab.switch, "vm3")
    with pytest.raises(XdpbrError, match=rf"^{lab.c1.port} is not a bridge \(it is a veth device\)"):
        endpoints.add(lab.c1.port, lab.switch, "vm3")
    endpoints.add(lab.bridge, lab.switch, "vm3")
    with pytest.raises(XdpbrError, match="already exists"):
        endpoints.add(lab.bridge, lab.switch, "vm3")
    sh("ip", "-n", lab.switch, "link", "add", "vm5", "type", "veth", "peer", "vm5x")
    with pytest.raises(XdpbrError, match="interface vm5 already exists"):
        endpoints.add(lab.bridge, lab.switch, "vm5", path="tap")
    endpoints.delete(lab.bridge, lab.switch, "vm3")
    res = xdpbr("-n", lab.switch, "endpoint", "del", lab.bridge, "vm3")
    assert res.returncode == 1 and res.stderr.startswith("xdpbr: no endpoint vm3 on ")
    res = xdpbr("-n", lab.switch, "endpoint", "add", lab.bridge, "vm4", "--mac", "zz")
    assert res.returncode == 2 and "--mac 'zz'" in res.stderr
    for group_or_zero in ("01:00:5e:00:00:01", "00:00:00:00:00:00"):
        res = xdpbr("-n", lab.switch, "endpoint", "add", lab.bridge, "vm4", "--mac", group_or_zero)
        why = "a guest's MAC must be unicast and not zero, like 52:54:00:12:34:56"
        assert (res.returncode, res.stderr) == (2, f"xdpbr: --mac {group_or_zero}: {why}\n")
    assert "vm3" not in links(lab) and "vm4" not in links(lab)


@pytest.mark.root
@pytest.mark.parametrize("path", ["afxdp", "tap"])
def test_a_failing_last_step_rolls_the_whole_endpoint_back(two_containers, monkeypatch, path):
    """The static FDB entry is the last thing `add` writes; when the kernel refuses it, the
    interfaces, pins and record made before are gone again (the refusal is injected: this
    kernel takes any unicast MAC)."""
    from xdpbr.loader.links import Rtnl

    lab = two_containers
    before = links(lab)

    def refused(rtnl, ifindex, mac):
        raise XdpbrError("the FDB entry was refused")

    monkeypatch.setattr(Rtnl, "fdb_add_static", refused)
    with pytest.raises(XdpbrError, match="refused"):
        endpoints.add(lab.bridge, lab.switch, "vm4", mac=GUEST, path=path)
    assert links(lab) == before
    assert endpoints.records(lab.bridge, lab.switch) == []
    pin_root = instance.endpoint_pin_root()
    assert not os.path.exists(os.path.join(pin_root, endpoints.label(lab.bridge, lab.switch)))


@pytest.mark.root
def test_endpoint_metrics_count_frames_to_the_sockets_and_frames_that_found_none(two_containers):
    from prometheus_client import CollectorRegistry
    from xdpbr.control.metrics.collector import PinnedMapReader, XdpbrCollector

    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)
    endpoints.add(lab.bridge, lab.switch, "vm6", mac=GUEST)
    endpoints.add(lab.bridge, lab.switch, "vm7", path="tap")
    attachment.attach(lab.bridge, lab.switch)
    with packet_socket(lab.c1.netns, "eth0", receive=False) as pkt:
        for _ in range(7):  # no VMM yet: no socket on the queue
            pkt.send(udp_frame(GUEST, lab.c1.mac, lab.c1.ip, "10.200.0.31", 60))
    registry = CollectorRegistry()
    registry.register(XdpbrCollector(PinnedMapReader(lab.bridge, lab.switch)))
    b = f"{lab.bridge}@{lab.switch}"
    value = registry.get_sample_value
    assert (
        value("xdpbr_endpoint_info", {"bridge": b, "endpoint": "vm6", "path": "afxdp", "reason": "requested"})
        == 1
    )
    assert (
        value("xdpbr_endpoint_info", {"bridge": b, "endpoint": "vm7", "path": "tap", "reason": "requested"})
        == 1
    )
    assert value("xdpbr_endpoint_no_socket_packets_total", {"bridge": b, "endpoint": "vm6"}) >= 7
    assert value("xdpbr_endpoint_to_socket_packets_total", {"bridge": b, "endpoint": "vm6"}) == 0
    assert value("xdpbr_endpoint_redirect_errors_total", {"bridge": b, "endpoint": "vm6"}) == 0
    endpoints.delete(lab.bridge, lab.switch, "vm6")
    endpoints.delete(lab.bridge, lab.switch, "vm7")


@pytest.mark.root
def test_a_lab_that_goes_away_takes_its_endpoints_pins_and_broker_socket_with_it():
    from testbed.lab import Lab

    run_dir = instance.run_dir()

    with Lab(prefix="xdpbr-test-epgone") as lab:
        lab.make_bridge()
        rec = endpoints.add(lab.bridge, lab.switch, "vm8")
        label = endpoints.label(lab.bridge, lab.switch)
        open(os.path.join(run_dir, f"{label}.sock"), "w").close()  # as a SIGKILLed daemon leaves it
        assert os.path.exists(rec["pins"])
    assert not os.path.exists(os.path.dirname(rec["pins"]))
    assert not os.path.exists(os.path.join(endpoints.record_root(), label))
    assert not os.path.exists(os.path.join(run_dir, f"{label}.sock"))


@pytest.mark.root
def test_a_corrupt_endpoint_record_is_skipped_by_show_the_broker_and_a_scrape(two_containers, daemon):
    from xdpbr.control.endpoints.client import request, socket_path
    from xdpbr.control.metrics.collector import exposition

    lab = two_containers
    rec = endpoints.add(lab.bridge, lab.switch, "vm1")
    record_dir = os.path.join(endpoints.record_root(), endpoints.label(lab.bridge, lab.switch))
    assert oct(os.stat(os.path.join(record_dir, "vm1.json")).st_mode & 0o777) == "0o600"
    for name, text in (
        ("half.json", '{"bridge": "br0", "na'),
        ("deep.json", "[" * 5000),
        ("list.json", "[]"),
    ):
        with open(os.path.join(record_dir, name), "w") as f:
            f.write(text)
    attachment.attach(lab.bridge, lab.switch)
    d = daemon()
    res = xdpbr("-j", "-n", lab.switch, "endpoint", "show", lab.bridge)
    assert res.returncode == 0, res.stderr
    assert [e["name"] for e in json.loads(res.stdout)] == ["vm1"]
    reply, fds = request(socket_path(lab.bridge, lab.switch), "vm1")
    for fd in fds:
        os.close(fd)
    assert reply["ok"], reply
    text = exposition(lab.bridge, lab.switch)
    label = f"{lab.bridge}@{lab.switch}"
    assert f'xdpbr_endpoint_info{{bridge="{label}",endpoint="vm1"' in text
    errors = [line for line in text.splitlines() if line.startswith("xdpbr_endpoint_record_errors_total ")]
    assert errors and float(errors[0].split()[1]) >= 3
    assert d.proc.poll() is None
    endpoints.delete(lab.bridge, lab.switch, rec["name"])
