"""The daemon keeps the fast path in line with the bridge: FDB events, MAC moves, aging,
hot-plug, netfilter changes, and the grace period when no daemon runs."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.control.datapath.session import Session
from xdpbr.loader import pins

from tests.helpers import WAIT_S, accelerate, counters, counting, wait_for


def mirrored(lab, mac):
    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        return any(m == mac for m, _ in s.fdb_mirror().entries())


def learned(lab):
    """c1 and c2 talk, so the bridge learns both (if it had not yet), until the daemon has
    mirrored them."""
    assert lab.c1.ping(lab.c2.ip, count=2)
    assert wait_for(lambda: mirrored(lab, lab.c1.mac) and mirrored(lab, lab.c2.mac), timeout=WAIT_S)


def fast_pathed(lab, attach, count):
    """`count` pings from c1 arrive at c2, and c1's port forwarded each one at `attach`."""
    with counting(lab) as added:
        arrived = lab.c1.ping(lab.c2.ip, count=count)
    return arrived and added.get((lab.c1.port, attach, "forward"), 0) >= count


def ports(lab):
    return {p["port"]: p for p in state.show(lab.bridge, lab.switch)[0]["ports"]}


def active(lab):
    """The fast path runs: the last heartbeat is within the grace period (the fast path's own
    test, on the same jiffies)."""
    return state.show(lab.bridge, lab.switch)[0]["fast_path_active"]


@pytest.mark.root
def test_fdb_entries_follow_kernel_events(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="xdp")
    mac = "02:00:00:00:00:51"
    subprocess.run(
        ["bridge", "-n", lab.switch, "fdb", "add", mac, "dev", lab.c1.port, "master", "static"], check=True
    )
    assert wait_for(lambda: mirrored(lab, mac), timeout=WAIT_S)
    subprocess.run(["bridge", "-n", lab.switch, "fdb", "del", mac, "dev", lab.c1.port, "master"], check=True)
    assert wait_for(lambda: not mirrored(lab, mac), timeout=WAIT_S)


@pytest.mark.root
def test_a_station_learned_after_attach_gets_the_fast_path(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="xdp")
    learned(lab)
    assert fast_pathed(lab, "xdp", 3)


@pytest.mark.root
def test_a_mac_move_is_never_misdelivered(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="xdp")
    assert lab.c1.ping(lab.c2.ip)
    assert wait_for(lambda: mirrored(lab, lab.c1.mac))
    moved_mac, moved_ip = lab.c1.mac, lab.c1.ip
    c3 = lab.container("c3", ip="10.200.0.99")
    lab.wait_forwarding()
    # a move between two accelerated ports: wait until the daemon has taken the new one in
    assert wait_for(lambda: ports(lab).get(c3.port, {}).get("xdp_egress"), timeout=5)
    # the station moves: c1 goes away, c3 takes over its MAC and address
    lab.c1.run("ip", "link", "set", "eth0", "down")
    c3.run("ip", "link", "set", "eth0", "down")
    c3.run("ip", "link", "set", "eth0", "address", moved_mac)
    c3.run("ip", "addr", "flush", "dev", "eth0")
    c3.run("ip", "addr", "add", f"{moved_ip}/24", "dev", "eth0")
    c3.run("ip", "link", "set", "eth0", "up")
    lab.wait_forwarding(ports=[c3.port, lab.c2.port])
    c3.run("ping", "-c1", "-W", "1", lab.c2.ip, check=False)  # frames from the new port
    assert lab.c2.ping(moved_ip, count=3), "frames to a moved MAC must reach its new port"
    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        entries = s.fdb_mirror().entries()
        holders = {e.ifindex for (m, _), e in entries.items() if m == moved_mac}
    c3_index = int(
        subprocess.run(
            ["ip", "-n", lab.switch, "-o", "link", "show", c3.port], capture_output=True, text=True
        ).stdout.split(":")[0]
    )
    assert holders <= {c3_index}


@pytest.mark.root
def test_kernel_aging_stays_true_for_stations_only_the_fast_path_sees(two_containers, daemon):
    lab = two_containers
    subprocess.run(
        ["ip", "-n", lab.switch, "link", "set", "br0", "type", "bridge", "ageing_time", "300"], check=True
    )
    accelerate(lab, daemon, mode="xdp")
    learned(lab)
    with counting(lab) as added:
        # 5 s of traffic on the fast path only, longer than the bridge's 3 s ageing time
        lab.c1.run("ping", "-c", "25", "-i", "0.2", "-q", lab.c2.ip, check=False)
    assert added.get((lab.c1.port, "xdp", "forward"), 0) >= 20, "the traffic must have taken the fast path"
    fdb = subprocess.run(
        ["bridge", "-n", lab.switch, "-s", "fdb", "show", "br", "br0"], capture_output=True, text=True
    ).stdout
    line = next((ln for ln in fdb.splitlines() if ln.startswith(lab.c1.mac) and "master" in ln), "")
    assert line, f"{lab.c1.mac} aged out of the kernel FDB although it was in use:\n{fdb}"
    used, updated = map(int, re.search(r"used (\d+)/(\d+)", line).groups())
    assert updated <= 2, f"kernel entry not refreshed: {line}"


@pytest.mark.root
def test_without_a_daemon_the_fast_path_stops_after_the_grace_period(two_containers):
    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)  # learned before attach, so the mirror has both
    attachment.attach(lab.bridge, lab.switch, mode="xdp", grace_s=1.0)
    assert fast_pathed(lab, "xdp", 2)
    assert wait_for(lambda: not active(lab), timeout=WAIT_S), "the grace period never ended"
    with counting(lab) as added:
        assert lab.c1.ping(lab.c2.ip, count=2), "the bridge keeps forwarding after the grace period"
    assert added.get((lab.c1.port, "xdp", "stale_mirror"), 0) >= 2
    assert not active(lab)


@pytest.mark.root
def test_a_restarted_daemon_resumes_the_fast_path(two_containers, daemon):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp", grace_s=1.0)
    assert wait_for(lambda: not active(lab), timeout=WAIT_S), "the grace period never ended"
    daemon()
    assert wait_for(lambda: active(lab), timeout=WAIT_S)
    assert lab.c1.ping(lab.c2.ip, count=2)
    assert fast_pathed(lab, "xdp", 2)


@pytest.mark.root
def test_hot_plugged_ports_join_and_leave(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon)
    c3 = lab.container("c3")
    assert wait_for(lambda: c3.port in ports(lab), timeout=WAIT_S)
    assert (ports(lab)[c3.port]["mode"], ports(lab)[c3.port]["why"]) == ("tc", "auto")
    vm = lab.vm("vm9")
    assert wait_for(lambda: vm.port in ports(lab) and ports(lab)[vm.port]["mode"] == "xdp+tc", timeout=WAIT_S)
    subprocess.run(["ip", "-n", lab.switch, "link", "del", c3.port], check=True)
    assert wait_for(lambda: c3.port not in ports(lab), timeout=WAIT_S)


@pytest.mark.root
def test_port_state_changes_are_followed(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="xdp")
    subprocess.run(
        ["bridge", "-n", lab.switch, "link", "set", "dev", lab.c2.port, "isolated", "on"], check=True
    )
    subprocess.run(
        ["bridge", "-n", lab.switch, "link", "set", "dev", lab.c1.port, "isolated", "on"], check=True
    )
    isolated = wait_for(lambda: not lab.c1.ping(lab.c2.ip, count=1), timeout=WAIT_S)
    assert isolated, "isolated ports must not talk"
    subprocess.run(
        ["bridge", "-n", lab.switch, "link", "set", "dev", lab.c1.port, "isolated", "off"], check=True
    )
    assert wait_for(lambda: lab.c1.ping(lab.c2.ip, count=1), timeout=WAIT_S)


def nft(lab, *argv):
    subprocess.run(["nsenter", f"--net=/run/netns/{lab.switch}", "nft", *argv], check=True)


@pytest.mark.root
def test_a_bridge_netfilter_rule_is_respected_then_bypassed(two_containers):
    lab = two_containers
    nft(lab, "add", "table", "bridge", "filter")
    nft(lab, "add", "chain", "bridge", "filter", "forward", "{ type filter hook forward priority 0; }")
    nft(
        lab,
        "add",
        "rule",
        "bridge",
        "filter",
        "forward",
        "ip",
        "daddr",
        lab.c2.ip,
        "icmp",
        "type",
        "echo-request",
        "drop",
    )
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    shown = state.show(lab.bridge, lab.switch)[0]
    assert {(p["mode"], p["why"]) for p in shown["ports"]} == {("bridge", "netfilter")}
    assert not lab.c1.ping(lab.c2.ip, count=2), "the netfilter rule must still apply"
    attachment.attach(lab.bridge, lab.switch, mode="xdp", netfilter_choice="bypass")
    shown = state.show(lab.bridge, lab.switch)[0]
    assert shown["netfilter"] == "bypass"
    assert {p["mode"] for p in shown["ports"]} == {"xdp"}
    assert lab.c1.ping(lab.c2.ip, count=2), "bypass: the fast path skips the rule"


@pytest.mark.root
def test_the_daemon_rechecks_netfilter_when_rules_change(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon, mode="xdp")
    assert {p["mode"] for p in ports(lab).values()} == {"xdp"}
    nft(lab, "add", "table", "bridge", "filter")
    nft(lab, "add", "chain", "bridge", "filter", "forward", "{ type filter hook forward priority 0; }")
    nft(lab, "add", "rule", "bridge", "filter", "forward", "counter")  # counts only: holds nothing
    nft(lab, "add", "rule", "bridge", "filter", "forward", "ip", "protocol", "udp", "drop")
    assert wait_for(lambda: {p["why"] for p in ports(lab).values()} == {"netfilter"}, timeout=WAIT_S)
    nft(lab, "delete", "table", "bridge", "filter")
    assert wait_for(lambda: {p["mode"] for p in ports(lab).values()} == {"xdp"}, timeout=WAIT_S)


@pytest.mark.root
def test_detach_leaves_the_bridge_exactly_as_before(two_containers):
    lab = two_containers

    def snapshot():
        out = {}
        for cmd in (["ip", "-d", "link", "show"], ["tc", "qdisc", "show"], ["bridge", "link", "show"]):
            text = subprocess.run([cmd[0], "-n", lab.switch, *cmd[1:]], capture_output=True, text=True).stdout
            text = re.sub(r"\w+_timer\s+[\d.]+", "", text)  # running timers are not configuration
            out[cmd[0]] = re.sub(r"\s+", " ", text)
        for host in (lab.c1, lab.c2):
            out[host.name] = host.run("ethtool", "-k", "eth0").stdout
        return out

    before = snapshot()
    attachment.attach(lab.bridge, lab.switch, mode="xdp+tc")
    assert snapshot() != before
    attachment.detach(lab.bridge, lab.switch)
    assert snapshot() == before
    assert lab.c1.ping(lab.c2.ip)
    assert json.dumps(state.show()).count(lab.switch) == 0


@pytest.mark.root
def test_detach_while_the_daemon_runs_stays_detached(two_containers, daemon):
    lab = two_containers
    d = accelerate(lab, daemon, mode="xdp")
    assert lab.c1.ping(lab.c2.ip)
    attachment.detach(lab.bridge, lab.switch)
    lab.container("c3")  # a port event that would make a confused daemon reconcile
    # the daemon has seen the detach (it holds no bridge) in a scan after the port came, so its
    # link event, read by then, met no bridge to reconcile
    assert d.settled().bridges == 0
    links = subprocess.run(["ip", "-n", lab.switch, "link", "show"], capture_output=True, text=True).stdout
    assert "prog/xdp" not in links


@pytest.mark.root
def test_the_daemon_follows_an_upgrade_in_place(two_containers, daemon):
    lab = two_containers
    d = accelerate(lab, daemon, mode="xdp")
    attachment.attach(lab.bridge, lab.switch, mode="xdp")  # new programs, same maps
    new_id = state.show(lab.bridge, lab.switch)[0]["xdp_prog_id"]
    c3 = lab.container("c3")
    assert wait_for(lambda: ports(lab).get(c3.port, {}).get("xdp_prog_id") == new_id, timeout=WAIT_S)
    assert d.settled().bridges_failed == 0  # a whole scan later, the bridge adopted anew and healthy
    assert {p["xdp_prog_id"] for p in ports(lab).values()} == {new_id}, (
        "the daemon must not restore old programs"
    )
    assert state.show(lab.bridge, lab.switch)[0]["fast_path_active"]


def daemon_counters(lab):
    from xdpbr.loader import bpfsys
    from xdpbr.loader.layouts import CONTROL_DAEMON, U32, Control

    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        value = Control()
        bpfsys.map_lookup(s.maps["xdpbr_control"], U32(CONTROL_DAEMON), value)
        return value.fdb_events, value.sync_lag_ns_sum


@pytest.mark.root
def test_sync_lag_runs_from_the_bridge_learning_the_mac(two_containers, daemon):
    """The lag starts at bridge:br_fdb_update, not when the daemon reads the event: a daemon
    that is frozen while the bridge learns must report the time it was frozen."""
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    d = daemon()
    assert wait_for(lambda: mirrored(lab, lab.c1.mac) or lab.c1.ping(lab.c2.ip, count=1), timeout=5)
    new_mac = "02:00:00:00:00:77"
    lab.c1.run("ip", "link", "set", "eth0", "address", new_mac)
    events, lag_sum = daemon_counters(lab)
    d.proc.send_signal(signal.SIGSTOP)
    try:
        thaw_at = time.monotonic() + 0.5  # the daemon stays stopped this long: what the lag must show
        lab.c1.run("ping", "-c1", "-W", "1", lab.c2.ip, check=False)  # the bridge learns new_mac
        assert wait_for(lambda: kernel_learned(lab, new_mac), timeout=WAIT_S)
        wait_for(lambda: time.monotonic() >= thaw_at, timeout=1)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    assert wait_for(lambda: mirrored(lab, new_mac), timeout=WAIT_S)

    def frozen_time_counted():  # the counters reach the map with the next heartbeat (1 s)
        new_events, new_sum = daemon_counters(lab)
        # the learn of new_mac alone accounts for the 0.5 s the daemon was stopped
        return new_events > events and new_sum - lag_sum >= 0.45e9

    assert wait_for(frozen_time_counted, timeout=WAIT_S), (events, lag_sum, daemon_counters(lab))


def kernel_learned(lab, mac):
    fdb = subprocess.run(
        ["bridge", "-n", lab.switch, "fdb", "show", "br", lab.bridge], capture_output=True, text=True
    ).stdout
    return any(line.startswith(mac) and "master" in line for line in fdb.splitlines())


def macs(count, prefix):
    """`count` distinct unicast MACs starting with byte `prefix`."""
    return [
        f"{prefix:02x}:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}:01"
        for i in range(count)
    ]


def send_from(host, sources, dst_mac):
    """One UDP frame from each source MAC, out of the host's eth0 (AF_PACKET)."""
    from testbed.frames import udp_frame
    from tests.traffic import packet_socket

    with packet_socket(host.netns, "eth0", receive=False) as sock:
        for mac in sources:
            sock.send(udp_frame(dst_mac, mac, "10.200.0.250", "10.200.0.251", 60))


@pytest.mark.root
def test_a_mac_flood_fills_the_mirror_but_pushes_no_station_out(two_containers, daemon):
    from xdpbr.loader.layouts import FDB_SIZE

    lab = two_containers
    accelerate(lab, daemon, mode="tc")
    learned(lab)
    flood = macs(FDB_SIZE + 300, 0x06)
    send_from(lab.c1, flood, lab.c2.mac)  # the bridge learns them all (no fdb_max_learned)
    full = lambda: state.show(lab.bridge, lab.switch)[0]["fdb_mirror_full"]  # noqa: E731
    assert wait_for(full, timeout=60), "the mirror never said it was full"
    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        mirror = s.fdb_mirror().entries()
    assert len(mirror) == FDB_SIZE  # fixed capacity: memory does not grow with the flood
    assert (lab.c1.mac, 0) in mirror and (lab.c2.mac, 0) in mirror  # nobody was pushed out
    assert fast_pathed(lab, "tc", 3)  # known stations stay fast
    refused = [m for m in flood if (m, 0) not in mirror][:5]
    assert refused
    full = (lab.c1.port, "tc", "fdb_full")
    full_before = counters(lab).get(full, 0)
    send_from(lab.c1, refused, lab.c2.mac)
    assert wait_for(lambda: counters(lab).get(full, 0) >= full_before + 5, timeout=WAIT_S)


@pytest.mark.root
def test_the_bridge_limit_on_learned_entries_holds(two_containers):
    from xdpbr.loader import bridge_limits

    lab = two_containers
    bridge_limits.set_fdb_max_learned(lab.bridge, lab.switch, 100)
    send_from(lab.c1, macs(300, 0x0A), lab.c2.mac)
    assert wait_for(lambda: bridge_limits.fdb_learned(lab.bridge, lab.switch) == (100, 100), timeout=WAIT_S)


@pytest.mark.root
def test_a_tap_hot_plugged_while_traffic_flows_gets_the_fast_path_and_leaves_nothing(two_containers, daemon):
    lab = two_containers
    accelerate(lab, daemon)
    assert lab.c1.ping(lab.c2.ip)
    background = subprocess.Popen(  # bounded: 150 pings over ~1.5 s
        [
            "nsenter",
            f"--net=/run/netns/{lab.c1.netns}",
            "ping",
            "-q",
            "-c",
            "150",
            "-i",
            "0.01",
            "-W",
            "1",
            lab.c2.ip,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    vm = lab.vm("vm8")  # QEMU creating a VM's TAP and enslaving it
    assert wait_for(lambda: ports(lab).get(vm.port, {}).get("mode") == "xdp+tc", timeout=WAIT_S)
    lab.wait_forwarding(ports=[vm.port])
    assert vm.ping(lab.c1.ip, count=2)
    # the bridge has learned the guest's MAC; fast-path frames need the daemon to mirror it (the
    # sync lag is measured on its own), so a loaded machine must not turn that lag into a failure
    assert wait_for(lambda: mirrored(lab, vm.mac), timeout=WAIT_S)
    with counting(lab) as added:
        assert vm.ping(lab.c1.ip, count=5)
    assert added.get((vm.port, "xdp", "forward"), 0) >= 3  # the new port is fast-pathed
    out, _ = background.communicate(timeout=30)
    assert background.returncode == 0 and " 0% packet loss" in out, out  # nothing else was disturbed
    slot = ports(lab)[vm.port]["slot"]
    ifindex = ports(lab)[vm.port]["ifindex"]
    subprocess.run(["ip", "-n", lab.switch, "link", "del", vm.port], check=True)  # the VM goes away
    assert wait_for(lambda: vm.port not in ports(lab), timeout=WAIT_S)
    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        assert ifindex not in s.ports()
        # the bridge flushes the port's entries (RTM_DELNEIGH each); the mirror follows
        assert wait_for(lambda: not any(e.ifindex == ifindex for e in s.fdb_mirror().entries().values()))
        from xdpbr.loader import bpfsys
        from xdpbr.loader.layouts import U32

        assert not bpfsys.map_lookup(s.maps["xdpbr_devmap"], U32(slot), U32())  # no DEVMAP entry


@pytest.mark.root
def test_an_upgrade_rebuilds_maps_whose_layout_changed_and_keeps_the_others(two_containers, daemon):
    from xdpbr.loader import pins

    lab = two_containers
    accelerate(lab, daemon, mode="tc")
    assert lab.c1.ping(lab.c2.ip, count=3)
    fast = (lab.c1.port, "tc", "forward")
    fast_before = counters(lab).get(fast, 0)
    assert fast_before >= 2
    # what an older xdpbr left: an FDB mirror of another capacity (the running programs keep
    # the map they have; only the pin is another layout now)
    pin_dir = pins.pin_dir(lab.bridge, lab.switch)
    fdb_pin = f"{pin_dir}/xdpbr_fdb"
    os.unlink(fdb_pin)
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            fdb_pin,
            "type",
            "hash",
            "key",
            "8",
            "value",
            "16",
            "entries",
            "64",
            "name",
            "xdpbr_fdb",
        ],
        check=True,
    )
    attachment.attach(lab.bridge, lab.switch, mode="tc")  # the upgrade
    assert not [n for n in os.listdir(pin_dir) if n.endswith("_old_layout")]
    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()  # every layout checks out again
        mirror = s.fdb_mirror().entries()
    assert (lab.c1.mac, 0) in mirror and (lab.c2.mac, 0) in mirror  # rebuilt from the kernel
    assert counters(lab).get(fast, 0) >= fast_before  # counters were kept
    assert lab.c1.ping(lab.c2.ip, count=3)
    assert counters(lab).get(fast, 0) >= fast_before + 2


@pytest.mark.root
def test_a_bridge_that_comes_and_goes_leaves_no_socket_or_thread_in_the_daemon(two_containers, daemon):
    """A service outlives many attach/detach cycles (and namespaces coming and going): each
    adoption opens netlink listeners, a broker and their threads, and dropping the bridge must
    give every one of them back."""
    from xdpbr.control.endpoints.client import socket_path

    lab = two_containers
    d = daemon()

    def resources():
        return len(os.listdir(f"/proc/{d.proc.pid}/fd")), len(os.listdir(f"/proc/{d.proc.pid}/task"))

    baseline = resources()
    broker = socket_path(lab.bridge, lab.switch)
    for _ in range(3):
        attachment.attach(lab.bridge, lab.switch, mode="xdp")
        assert wait_for(lambda: os.path.exists(broker), timeout=WAIT_S), "not adopted"
        assert lab.c1.ping(lab.c2.ip, count=1)  # FDB events reach the listener
        attachment.detach(lab.bridge, lab.switch)
        assert wait_for(lambda: not os.path.exists(broker), timeout=WAIT_S), "not dropped"
    assert wait_for(lambda: resources() == baseline, timeout=WAIT_S), (baseline, resources())


@pytest.mark.root
def test_daemon_once_resyncs_and_leaves_the_running_daemons_broker_socket_alone(two_containers, daemon):
    from xdpbr.control.endpoints import client as broker

    from tests.helpers import xdpbr

    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    sock = broker.socket_path(lab.bridge, lab.switch)
    running = daemon()
    assert wait_for(lambda: os.path.exists(sock), timeout=WAIT_S)
    inode = os.stat(sock).st_ino
    res = xdpbr("daemon", "--once")
    assert res.returncode == 0, res.stderr
    assert os.stat(sock).st_ino == inode, "--once replaced the running daemon's broker socket"
    running.stop()
    assert not os.path.exists(sock)
    res = xdpbr("daemon", "--once")  # alone: it resyncs and leaves no socket behind
    assert res.returncode == 0, res.stderr
    assert not os.path.exists(sock)


@pytest.mark.root
def test_a_dead_fdb_listener_is_restarted_with_a_resync_and_counted(two_containers, monkeypatch):
    """An FDB reader that dies on an OSError (not an overrun) is started again and the bridge
    resynced: a MAC whose event killed it still reaches the mirror."""
    import errno
    import threading

    from xdpbr.control import config
    from xdpbr.control.daemon.service import Daemon
    from xdpbr.loader import events, neigh

    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    failures = []

    def failing_parse(buf):
        msgs = neigh.parse(buf)[0]
        if any(m.lladdr == bytes.fromhex("020000000052") for m in msgs) and not failures:
            failures.append(1)
            raise OSError(errno.EIO, "injected")
        return msgs

    protocol, group, rcvbuf, _ = events.KINDS["fdb"]
    monkeypatch.setitem(events.KINDS, "fdb", (protocol, group, rcvbuf, failing_parse))
    d = Daemon(config.Config())
    runner = threading.Thread(target=d.run, daemon=True)
    runner.start()
    try:
        assert wait_for(
            lambda: (lab.bridge, lab.switch) in d.workers and d.workers[(lab.bridge, lab.switch)].healthy
        )
        first = d.listeners[lab.switch]
        mac = "02:00:00:00:00:52"
        subprocess.run(
            ["bridge", "-n", lab.switch, "fdb", "add", mac, "dev", lab.c1.port, "master", "static"],
            check=True,
        )
        assert wait_for(lambda: mirrored(lab, mac), timeout=WAIT_S), "the MAC never reached the mirror"
        assert failures, "the injected failure did not happen"
        assert d.listeners[lab.switch] is not first and d.listeners[lab.switch].failure is None
        assert d.workers[(lab.bridge, lab.switch)].counters.errors >= 1
        # the daemon's thread marks the bridge healthy just after the resync wrote the mirror
        assert wait_for(lambda: d.workers[(lab.bridge, lab.switch)].healthy, timeout=WAIT_S)
    finally:
        d.stopping = True
        runner.join(10)


@pytest.mark.root
def test_a_namespace_deleted_under_the_daemon_is_forgotten_and_the_other_bridges_kept(daemon):
    from testbed.lab import Lab, sh

    with Lab(prefix="xdpbr-t-gone") as gone, Lab(prefix="xdpbr-t-kept") as kept:
        for lab in (gone, kept):
            lab.make_bridge()
            lab.c1 = lab.container("c1")
            lab.wait_forwarding()
            attachment.attach(lab.bridge, lab.switch, mode="tc")
        d = daemon()
        gone_pins = pins.pin_dir(gone.bridge, gone.switch)
        assert os.path.isdir(gone_pins)
        sh("ip", "netns", "del", gone.switch)
        assert wait_for(lambda: not os.path.exists(gone_pins), timeout=WAIT_S), "its pins were kept"
        from xdpbr.control.netfilter import store as netfilter

        assert wait_for(lambda: netfilter.load(gone.bridge, gone.switch) is None, timeout=WAIT_S)
        since = time.monotonic_ns()
        kept_age = lambda: state.show(kept.bridge, kept.switch)[0]["heartbeat_age_s"]  # noqa: E731

        def served_on():  # a netfilter check, a scan and a heartbeat of the other bridge later
            rec = d.record()
            checked = rec.rules_checked_ns > since and rec.scanned_ns > since
            return checked and kept_age() < (time.monotonic_ns() - since) / 1e9

        assert wait_for(served_on, timeout=WAIT_S), f"the other bridge's heartbeat stopped ({kept_age()} s)"
        assert d.proc.poll() is None, f"the daemon exited: {d.stop()}"
        assert d.record().bridges == 1 and d.record().bridges_failed == 0
