"""The Prometheus collector over maps filled by real traffic, and its exposition."""

import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from control import attachment
from control.metrics import PinnedMapReader, XdpbrCollector, bridge_label, parse_listen
from loader.errors import XdpbrError

pytestmark = pytest.mark.root


def scrape(reader):
    registry = CollectorRegistry()
    collector = XdpbrCollector(reader)
    registry.register(collector)
    return registry, collector


def test_counters_follow_real_traffic(two_containers):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    assert lab.c1.ping(lab.c2.ip, count=5)
    registry, _ = scrape(PinnedMapReader(lab.bridge, lab.switch))
    b = bridge_label(lab.bridge, lab.switch)
    fast = registry.get_sample_value(
        "xdpbr_fast_path_packets_total", {"bridge": b, "port": lab.c1.port, "attach": "xdp"}
    )
    assert fast >= 4
    received = registry.get_sample_value("xdpbr_received_packets_total", {"bridge": b, "port": lab.c1.port})
    passed = sum(
        s.value
        for metric in registry.collect()
        if metric.name == "xdpbr_passed_packets"
        for s in metric.samples
        if s.labels["port"] == lab.c1.port and s.name.endswith("_total")
    )
    assert received == fast + passed
    assert (
        registry.get_sample_value(
            "xdpbr_port_info",
            {"bridge": b, "port": lab.c2.port, "mode": "xdp", "xdp_mode": "native", "reason": "requested"},
        )
        == 1
    )
    assert registry.get_sample_value("xdpbr_fdb_entries", {"bridge": b}) >= 2
    assert registry.get_sample_value("xdpbr_fdb_capacity_entries", {"bridge": b}) == 16384
    assert registry.get_sample_value("xdpbr_fast_path_active", {"bridge": b}) == 1
    assert registry.get_sample_value("xdpbr_compile_seconds", {"bridge": b}) > 0
    assert registry.get_sample_value("xdpbr_scrape_errors_total") == 0


def test_no_mac_and_no_cpu_in_any_label(two_containers):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch)
    assert lab.c1.ping(lab.c2.ip)
    registry, _ = scrape(PinnedMapReader(lab.bridge, lab.switch))
    text = generate_latest(registry).decode()
    assert lab.c1.mac not in text and lab.c2.mac not in text
    assert "cpu=" not in text


def test_a_bridge_that_cannot_be_read_counts_an_error_and_the_scrape_goes_on():
    class Broken:
        def bridges(self):
            yield XdpbrError("pins vanished")

    registry, _ = scrape(Broken())
    assert registry.get_sample_value("xdpbr_scrape_errors_total") == 1
    assert registry.get_sample_value("xdpbr_scrape_duration_seconds") >= 0


def test_promtool_accepts_the_exposition(two_containers):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp+tc")
    assert lab.c1.ping(lab.c2.ip)
    registry, _ = scrape(PinnedMapReader(lab.bridge, lab.switch))
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=generate_latest(registry), capture_output=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_metrics_address_parsing():
    assert parse_listen("9435") == ("127.0.0.1", 9435)
    assert parse_listen("0.0.0.0:9435") == ("0.0.0.0", 9435)
    assert parse_listen("[::1]:9435") == ("::1", 9435)
    with pytest.raises(XdpbrError, match="expected \\[ADDR:\\]PORT"):
        parse_listen("localhost")


def test_redirect_errors_after_the_fast_path_are_counted(two_containers):
    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    b = bridge_label(lab.bridge, lab.switch)
    registry, _ = scrape(PinnedMapReader(lab.bridge, lab.switch))
    before = registry.get_sample_value("xdpbr_redirect_errors_total", {"bridge": b, "port": lab.c2.port})
    assert before == 0
    # take NAPI away from c1's interface behind xdpbr's back: XDP redirects into its veth fail
    lab.c1.run("ethtool", "-K", "eth0", "gro", "off")
    lab.c2.run("ping", "-c", "3", "-i", "0.05", "-W", "1", lab.c1.ip, check=False)
    registry, _ = scrape(PinnedMapReader(lab.bridge, lab.switch))
    assert registry.get_sample_value("xdpbr_redirect_errors_total", {"bridge": b, "port": lab.c2.port}) >= 3
