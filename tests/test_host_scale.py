"""A link event about one port is applied to that port alone: a port joining a bridge of 64
costs a handful of RTNL requests, not one per other port; and when events were lost (an
overrun), the resync the daemon runs then still brings every port in line."""

import pytest
from xdpbr.control.daemon.worker import BridgeWorker
from xdpbr.control.datapath import attachment
from xdpbr.control.datapath.attachment import PortCache, reconcile
from xdpbr.control.datapath.session import Session
from xdpbr.loader import links, rtnl, tcx
from xdpbr.loader.netns import existing_index

from testbed.lab import batch, sh

pytestmark = pytest.mark.root
PORTS = 64


@pytest.fixture
def big_bridge(lab):
    lab.make_bridge()
    lines = []
    for i in range(PORTS):
        lines += [f"link add p{i} type veth peer q{i}", f"link set q{i} up", f"link set p{i} master br0 up"]
    batch("ip", lab.switch, lines)
    attachment.attach(lab.bridge, lab.switch)
    return lab


def join(lab, name):
    sh("ip", "-n", lab.switch, "link", "add", name, "type", "veth", "peer", f"{name}x")
    sh("ip", "-n", lab.switch, "link", "set", f"{name}x", "up")
    sh("ip", "-n", lab.switch, "link", "set", name, "master", lab.bridge, "up")
    return existing_index(lab.switch, name)


def accelerated(lab, s, ifindex):
    return (
        s.ports().get(ifindex) is not None
        and s.prog_id("tc") in tcx.programs(lab.switch, [ifindex])[ifindex][0]
    )


def test_a_port_joining_a_64_port_bridge_costs_no_request_per_other_port(big_bridge, monkeypatch):
    lab = big_bridge
    requests = []
    real_dump, real_socket = rtnl.dump, links.Rtnl._socket.fget

    def counted_dump(netns, msg_type, body, flags=rtnl.NLM_F_DUMP):
        requests.append(msg_type)
        return real_dump(netns, msg_type, body, flags)

    def counted_socket(self):
        requests.append("pyroute2")
        return real_socket(self)

    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        s.find_bridge()
        cache = PortCache()
        reconcile(s, cache=cache)  # what the daemon's resync does once
        index = join(lab, "pnew")
        monkeypatch.setattr(rtnl, "dump", counted_dump)
        monkeypatch.setattr(links.Rtnl, "_socket", property(counted_socket))
        reconcile(s, cache=cache, changed={index})
        monkeypatch.undo()
        assert accelerated(lab, s, index), "the joined port runs xdpbr's TC program and has its entry"
        # the port's link, the namespace's qdiscs, the bridge's nf_call options: a few, whatever
        # the bridge's size
        assert len(requests) <= 6, f"{len(requests)} RTNL requests for one join: {requests}"
        assert "pyroute2" not in requests


def test_a_resync_after_lost_events_brings_every_port_in_line(big_bridge):
    lab = big_bridge
    worker = BridgeWorker(lab.bridge, lab.switch)
    try:
        worker.resync()
        assert worker.healthy
        s = worker.session
        gone = existing_index(lab.switch, "p3")
        # changes whose events the worker never sees (an overrun lost them)
        joined = [join(lab, f"pl{i}") for i in range(3)]
        sh("ip", "-n", lab.switch, "link", "del", "p3")
        assert not any(accelerated(lab, s, i) for i in joined)
        worker.resync()  # what the daemon runs for a namespace whose events overran (ENOBUFS)
        assert all(accelerated(lab, s, i) for i in joined)
        assert gone not in s.ports()
        assert len(s.ports()) == PORTS - 1 + len(joined)
        assert set(worker.cache.ports) == set(s.ports()), "the cache is the bridge as it is now"
    finally:
        worker.session.close()
