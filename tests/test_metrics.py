"""The Prometheus collector over maps filled by real traffic, and its exposition."""

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, SummaryMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from xdpbr.control.datapath import attachment
from xdpbr.control.metrics.collector import PinnedMapReader, XdpbrCollector, bridge_label, parse_listen
from xdpbr.control.metrics.exposition import RowFamily, render, start_server
from xdpbr.loader.errors import XdpbrError

from tests.helpers import wait_for


def scrape(reader):
    registry = CollectorRegistry()
    collector = XdpbrCollector(reader)
    registry.register(collector)
    return registry, collector


def scrape_after_pings(lab, mode, count=3):
    """The lab's bridge attached in `mode`, `count` pings c1 -> c2 through it, then one scrape
    of its pinned maps (the registry)."""
    attachment.attach(lab.bridge, lab.switch, mode=mode)
    assert lab.c1.ping(lab.c2.ip, count=count)
    return scrape(PinnedMapReader(lab.bridge, lab.switch))[0]


@pytest.mark.root
def test_counters_follow_real_traffic(two_containers):
    lab = two_containers
    registry = scrape_after_pings(lab, "xdp", count=5)
    b = bridge_label(lab.bridge, lab.switch)
    # one scrape for all three: frames keep coming (ARP, IPv6) between scrapes
    samples = [s for metric in registry.collect() for s in metric.samples]

    def value(name, **labels):
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    fast = value("xdpbr_fast_path_packets_total", bridge=b, port=lab.c1.port, attach="xdp")
    assert fast >= 4
    received = value("xdpbr_received_packets_total", bridge=b, port=lab.c1.port)
    passed = value("xdpbr_passed_packets_total", bridge=b, port=lab.c1.port)
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


@pytest.mark.root
def test_no_mac_and_no_cpu_in_any_label(two_containers):
    lab = two_containers
    registry = scrape_after_pings(lab, "auto")
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


@pytest.mark.root
def test_promtool_accepts_the_exposition(two_containers):
    lab = two_containers
    registry = scrape_after_pings(lab, "xdp+tc")
    res = subprocess.run(["promtool", "check", "metrics"], input=render(registry), capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_metrics_address_parsing():
    assert parse_listen("9435") == ("127.0.0.1", 9435)
    assert parse_listen("0.0.0.0:9435") == ("0.0.0.0", 9435)
    assert parse_listen("[::1]:9435") == ("::1", 9435)
    with pytest.raises(XdpbrError, match="expected \\[ADDR:\\]PORT"):
        parse_listen("localhost")


@pytest.mark.root
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


def parsed(text):
    """Every sample as Prometheus' parser reads it: (name, sorted labels, value)."""
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )


class Families:
    """A collector yielding fixed families: the writers are compared on the same input."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def test_the_fast_writer_says_what_prometheus_client_says_including_odd_names():
    rows = RowFamily("xdpbr_t_packets", "Doc with \\ and\nnewline.", "counter", ["bridge", "port"])
    # interface names may hold quotes and backslashes (the kernel forbids only '/', ':' and spaces)
    for port, value in (("eth0", 3), ('we"ird', 2**60 + 1), ("back\\slash", 0), ("big", 12345678)):
        rows.add(("br0", port), value)
    gauge = GaugeMetricFamily("xdpbr_t_seconds", "A gauge.", labels=["bridge"])
    gauge.add_metric(["br0"], 0.125)
    info = InfoMetricFamily("xdpbr_t", "Info.", labels=["bridge"])
    info.add_metric(["br0"], {"mode": 'x\nd"p'})
    summary = SummaryMetricFamily("xdpbr_t_lag_seconds", "Lag.", labels=["bridge"])
    summary.add_metric(["br0"], 4, 0.5)
    registry = Families([rows, gauge, info, summary])
    fast = render(registry).decode()
    assert parsed(fast) == parsed(generate_latest(registry).decode())
    assert 'port="big"} 12345678\n' in fast  # integers stay exact, not 1.2345678e+07
    assert str(2**60 + 1) in fast
    res = subprocess.run(["promtool", "check", "metrics"], input=fast.encode(), capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.root
def test_the_fast_writer_matches_on_a_real_scrape(two_containers):
    lab = two_containers
    registry = scrape_after_pings(lab, "xdp+tc")
    families = list(registry.collect())  # one reading, written twice
    volatile = {"xdpbr_scrape_duration_seconds", "xdpbr_heartbeat_age_seconds"}
    fast = [s for s in parsed(render(Families(families)).decode()) if s[0] not in volatile]
    reference = [s for s in parsed(generate_latest(Families(families)).decode()) if s[0] not in volatile]
    assert fast == reference
    assert any(name == "xdpbr_fast_path_packets_total" and value > 0 for name, _, value in fast)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port):
    """{(name, labels): value} from the daemon's endpoint, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return {(n, labels): v for n, labels, v in parsed(resp.read().decode())}
    except OSError:
        return None


def _exporting_daemon(lab, daemon):
    """(port, daemon): the lab's bridge attached in xdp mode, a daemon serving its metrics."""
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    port = _free_port()
    started = daemon("--metrics", str(port))
    assert wait_for(lambda: _scrape(port), timeout=10), "the exporter did not answer"
    return port, started


@pytest.mark.root
def test_the_exporter_survives_daemon_restarts_and_bridges_coming_and_going(bridge_lab, daemon):
    lab = bridge_lab
    port, first = _exporting_daemon(lab, daemon)
    assert lab.c1.ping(lab.c2.ip, count=5)
    b = bridge_label(lab.bridge, lab.switch)
    fast = ("xdpbr_fast_path_packets_total", (("attach", "xdp"), ("bridge", b), ("port", lab.c1.port)))
    before = _scrape(port)[fast]
    assert before >= 4

    first.stop(signal.SIGKILL)  # the exporter dies with the daemon; counters live in the maps
    assert _scrape(port) is None
    daemon("--metrics", str(port))
    after = wait_for(lambda: _scrape(port), timeout=10)
    assert after and after[fast] >= before  # a counter never goes back
    assert after[("xdpbr_scrape_errors_total", ())] == 0

    attachment.detach(lab.bridge, lab.switch)  # between scrapes: the bridge's series go away
    gone = _scrape(port)
    assert gone is not None and not any(dict(labels).get("bridge") == b for _, labels in gone)
    assert gone[("xdpbr_scrape_errors_total", ())] == 0
    attachment.attach(lab.bridge, lab.switch, mode="tc")
    back = _scrape(port)
    info = ("xdpbr_port_info", (("bridge", b), ("mode", "tc"), ("port", lab.c1.port)))
    assert any(name == info[0] and set(info[1]) <= set(labels) for name, labels in back)


DEADLINE_S = 5.0  # README: a request must arrive whole within 5 s of the connect


def _threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def _accept_queue(port):
    """Connections waiting in the accept queue of the TCP listener on `port` (/proc/net/tcp:
    a listening socket's rx_queue is its accept backlog)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    return None


def _read_until_closed(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        return data or repr(exc).encode()
    return data


@pytest.mark.root
def test_idle_and_slow_clients_neither_hold_up_a_scrape_nor_add_threads(two_containers, daemon):
    lab = two_containers
    port, exporter = _exporting_daemon(lab, daemon)
    baseline = _threads(exporter.proc.pid)
    opened = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    stop, rounds = threading.Event(), []

    def dribble():
        """Slow-loris: a request line, then a header a byte every 0.5 s, never the blank line."""
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        for byte in b"X-Slow: " + b"a" * 100:
            for sock in slow:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass  # cut: what the test expects
            rounds.append(byte)
            if stop.wait(0.5):
                return

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        # every connection accepted (the listener's accept queue empty), the slow ones a few bytes in
        assert wait_for(lambda: _accept_queue(port) == 0 and len(rounds) >= 2, timeout=10)
        started = time.monotonic()
        scraped = _scrape(port)
        latency = time.monotonic() - started
        held = _threads(exporter.proc.pid)
        assert scraped and ("xdpbr_scrape_errors_total", ()) in scraped
        assert latency < 1.0, f"a scrape beside 220 open connections took {latency:.2f} s"
        assert held <= baseline + 1, f"the daemon went from {baseline} to {held} threads"
        # each idle or slow client is cut at the deadline, with a one-line 408
        answers = [
            _read_until_closed(s, max(0.1, opened + DEADLINE_S + 2 - time.monotonic())) for s in idle + slow
        ]
        cut = time.monotonic() - opened
    finally:
        stop.set()
        dribbler.join(5)
        for sock in idle + slow:
            sock.close()
    lines = {a.split(b"\r\n", 1)[0] for a in answers}
    assert lines == {b"HTTP/1.1 408 Request Timeout"}, lines
    assert all(a.endswith(b"\r\n\r\nxdpbr: no whole request within 5 s\n") for a in answers)
    assert cut < DEADLINE_S + 2
    print(f"\nscrape beside 220 open connections: {latency * 1000:.0f} ms, threads {baseline} -> {held}")


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"\x00\xff junk\r\n\r\n", b"400"),
    ],
)
def test_a_bad_request_gets_a_status_and_one_line(request_bytes, status):
    port = _free_port()
    server = start_server("127.0.0.1", port, Families([]))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request_bytes)
            answer = _read_until_closed(sock, 5)
    finally:
        server.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status, answer[:200]
    assert body.startswith(b"xdpbr: ") and body.count(b"\n") == 1, body


def test_the_daemon_record_becomes_daemon_metrics():
    from xdpbr.loader.layouts import RELOAD_FAILED, DaemonRecord

    now = time.monotonic_ns()
    record = DaemonRecord(
        pid=4242,
        loop_generation=1234,
        started_ns=now - 60 * 10**9,
        scanned_ns=now - 10**8,
        rules_checked_ns=now - 5 * 10**8,
        reconciled_ns=now - 30 * 10**9,
        bridges=3,
        bridges_failed=1,
        reloads_ok=4,
        reloads_failed=2,
        reload_finished_ns=now - 10**9,
        reload_result=RELOAD_FAILED,
    )

    class Reader:
        def bridges(self):
            return iter(())

        def daemon(self):
            return record, True

    registry, _ = scrape(Reader())

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert value("xdpbr_daemon_running") == 1
    assert value("xdpbr_daemon_loop_generation") == 1234
    assert (value("xdpbr_daemon_bridges"), value("xdpbr_daemon_bridges_failed")) == (3, 1)
    assert value("xdpbr_daemon_reloads_total", result="ok") == 4
    assert value("xdpbr_daemon_reloads_total", result="failed") == 2
    assert value("xdpbr_daemon_last_reload_successful") == 0
    # CLOCK_MONOTONIC in the record, Unix time in the metrics
    assert abs(value("xdpbr_daemon_last_reconcile_timestamp_seconds") - (time.time() - 30)) < 2
    assert abs(value("xdpbr_daemon_last_rules_check_timestamp_seconds") - (time.time() - 0.5)) < 2
    assert abs(value("xdpbr_daemon_start_timestamp_seconds") - (time.time() - 60)) < 2
    # a daemon that stopped: its counters and last times stay, it holds nothing
    record.pid = 0
    Reader.daemon = lambda self: (record, False)
    registry, _ = scrape(Reader())
    assert (value("xdpbr_daemon_running"), value("xdpbr_daemon_bridges")) == (0, 0)
    assert value("xdpbr_daemon_start_timestamp_seconds") == 0
    assert value("xdpbr_daemon_reloads_total", result="failed") == 2


@pytest.mark.root
def test_a_running_daemon_is_in_the_metrics_and_promtool_accepts_them(two_containers, daemon):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    d = daemon()
    rec = d.reload()
    registry, _ = scrape(PinnedMapReader())
    assert registry.get_sample_value("xdpbr_daemon_running") == 1
    assert registry.get_sample_value("xdpbr_daemon_bridges") == 1
    assert registry.get_sample_value("xdpbr_daemon_loop_generation") >= rec.reload_generation
    assert registry.get_sample_value("xdpbr_daemon_reloads_total", {"result": "ok"}) == rec.reloads_ok >= 1
    assert registry.get_sample_value("xdpbr_daemon_last_reload_successful") == 1
    assert time.time() - registry.get_sample_value("xdpbr_daemon_last_scan_timestamp_seconds") < 5
    res = subprocess.run(["promtool", "check", "metrics"], input=render(registry), capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr
