"""Fixtures: real namespaces, a compiled fast path for PROG_TEST_RUN, a running daemon.

Every namespace starts with a unique `xdpbr-t-<hex>` prefix and is deleted in a finaliser,
with the pins of bridges inside it, also when the test fails. The whole run is one xdpbr
instance of its own (`test-<hex>`, set before any xdpbr module reads a path), so neither the
tests nor the daemons they start see or touch the host's own xdpbr; its directories are removed
when the run ends.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.helpers import WAIT_S, remove_instance_state, wait_for  # noqa: E402 - fixtures below use them

os.environ["XDPBR_INSTANCE"] = f"test-{secrets.token_hex(4)}"  # inherited by every CLI and daemon


@pytest.fixture(scope="session", autouse=True)
def own_instance():
    """Removes this run's instance directories at the end (labs already took their bridges)."""
    from xdpbr.loader import instance

    yield instance.name()
    remove_instance_state()


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: BPF, netlink and network namespaces")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
        return
    if any("live_frames" in item.keywords for item in items):
        from xdpbr.loader.probe import live_frames_refusal

        refusal = live_frames_refusal()  # probed once: a two-instruction program, one run
        if refusal:
            skip = pytest.mark.skip(reason=refusal)
            for item in items:
                if "live_frames" in item.keywords:
                    item.add_marker(skip)


@pytest.fixture
def lab():
    from testbed.lab import Lab

    with Lab(prefix="xdpbr-t") as lab:
        yield lab


@pytest.fixture
def two_containers(lab):
    """A bridge with two containers, every port forwarding."""
    lab.make_bridge()
    lab.c1 = lab.container("c1")
    lab.c2 = lab.container("c2")
    lab.wait_forwarding()
    lab.introduce(lab.c1, lab.c2)
    return lab


@pytest.fixture
def bridge_lab(two_containers):
    """A bridge with two containers and two VMs, every port forwarding."""
    lab = two_containers
    lab.vm1 = lab.vm("vm1")
    lab.vm2 = lab.vm("vm2")
    lab.wait_forwarding()
    lab.introduce(lab.c1, lab.vm1, lab.vm2)
    return lab


class DaemonProcess:
    """`xdpbr daemon` in a child process, started the way systemd starts it (Type=notify):
    the constructor returns once the daemon says READY=1, i.e. its first scan is done and
    every attached bridge is adopted and resynced. A fixed sleep instead raced a slow start
    (a test froze a daemon that had not yet read the FDB).

    Later waits read the daemon's record (struct xdpbr_daemon, pinned per instance), never a
    clock or a log line: `settled()` returns once a whole pin scan ran after the call,
    `reload()` once a SIGHUP's reload has a result. With `listen=True` the notify socket stays
    open and `notices()` returns what the daemon sent systemd since."""

    READY_TIMEOUT_S = 30

    def __init__(self, *args, env=None, listen=False):
        self._dir = tempfile.mkdtemp(prefix="xdpbr-t-notify-")
        notify_path = os.path.join(self._dir, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.messages = []  # every datagram the daemon sent to NOTIFY_SOCKET, as lists of lines
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xdpbr.control.cli", "daemon", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), "NOTIFY_SOCKET": notify_path},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        finally:
            if not listen:
                self._close_notify()

    def _close_notify(self):
        if self.notify:
            self.notify.close()
            self.notify = None
            shutil.rmtree(self._dir, ignore_errors=True)

    def _receive(self, timeout):
        """One datagram from the daemon within `timeout` s (its lines), or None."""
        self.notify.settimeout(timeout)
        try:
            lines = self.notify.recv(4096).decode().split("\n")
        except TimeoutError:
            return None
        self.messages.append(lines)
        return lines

    def _wait_ready(self):
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            if "READY=1" in (self._receive(0.2) or ()):
                return
        pytest.fail(f"the daemon did not report READY=1 within {self.READY_TIMEOUT_S} s")

    def notices(self, until, timeout=WAIT_S):
        """Datagrams received so far (lists of lines), after waiting up to `timeout` s until
        until(datagrams) is true (listen=True only)."""
        deadline = time.monotonic() + timeout
        while not until(self.messages) and time.monotonic() < deadline:
            self._receive(max(deadline - time.monotonic(), 0.001))
        return self.messages

    def record(self):
        """The daemon's record as `show -j` and the metrics read it (a DaemonRecord)."""
        from xdpbr.loader import pins

        found = pins.read_daemon_record()
        assert found, "the daemon left no record"
        return found[0]

    def settled(self, timeout=WAIT_S):
        """Returns once a pin scan that began after this call has run to the end of its loop
        turn (the record is written at the end of each turn): whatever the daemon was going to
        do about a change made before the call (adopt, drop, re-attach), it has done."""
        since = time.monotonic_ns()
        assert wait_for(lambda: self.record().scanned_ns > since, timeout=timeout), (
            f"the daemon did not scan within {timeout} s"
        )
        return self.record()

    def reload(self, timeout=WAIT_S):
        """SIGHUP, then the record once it holds the result of a reload begun after the signal."""
        sent = time.monotonic_ns()
        self.proc.send_signal(signal.SIGHUP)

        def done():
            rec = self.record()
            return rec.reload_started_ns >= sent and rec.reload_finished_ns >= rec.reload_started_ns

        assert wait_for(done, timeout=timeout), f"no reload result within {timeout} s"
        return self.record()

    def stop(self, sig=None):
        if self.proc.poll() is None:
            if sig:
                self.proc.send_signal(sig)
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self._close_notify()
        return self.proc.stderr.read()


@pytest.fixture
def daemon():
    """Starts `xdpbr daemon` and waits for READY=1; tests attach first or let it adopt bridges
    attached later."""
    procs = []

    def start(*args, env=None, listen=False):
        d = DaemonProcess(*args, env=env, listen=listen)
        procs.append(d)
        return d

    yield start
    for d in procs:
        d.stop()
