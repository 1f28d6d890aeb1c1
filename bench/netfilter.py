"""netfilter: how fast the daemon honours a rule, and what watching the rules costs it.

Ten bridges, each in a namespace of its own with two veth ports, bridge-nf-call-iptables on and
500 legacy iptables rules in FORWARD (5,000 in all; ACCEPTs of single addresses, which hold no
port but must be walked), attached and followed by one `xdpbr daemon`. Measured:
  rule_to_hold_ms   a `--physdev-in PORT -j DROP` rule inserted on one bridge, until `show`
                    says that port is held (target: under 1 s)
  release_ms        the rule deleted, until the port is accelerated again
  daemon_cpu_percent  the daemon's CPU (utime + stime from /proc) over an idle window, in % of
                    one core (target: under 2 %). The window starts once no port's forward-delay
                    timer runs: each port sends one RTM_NEWLINK when it expires (15 s after it
                    came up, STP off too), which the daemon answers with a reconcile of its
                    bridge; those belong to the set-up, not to watching the rules.
"""

import json
import os
import subprocess
import time

from xdpbr.control.datapath import attachment, state

from bench.scenario import Scenario
from testbed.lab import Lab

BRIDGES = 10
RULES_PER_BRIDGE = 500
CPU_WINDOW_S = 10.0
WAIT_S = 10.0
SETTLE_S = 20.0  # at most: a bridge's forward delay is 15 s


def _run(netns, *argv, stdin=None):
    subprocess.run(
        ["ip", "netns", "exec", netns, *argv], check=True, input=stdin, text=True, capture_output=True
    )


def _held(lab, port):
    return {p["port"]: p["why"] for p in state.show(lab.bridge, lab.switch)[0]["ports"]}.get(
        port
    ) == "netfilter"


def _until(predicate, timeout=WAIT_S):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.005)
    return None


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NetfilterReaction(Scenario):
    """Several labs, so no lab of the base's: each one's close is in the journal."""

    name = "netfilter"

    def __init__(self):
        self.labs = []
        super().__init__(None)

    def _build(self):
        rules = "*filter\n" + "".join(
            f"-A FORWARD -s 10.98.{i // 250}.{i % 250 + 1}/32 -p tcp --dport {1000 + i} -j ACCEPT\n"
            for i in range(RULES_PER_BRIDGE)
        )
        for _ in range(BRIDGES):
            lab = Lab(prefix="xdpbr-bench-nf")
            self.labs.append(lab)
            self.undo.push(lab.close)
            lab.make_bridge(nf_call_iptables=True)
            lab.c1, lab.c2 = lab.container("c1"), lab.container("c2")
            _run(lab.switch, "iptables-legacy-restore", stdin=rules + "COMMIT\n")
            attachment.attach(lab.bridge, lab.switch, mode="tc", grace_s=86400)
        self.start_daemon()
        time.sleep(2.0)  # adoption and the first read of every namespace's rules

    def reaction(self, i):
        """(seconds until held, seconds until released) for a rule on one port of bridge i."""
        lab = self.labs[i % len(self.labs)]
        rule = ["FORWARD", "-m", "physdev", "--physdev-in", lab.c1.port, "-j", "DROP"]
        start = time.monotonic()
        _run(lab.switch, "iptables-legacy", "-I", *rule)
        held = _until(lambda: _held(lab, lab.c1.port))
        held = held and time.monotonic() - start
        start = time.monotonic()
        _run(lab.switch, "iptables-legacy", "-D", *rule)
        released = _until(lambda: not _held(lab, lab.c1.port))
        return held, released and time.monotonic() - start

    def _settled(self):
        """No port of any lab has its forward-delay timer running."""
        for lab in self.labs:
            argv = ["ip", "-n", lab.switch, "-d", "-j", "link", "show"]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            for link in json.loads(out):
                if link.get("linkinfo", {}).get("info_slave_data", {}).get("forward_delay_timer", 0):
                    return False
        return True

    def daemon_cpu_percent(self, seconds=CPU_WINDOW_S):
        _until(self._settled, timeout=SETTLE_S)
        before = _cpu_seconds(self.daemon.pid)
        time.sleep(seconds)
        return 100 * (_cpu_seconds(self.daemon.pid) - before) / seconds
