"""One bench scenario's set-up and teardown, written once.

A scenario owns a lab (namespaces and a bridge, testbed/lab.py), the benchmark's BPF programs
when it sends or counts frames (bpf/bench.c), and a journal of undo steps for everything else
it changes on the host (programs attached to interfaces, sockets, daemons, directories).
close() undoes the journal in reverse, then closes the programs, then removes the lab; a
failure while building closes what was built and re-raises, so a half-built scenario leaves
nothing behind.
"""

import abc
import os
import subprocess
import sys

from xdpbr.loader.journal import Journal

from testbed.lab import Lab
from testbed.trafficgen import BenchPrograms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_daemon():
    """`xdpbr daemon` of this checkout, quiet (benchmarks read the maps, not its log)."""
    return subprocess.Popen(
        [sys.executable, "-m", "xdpbr.control.cli", "daemon"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Scenario(abc.ABC):
    """Subclasses set what _build needs, then call `super().__init__(prefix, *args)`, which
    builds through `_build(*args)`. `prefix` names the lab's namespaces; None: no lab (a
    scenario of several labs registers each one's close in the journal)."""

    def __init__(self, prefix, *args, programs=False):
        self.lab = Lab(prefix=prefix) if prefix else None
        self.programs = None
        self.undo = Journal()
        self.daemon = None
        try:
            if programs:
                self.programs = BenchPrograms()
            self._build(*args)
        except BaseException:
            self.close()
            raise

    @abc.abstractmethod
    def _build(self, *args):
        """Build the scenario: the lab's topology, programs attached, daemons started, each
        change that close() must undo pushed onto self.undo."""

    def start_daemon(self):
        """start_daemon() as self.daemon; close() stops whichever one runs then (a scenario may
        kill it and start another)."""
        if self.daemon is None:
            self.undo.push(self._stop_daemon)
        self.daemon = start_daemon()

    def _stop_daemon(self):
        self.daemon.terminate()
        self.daemon.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.undo.rollback()
        if self.programs:
            self.programs.close()
        if self.lab:
            self.lab.close()
