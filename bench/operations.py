"""Operations under load: the fast path across daemon restarts and upgrades, and hot-plug.

restart   frames at a fixed rate between two veth containers through an accelerated bridge
          while `xdpbr daemon` is killed with SIGKILL and started again three times (one run),
          and while the bridge is upgraded twice in place (another run): each upgrade is an
          `xdpbr attach` compiled with another -DXDPBR_MAX_PORTS (512 <-> 1024), so the ports'
          maps change layout and are rebuilt from the kernel under traffic; the sink counts
          every frame (target: zero lost in either run).
hotplug   the curve of HOTPLUG_CASES: a bridge of 4, 64 and 256 veth ports, and 64 bridges of 4
          ports in 16 namespaces; each case's bridges attached (`auto`), one daemon started and
          settled (its record: every bridge adopted, a whole pin scan run), the ports'
          forward-delay timers over and the host quiet. Then HOTPLUG_JOINS joins, one at a
          time, spread over the bridges: a new veth, `ip -n NS link set PORT master BR up`,
          timed from the command's start until the port's entry is in the bridge's maps and
          xdpbr's TC program runs on it (a TCX link: the bridge's pinned TC program among the
          port's TCX ingress programs); the command's own time is the plain bridge's join. A
          port not accelerated within JOIN_TIMEOUT_S is missed; each one is deleted and must
          leave no slot (else left behind). Each join starts at a random phase (0-1 s) after
          the daemon settled, so the joins meet its periodic work (heartbeats, TCX polls, rule
          checks, pin scans) as a real join would. Targets (bench/report.py): median <= 50 ms
          and max <= 200 ms on the 256-port bridge and on the 64 bridges.
"""

import json
import os
import random
import signal
import threading
import time

from xdpbr.control.datapath import attachment
from xdpbr.control.datapath.session import Session
from xdpbr.loader import pins, tcread, tcx
from xdpbr.loader.netns import entered, existing_index

from bench.scenario import Scenario
from testbed import cpustat
from testbed.lab import batch, sh
from testbed.sources import open_source
from testbed.trafficgen import Traffic, attach_sinks

RATE = 100_000  # frames/s: well inside what every path carries, so a loss is a real loss
RESTARTS = 3
UPGRADES = 2
UPGRADE_PORTS = (512, 1024)  # -DXDPBR_MAX_PORTS toggled by each upgrade
# the hot-plug curve: (ports per bridge, bridges, namespaces), in the order measured
HOTPLUG_CASES = ((4, 1, 1), (64, 1, 1), (256, 1, 1), (4, 64, 16))
HOTPLUG_JOINS = 10  # a case
JOIN_TIMEOUT_S = 5.0  # a port not accelerated by then is missed
SETTLE_TIMEOUT_S = 120.0  # the daemon adopting every bridge of a case
FORWARD_DELAY_S = 20.0  # at most: a bridge's forward delay is 15 s


class RestartUnderLoad(Scenario):
    name = "restart"

    def __init__(self, mode="auto", generator="live"):
        self.mode, self.generator = mode, generator  # generator: live or packet (testbed.sources)
        self.max_ports = None  # the default size until the first upgrade
        super().__init__("xdpbr-bench-restart", programs=True)

    def _build(self):
        lab = self.lab
        lab.make_bridge()
        self.gen, self.sink = lab.container("g", ip="10.203.0.1"), lab.container("s", ip="10.203.0.2")
        lab.wait_forwarding()
        for conf in ("all", "default"):  # the sink counts every frame: no IPv6 chatter
            for host in (self.gen, self.sink):
                host.run("sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
        assert self.gen.ping(self.sink.ip), "no connectivity"  # the bridge learns both
        self.undo.push(attach_sinks(self.programs, self.sink.netns, "eth0"))
        sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.gen.port, "gro", "on")
        attachment.attach(lab.bridge, lab.switch, mode=self.mode)
        self.start_daemon()
        time.sleep(1.0)

    def forward_count(self):
        from xdpbr.control.datapath import state

        return state.forwarded(self.lab.bridge, self.lab.switch, self.gen.port)

    def _upgrade(self):
        """A real upgrade: a re-attach compiled with the other -DXDPBR_MAX_PORTS, so the ports'
        maps change layout and attach rebuilds them from the kernel while frames flow."""
        from xdpbr.loader.layouts import map_specs

        self.max_ports = UPGRADE_PORTS[1] if self.max_ports == UPGRADE_PORTS[0] else UPGRADE_PORTS[0]
        directory = pins.pin_dir(self.lab.bridge, self.lab.switch)
        stale = pins.stale_maps(directory, map_specs(self.max_ports, pins.sizes(directory)[1]))
        attachment.attach(self.lab.bridge, self.lab.switch, mode=self.mode, max_ports=self.max_ports)
        return stale

    def measure(self, kind, seconds=8.0):
        """{sent, received, lost, fast_path, ...} over one bounded run of `kind`: `restart` (the
        daemon SIGKILLed and started again RESTARTS times) or `upgrade` (UPGRADES re-attaches,
        each changing the map layout). One kind a run, so a loss is attributed to its cause."""
        traffic = Traffic(self.gen.mac, self.sink.mac, self.gen.ip, self.sink.ip, size=60)
        gen = open_source(self.generator, self.programs, self.gen.netns, "eth0", traffic)
        events = {"restarts": 0, "upgrades": 0, "rebuilt": set()}

        def disturb():
            count = RESTARTS if kind == "restart" else UPGRADES
            step = seconds / (count + 1)
            for _ in range(count):
                time.sleep(step)
                if kind == "restart":
                    self.daemon.send_signal(signal.SIGKILL)
                    self.daemon.wait(10)
                    self.start_daemon()
                    events["restarts"] += 1
                else:
                    events["rebuilt"].update(self._upgrade())
                    events["upgrades"] += 1

        before_sink, before_fast = self.programs.sink_total(), self.forward_count()
        thread = threading.Thread(target=disturb, daemon=True)
        thread.start()
        try:
            sent = gen.run_for(seconds, rate=RATE)
        finally:
            gen.close()
        thread.join(60)
        time.sleep(0.5)  # the last frames reach the sink
        received = self.programs.sink_total() - before_sink
        return {
            "kind": kind,
            "sent": sent,
            "received": received,
            "lost": sent - received,
            # a rebuilt xdpbr_stats starts from zero: no before/after difference then
            "fast_path": None if "xdpbr_stats" in events["rebuilt"] else self.forward_count() - before_fast,
            "generator": self.generator,
            **events,
            "rebuilt": sorted(events["rebuilt"]),
        }


def _nf_call_off(netns):
    """bridge-nf-call-* off in `netns` (per namespace: only the lab's), as Lab.make_bridge does."""
    with entered(netns):
        for name in ("iptables", "ip6tables", "arptables"):
            path = f"/proc/sys/net/bridge/bridge-nf-call-{name}"
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write("0")


def _until(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


class HotPlug(Scenario):
    """One case of the hot-plug curve: `bridges` bridges of `ports` veth ports each, spread over
    `namespaces` namespaces, all attached in `auto` mode and followed by one daemon; then
    measure(j) joins one new veth port to one of them (joins spread over the bridges)."""

    name = "hotplug"

    def __init__(self, ports, bridges=1, namespaces=1, phase=0):
        self.ports, self.bridges, self.namespaces = ports, bridges, namespaces
        self.targets = []  # (netns, bridge) in namespace order
        self.sessions, self.tcx = {}, {}
        self.phase = random.Random(phase)  # where in the daemon's loop each join falls
        self.setup_s = self.attach_s = None
        super().__init__("xdpbr-bench-hotplug")

    def _build(self):
        start = time.monotonic()
        per_ns = self.bridges // self.namespaces
        for k in range(self.namespaces):
            ns = self.lab.netns(f"sw{k}")
            _nf_call_off(ns)
            lines = []
            for b in range(per_ns):
                lines += [f"link add br{b} type bridge", f"link set br{b} up"]
                lines += [f"link add p{b}-{i} type veth peer q{b}-{i}" for i in range(self.ports)]
                lines += [f"link set p{b}-{i} master br{b} up" for i in range(self.ports)]
                lines += [f"link set q{b}-{i} up" for i in range(self.ports)]
                self.targets.append((ns, f"br{b}"))
            batch("ip", ns, lines)
        attach_start = time.monotonic()
        for ns, bridge in self.targets:
            attachment.attach(bridge, ns)
        self.attach_s = time.monotonic() - attach_start
        self.start_daemon()
        self._wait_daemon(timeout=SETTLE_TIMEOUT_S)
        # each port's forward-delay timer ends with a RTM_NEWLINK the daemon answers with a
        # reconcile: set-up, not hot-plug
        if not _until(self._no_forward_delay, FORWARD_DELAY_S):
            raise RuntimeError("hot-plug lab: ports' forward-delay timers still run")
        cpustat.wait_quiet()
        self._wait_daemon()
        self.setup_s = time.monotonic() - start

    def _wait_daemon(self, timeout=10.0):
        """Until the daemon has every bridge (none failed) and a whole pin scan begun after the
        call ran to the end of its loop turn (its record, written each turn)."""
        since = time.monotonic_ns()

        def settled():
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.daemon.returncode}")
            found = pins.read_daemon_record()
            if not found:
                return False
            rec = found[0]
            return (
                rec.pid == self.daemon.pid
                and rec.scanned_ns > since
                and rec.bridges == len(self.targets)
                and not rec.bridges_failed
            )

        if not _until(settled, timeout, step=0.01):
            raise RuntimeError(f"the daemon did not settle with {len(self.targets)} bridges in {timeout} s")

    def _no_forward_delay(self):
        for ns in self.lab.namespaces:
            out = sh("ip", "-n", ns, "-d", "-j", "link", "show")
            for link in json.loads(out):
                if link.get("linkinfo", {}).get("info_slave_data", {}).get("forward_delay_timer", 0):
                    return False
        return True

    def _session(self, target):
        """The bridge's pinned state and whether its ports' TC program is a TCX link (else the
        ingress filter, where TCX is missing), both found once."""
        if target not in self.sessions:
            ns, bridge = target
            session = Session(bridge, ns).open_pins()
            self.undo.push(session.close)
            self.sessions[target] = session
            some_port = next(iter(session.ports()))
            self.tcx[target] = session.prog_id("tc") in tcx.programs(ns, [some_port])[some_port][0]
        return self.sessions[target]

    def _accelerated(self, target, index):
        """The port's entry is written and xdpbr's TC program runs there (a TCX link, or the
        filter where TCX is missing)."""
        session = self.sessions[target]
        if session.ports().get(index) is None:
            return False
        ns = target[0]
        if self.tcx[target]:
            return session.prog_id("tc") in tcx.programs(ns, [index])[index][0]
        return tcread.XDPBR_FILTER in tcread.filters(ns, index, tcread.INGRESS_PARENT)

    def measure(self, j, timeout=JOIN_TIMEOUT_S):
        """Join j: a new veth made port of one bridge (`ip link set PORT master BR up`) while
        the daemon runs, one at a time. (plain, joined, left_behind): the seconds that command
        took (the bridge's own join), the seconds from its start until the port is accelerated
        (None: not within `timeout`), and whether the port's slot outlived its deletion."""
        per_ns = self.bridges // self.namespaces
        target = self.targets[(j % self.namespaces) * per_ns + j % per_ns]  # 64 bridges: another each
        ns, bridge = target
        session = self._session(target)
        port, peer = f"hp{j}", f"hq{j}"
        sh("ip", "-n", ns, "link", "add", port, "type", "veth", "peer", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        index = existing_index(ns, port)
        self._wait_daemon()  # the previous join's deletion and the new veth are behind it
        time.sleep(self.phase.random())  # a random phase of its periodic work
        start = time.monotonic()
        sh("ip", "-n", ns, "link", "set", port, "master", bridge, "up")
        plain = time.monotonic() - start
        joined = None
        while time.monotonic() - start < timeout:
            if self._accelerated(target, index):
                joined = time.monotonic() - start
                break
            time.sleep(0.001)
        sh("ip", "-n", ns, "link", "del", port)
        left_behind = not _until(lambda: index not in session.ports(), timeout, step=0.01)
        return plain, joined, left_behind
