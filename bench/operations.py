"""Operations under load: the fast path across daemon restarts and upgrades, and hot-plug.

restart   frames at a fixed rate between two veth containers through an accelerated bridge
          while `xdpbr daemon` is killed with SIGKILL and started again three times (one run),
          and while the bridge is upgraded twice in place (another run): each upgrade is an
          `xdpbr attach` compiled with another -DXDPBR_MAX_PORTS (512 <-> 1024), so the ports'
          maps change layout and are rebuilt from the kernel under traffic; the sink counts
          every frame (target: zero lost in either run).
hotplug   with the daemon running, a veth is created and enslaved to the bridge 20 times; the
          time from `ip link set ... master` returning until the port runs xdpbr's program
          (target: median under 100 ms); each one is then deleted and must leave no slot.
"""

import signal
import threading
import time

from xdpbr.control.datapath import attachment
from xdpbr.control.datapath.session import Session
from xdpbr.loader import attach as at
from xdpbr.loader import tcx
from xdpbr.loader.netns import existing_index

from bench.scenario import Scenario
from testbed.lab import sh
from testbed.sources import open_source
from testbed.trafficgen import Traffic, attach_sinks

RATE = 100_000  # frames/s: well inside what every path carries, so a loss is a real loss
RESTARTS = 3
UPGRADES = 2
UPGRADE_PORTS = (512, 1024)  # -DXDPBR_MAX_PORTS toggled by each upgrade
HOTPLUGS = 20


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
        from xdpbr.loader import pins
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


class HotPlug(Scenario):
    name = "hotplug"

    def __init__(self):
        super().__init__("xdpbr-bench-hotplug")

    def _build(self):
        self.lab.make_bridge()
        self.lab.container("c1")
        self.lab.wait_forwarding()
        attachment.attach(self.lab.bridge, self.lab.switch)
        self.start_daemon()
        time.sleep(1.0)
        self.session = Session(self.lab.bridge, self.lab.switch).open_pins()
        self.undo.push(self.session.close)
        self.ipr = at.open_netlink(self.lab.switch)
        self.undo.push(self.ipr.close)

    def _accelerated(self, index):
        """The port's entry is written and xdpbr's TC program runs there (a TCX link, or the
        filter where TCX is missing)."""
        if self.session.ports().get(index) is None:
            return False
        ingress, _ = tcx.programs(self.lab.switch, [index])[index]
        return self.session.prog_id("tc") in ingress or at.has_xdpbr_filter(self.ipr, index)

    def measure(self, i, timeout=5.0):
        """Seconds from enslaving a new veth to xdpbr's program on it (None: never)."""
        ns = self.lab.switch
        sh("ip", "-n", ns, "link", "add", f"hp{i}", "type", "veth", "peer", f"hq{i}")
        sh("ip", "-n", ns, "link", "set", f"hq{i}", "up")
        index = existing_index(ns, f"hp{i}")
        sh("ip", "-n", ns, "link", "set", f"hp{i}", "up")
        sh("ip", "-n", ns, "link", "set", f"hp{i}", "master", self.lab.bridge)
        start = time.monotonic()
        joined = None
        while time.monotonic() - start < timeout:
            if self._accelerated(index):
                joined = time.monotonic() - start
                break
            time.sleep(0.001)
        sh("ip", "-n", ns, "link", "del", f"hp{i}")
        deadline = time.monotonic() + timeout
        while index in self.session.ports() and time.monotonic() < deadline:
            time.sleep(0.01)
        left_behind = index in self.session.ports()
        return joined, left_behind
