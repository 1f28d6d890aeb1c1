"""TCP throughput through a bridge between two veth containers, default offloads (iperf3 from
Debian, one stream): the Linux bridge and xdpbr in each mode."""

import json
import os

from xdpbr.control.datapath import attachment

from bench.scenario import Scenario
from bench.veth import GENERATOR_CPU, SWITCH_CPU

PORT = 5301
MODES = {"bridge": None, "xdp": "xdp", "tc": "tc", "xdp+tc": "xdp+tc", "auto": "auto"}


class TcpPath(Scenario):
    def __init__(self, name):
        self.name, self.mode = f"tcp-{name}", MODES[name]
        super().__init__(f"xdpbr-bench-tcp{name.replace('+', '')}")

    def _build(self):
        self.lab.make_bridge(nf_call_iptables=False)
        self.a, self.b = self.lab.container("a"), self.lab.container("b")
        self.lab.wait_forwarding()
        if self.mode:
            attachment.attach(self.lab.bridge, self.lab.switch, mode=self.mode, grace_s=86400)
        assert self.a.ping(self.b.ip), f"{self.name}: no connectivity"

    def measure(self, seconds):
        """Gbit/s received by the server over one iperf3 run of `seconds`. The client runs on
        GENERATOR_CPU, the server on SWITCH_CPU (`-A`): unpinned, the scheduler sometimes put
        both on one CPU, and one path's runs spread over 16-20 Gbit/s."""
        affinity = f"{GENERATOR_CPU},{SWITCH_CPU % os.cpu_count()}"
        with self.b.iperf3_server(PORT):
            res = self.a.run(
                "iperf3", "-c", self.b.ip, "-p", str(PORT), "-t", str(seconds), "-A", affinity, "-J",
                timeout=seconds + 30,
            )  # fmt: skip
        return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
