"""`xdpbr stats --watch`: rates per port and in total, fast path and bridge, with reasons.

Pure tests feed control.watch.rates() two snapshots; the root tests watch a real attached
bridge with UDP flowing, through a pseudo-terminal (the view redrawn in place), through a pipe
(plain lines) and with -j (one JSON object an interval).
"""

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from xdpbr.control.cli import render, watch
from xdpbr.loader.netns import entered

from tests.helpers import ROOT, wait_for, xdpbr


def snap(ports, bridge="br0", netns=None):
    return [{"bridge": bridge, "netns": netns, "ports": ports}]


def port(name, mode, **counts):
    """counts: attach_reason=(packets, bytes), e.g. tc_forward=(10, 1000)."""
    return {
        "port": name,
        "mode": mode,
        "counts": {tuple(k.split("_", 1)): v for k, v in counts.items()},
    }


def only_port(doc):
    [b] = doc["bridges"]
    [p] = b["ports"]
    return p


def test_a_tc_port_splits_into_fast_path_and_bridge_with_reasons_per_second():
    before = snap([port("c1", "tc", tc_forward=(100, 10_000), tc_broadcast=(5, 500))])
    after = snap(
        [
            port(
                "c1",
                "tc",
                tc_forward=(1100, 1_010_000),
                tc_broadcast=(15, 1500),
                tc_unknown_destination=(25, 2500),
            )
        ]
    )
    p = only_port(watch.rates(before, after, 2.0, now=0))
    assert p == {
        "port": "c1",
        "mode": "tc",
        "frames_per_s": 517.5,
        "bits_per_s": 4_014_000.0,
        "xdp_frames_per_s": None,  # this mode runs no XDP: not 0, nothing to count
        "xdp_bits_per_s": None,
        "tc_frames_per_s": 500.0,
        "tc_bits_per_s": 4_000_000.0,
        "bridge_frames_per_s": 17.5,
        "bridge_bits_per_s": 14_000.0,
        "fast_path_share": 0.9662,
        "pass_reasons": [
            {"reason": "unknown_destination", "frames_per_s": 12.5},
            {"reason": "broadcast", "frames_per_s": 5.0},
        ],
    }


def test_in_xdp_plus_tc_frames_enter_at_xdp_and_the_bridge_gets_what_tc_passes():
    after = snap(
        [
            port(
                "t1",
                "xdp+tc",
                xdp_forward=(500, 50_000),
                xdp_checksum_partial=(300, 30_000),  # TC sees these again
                tc_forward=(200, 20_000),
                tc_unknown_destination=(100, 10_000),
            )
        ]
    )
    p = only_port(watch.rates(snap([port("t1", "xdp+tc")]), after, 1.0, now=0))
    assert (p["frames_per_s"], p["xdp_frames_per_s"], p["tc_frames_per_s"], p["bridge_frames_per_s"]) == (
        800.0,
        500.0,
        200.0,
        100.0,
    )
    assert p["pass_reasons"] == [{"reason": "unknown_destination", "frames_per_s": 100.0}]
    assert p["fast_path_share"] == 0.875


def test_totals_add_up_ports_and_bridges():
    a = snap([port("c1", "tc", tc_forward=(10, 100)), port("c2", "xdp", xdp_broadcast=(4, 40))])
    b = snap([port("c9", "tc", tc_multicast=(6, 60))], bridge="br1", netns="ns1")
    zero = snap([port("c1", "tc"), port("c2", "xdp")]) + snap([port("c9", "tc")], bridge="br1", netns="ns1")
    doc = watch.rates(zero, a + b, 1.0, now=0)
    assert [(b["bridge"], b["total"]["frames_per_s"]) for b in doc["bridges"]] == [
        ("br0", 14.0),
        ("br1", 6.0),
    ]
    total = doc["total"]
    assert (total["frames_per_s"], total["bits_per_s"], total["bridge_frames_per_s"]) == (20.0, 1600.0, 10.0)
    assert total["pass_reasons"] == [
        {"reason": "multicast", "frames_per_s": 6.0},
        {"reason": "broadcast", "frames_per_s": 4.0},
    ]
    assert total["fast_path_share"] == 0.5


def test_a_bridge_mode_port_is_listed_with_null_rates():
    p = only_port(watch.rates(snap([port("e1", "bridge")]), snap([port("e1", "bridge")]), 1.0, now=0))
    assert (p["port"], p["frames_per_s"], p["fast_path_share"], p["pass_reasons"]) == ("e1", None, None, [])


def test_a_new_port_or_a_counter_that_went_back_gives_no_spike_and_no_negative_rate():
    doc = watch.rates(snap([]), snap([port("new", "tc", tc_forward=(10**9, 10**12))]), 1.0, now=0)
    assert only_port(doc)["frames_per_s"] == 0.0  # first seen: its past is not this interval's
    back = watch.rates(
        snap([port("c1", "tc", tc_forward=(1000, 100_000))]),
        snap([port("c1", "tc", tc_forward=(30, 3000))]),
        1.0,
    )
    assert only_port(back)["frames_per_s"] == 30.0  # maps rebuilt: counted from zero again


def test_the_text_view_names_every_column_and_port():
    before = snap([port("c1", "tc", tc_forward=(0, 0)), port("e1", "bridge")])
    after = snap(
        [port("c1", "tc", tc_forward=(2_500_000, 10**9), tc_broadcast=(7, 700)), port("e1", "bridge")]
    )
    text = render.rates_text(watch.rates(before, after, 1.0, now=0), 1)
    lines = text.splitlines()
    assert lines[1] == "bridge br0"
    assert lines[2].split() == ["port", "mode", "frames/s", "bits/s", "xdp/s", "tc/s", "bridge/s", "fast"] + [
        "passed",
        "to",
        "the",
        "bridge:",
        "top",
        "reasons",
        "(frames/s)",
    ]
    assert lines[3].split() == ["c1", "tc", "2.5M", "8G", "-", "2.5M", "7", "100%", "broadcast", "7"]
    assert lines[4].split() == ["e1", "bridge", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[5].split()[0] == "total"
    assert render.rates_text(watch.rates([], [], 1.0, now=0), 1).splitlines()[1] == "no attached bridge"


# --- against the kernel --------------------------------------------------------------------


class Udp:
    """UDP from one container to another in a thread, bounded in count and time."""

    def __init__(self, src, dst, seconds=8.0, limit=200_000):
        with entered(src.netns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dst, self.seconds, self.limit = dst.ip, seconds, limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)

    sent = 0

    def _send(self):
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < deadline and self.sent < self.limit:
            for _ in range(50):
                self.sock.sendto(b"x" * 200, (self.dst, 9))
            self.sent += 50
            time.sleep(0.002)  # pacing, bounded by the deadline and the count

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def busy(two_containers):
    lab = two_containers
    assert xdpbr("-n", lab.switch, "attach", "br0", "--grace", "600").returncode == 0  # no daemon here
    assert lab.c1.ping(lab.c2.ip)  # the fixture taught the bridge, so the mirror, both stations
    return lab


def _watch_in_pty(argv, rows=40, columns=200, timeout=30):
    """Run the CLI with a pseudo-terminal as stdout; returns (exit code, all it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    cmd = [os.path.join(os.path.dirname(sys.executable), "xdpbr"), *argv]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=ROOT)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(10), out.decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def _screen_rows(screen):
    text = screen.replace(watch.ERASE_LINE, "").replace(watch.ERASE_BELOW, "").replace("\r", "")
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


@pytest.mark.root
def test_the_watch_view_is_redrawn_in_place_on_a_terminal_with_rates_under_traffic(busy):
    lab = busy
    with Udp(lab.c1, lab.c2) as udp:
        assert wait_for(lambda: udp.sent >= 2000), "the traffic flows"
        code, out = _watch_in_pty(
            ["-n", lab.switch, "stats", "br0", "--watch", "--interval", "0.5", "--count", "4"]
        )
    assert code == 0
    assert out.startswith(watch.HIDE_CURSOR + watch.CLEAR) and out.endswith(watch.SHOW_CURSOR)
    screens = out.split(watch.HOME)[1:]
    assert len(screens) == 4, "one redraw an interval, each from the top"
    rows = _screen_rows(screens[-1])
    # veth ports run tc under auto: frames/s, bits/s, xdp/s, tc/s, bridge/s, fast share
    c1 = rows[lab.c1.port]
    assert c1[1] == "tc" and c1[2] != "0" and c1[3] != "0", c1
    assert c1[4] == "-" and c1[5] != "0", "c1's frames are forwarded by TC, and XDP does not run"
    assert lab.c2.port in rows and "total" in rows
    assert rows["total"][2] != "0"


@pytest.mark.root
def test_the_watch_view_through_a_pipe_is_plain_lines(busy):
    lab = busy
    res = xdpbr("-n", lab.switch, "stats", "br0", "--watch", "--interval", "0.2", "--count", "2")
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout
    assert res.stdout.count("xdpbr stats --watch") == 2
    assert sum(line.split()[:1] == [lab.c1.port] for line in res.stdout.splitlines()) == 2


@pytest.mark.root
def test_watch_in_json_is_one_object_an_interval_with_rates_that_add_up(busy):
    lab = busy
    with Udp(lab.c1, lab.c2) as udp:
        assert wait_for(lambda: udp.sent >= 2000), "the traffic flows"
        res = xdpbr("-j", "-n", lab.switch, "stats", "br0", "--watch", "--interval", "0.5", "--count", "3")
    assert res.returncode == 0, res.stderr
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(docs) == 3
    [bridge] = docs[-1]["bridges"]
    assert (bridge["bridge"], bridge["netns"]) == ("br0", lab.switch)
    ports = {p["port"]: p for p in bridge["ports"]}
    assert set(ports) == {lab.c1.port, lab.c2.port}
    c1 = ports[lab.c1.port]
    assert c1["tc_frames_per_s"] > 1000, c1  # 200-byte datagrams, tens of thousands a second
    assert c1["xdp_frames_per_s"] is None
    assert c1["frames_per_s"] == pytest.approx(c1["tc_frames_per_s"] + c1["bridge_frames_per_s"], abs=0.01)
    assert c1["bits_per_s"] >= 8 * 200 * c1["tc_frames_per_s"]
    assert docs[-1]["total"]["frames_per_s"] >= c1["frames_per_s"]


@pytest.mark.root
def test_plain_stats_lists_every_port_of_a_fresh_bridge_even_at_zero(two_containers):
    lab = two_containers
    # nothing sent yet; links may still send IPv6 noise, so only the zero rows are checked
    assert xdpbr("-n", lab.switch, "attach", "br0", "--grace", "600").returncode == 0
    res = xdpbr("-j", "-n", lab.switch, "stats", "br0")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["port"] for r in rows} == {lab.c1.port, lab.c2.port}
    for r in rows:
        if r["packets"] == 0:
            assert (r["attach"], r["reason"], r["bytes"]) == (None, None, 0)
    text = xdpbr("-n", lab.switch, "stats", "br0").stdout
    assert {line.split()[1] for line in text.splitlines()[1:]} == {lab.c1.port, lab.c2.port}
