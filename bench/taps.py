"""QEMU's TAP path for VMs: TAP endpoints (vnet_hdr, read and writev, as QEMU's TAP backend)
driven from Python.

tap-loop  two TAP endpoints joined by a userspace relay like QEMU's main loop: poll, read a
          frame from one, writev it into the other, stop reading while the other says EAGAIN.
          The kernel feeds the first TAP (live-frames XDP_TX into it: what the host sends to
          the VM) and an XDP sink counts at the second (it sees what userspace writes); or,
          without live frames, the bouncer at the second redirects each frame into the first
          TAP's queue again (a closed loop through the relay: RelayLoop).
vm        the same two TAP endpoints as bridge ports: a writer process plays guest A writing
          into its TAP, the bridge (plain or accelerated by xdpbr) forwards, a reader plays
          guest B reading its TAP. Guest to guest, as with two QEMUs on one host. The guests
          are C (bench/guest.c, compiled by the scenario), as QEMU is: Python guests spent
          more per frame than the bridge did.

The userspace side runs in a child process on its own CPU (a QEMU is a process of its own);
it is bounded in time and reports its count through a pipe.
"""

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import time

from xdpbr.control.datapath import attachment
from xdpbr.loader.errors import UsageError
from xdpbr.loader.netns import existing_index
from xdpbr.loader.tap import VNET_HDR_LEN, TapEndpoint, VnetHdr

from bench.figures import figure
from bench.scenario import Scenario
from bench.veth import GENERATOR_CPU, SWITCH_CPU, loop_figure, open_loop_window
from testbed import cpustat
from testbed.bounceloop import BounceLoop
from testbed.frames import udp_frame
from testbed.lab import sh
from testbed.sources import open_source
from testbed.trafficgen import Traffic, attach_program

GUEST_A, GUEST_B = "02:00:00:00:0b:01", "02:00:00:00:0b:02"
IP_A, IP_B = "10.202.0.1", "10.202.0.2"
READ_SIZE = 65536 + VNET_HDR_LEN


def _in_child(cpu, seconds, work):
    """Run work(deadline) -> count in a forked child pinned to `cpu`; returns a function that
    waits for the child and returns its count."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup of the parent's state, only os._exit
        code = 1
        try:
            os.close(rfd)
            os.sched_setaffinity(0, {cpu % os.cpu_count()})
            count = work(time.monotonic() + seconds)
            os.write(wfd, str(count).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)

    def wait():
        try:
            data = b""
            while chunk := os.read(rfd, 64):
                data += chunk
        finally:
            os.close(rfd)
            os.waitpid(pid, 0)
        return int(data or 0)

    return wait


def relay(src, dst, deadline):
    """QEMU's main loop between two TAPs, one direction: read a frame, writev it on; on EAGAIN
    keep the frame and wait until `dst` is writable (tap_send / tap_writable)."""
    relayed, pending = 0, None
    poller = select.poll()
    poller.register(src, select.POLLIN)
    poller.register(dst, select.POLLOUT)
    while time.monotonic() < deadline:
        if pending is None:
            try:
                raw = os.read(src, READ_SIZE)
            except BlockingIOError:
                poller.modify(dst, 0)
                poller.poll(50)
                continue
            pending = (raw[:VNET_HDR_LEN], raw[VNET_HDR_LEN:])
        try:
            os.writev(dst, pending)
            relayed += 1
            pending = None
        except BlockingIOError:
            poller.modify(dst, select.POLLOUT)
            poller.poll(50)
    return relayed


class RelayLoop(Scenario):
    """Kernel -> endpoint A -> a Python relay in a child process -> endpoint B -> XDP sink.
    Subclasses build with the bench programs, set ns, source_ifname (where the generator
    sends) and sink_ifname (where the sink counts), and give relay(deadline) -> frames relayed,
    run in the child. `feed`, set by whoever builds the path: an open-loop source (live or
    packet: testbed.sources), or `bounce`, the closed loop: the bouncer takes the sink's place
    and sends every frame that endpoint B delivered into endpoint A again (out of
    source_ifname), so the relay is fed by its own output, as fast as it moves frames, with
    `in_flight` frames and exact loss accounting (testbed/bounceloop.py). The bouncer's work
    runs on the generator's CPU (veth) or inside the relay's writev (TAP: one ptr_ring
    enqueue into TAP A, as the sink's was)."""

    RATE = 2_000_000  # offered frames/s: more than any Python relay moves
    SETTLE_S = 0.3  # the child sets up its sockets before frames come
    LOOP_MARGIN_S = 1.0  # the child outlives a closed-loop window's fill, warm-up and drain
    VETH = True  # the endpoints' far ends are veths (BounceLoop pins their NAPI)
    KICK_FRAMES = 0  # a relay that holds frames when the loop stops: BounceLoop.drain
    feed = "live"
    loop = None
    _sink_detach = None

    def measure(self, size, window, warmup=0.5):
        traffic = Traffic(GUEST_B, GUEST_A, IP_B, IP_A, size=size)  # the host sends to guest A
        if self.feed == "bounce":
            return self._closed_loop(traffic, window)
        gen = open_source(self.feed, self.programs, self.ns, self.source_ifname, traffic)
        wait = _in_child(SWITCH_CPU, self.SETTLE_S + warmup + window, self.relay)
        try:
            time.sleep(self.SETTLE_S)
            gen.run_for(warmup, rate=self.RATE)
            fig = open_loop_window(self.programs, lambda: gen.run_for(window - 0.05, rate=self.RATE))
        finally:
            wait()
            gen.close()
        self.after_round()
        return fig

    def attach_sink(self, ifname):
        """The XDP sink on `ifname`, where what endpoint B sends arrives."""
        self.sink_ifname = ifname
        self._sink_detach = attach_program(self.ns, ifname, self.programs.sink.fd)
        self.undo.push(self._detach_sink)

    def _detach_sink(self):
        if self._sink_detach:
            self._sink_detach()
            self._sink_detach = None

    def _closed_loop(self, traffic, window):
        if self.loop is None:
            self._detach_sink()  # the bouncer takes its place (the sink is not used with this feed)
            ends = (self.source_ifname, self.sink_ifname)
            self.loop = BounceLoop(self.programs, self.ns, *ends, cpu=GENERATOR_CPU, veth=self.VETH)
            self.loop.kick_frames = self.KICK_FRAMES
            self.undo.push(self.loop.close)

        @contextlib.contextmanager
        def relay_running():
            wait = _in_child(SWITCH_CPU, self.SETTLE_S + window + self.LOOP_MARGIN_S, self.relay)
            try:
                time.sleep(self.SETTLE_S)
                yield
            finally:
                wait()
                self.after_round()

        return loop_figure(self.loop.measure(traffic, window, busy_cpu=SWITCH_CPU, around=relay_running))

    def after_round(self):
        pass


class TapLoop(RelayLoop):
    """Kernel -> TAP A -> Python relay (read, writev) -> TAP B -> XDP sink."""

    name = "tap-loop"
    VETH = False

    def __init__(self):
        self.taps = []
        super().__init__("xdpbr-bench-taploop", programs=True)

    def _build(self):
        self.ns = self.lab.netns("taps")
        for ifname in ("tapa", "tapb"):
            self.taps.append(TapEndpoint(ifname, self.ns))
            self.undo.push(self.taps[-1].close)
            # a queue as deep as the AF_XDP loop's rings: the generator sends in bursts
            sh("ip", "-n", self.ns, "link", "set", ifname, "txqueuelen", "16384", "up")
        self.attach_sink("tapb")
        self.source_ifname = "tapa"

    def relay(self, deadline):
        return relay(self.taps[0].fd, self.taps[1].fd, deadline)

    def after_round(self):
        _drain(self.taps[0].fd)


def _drain(fd):
    try:
        while os.read(fd, READ_SIZE):
            pass
    except BlockingIOError:
        pass


GUEST_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest.c")


def build_guest(directory):
    """bench/guest.c compiled into `directory`: the vm scenario's guests (C, as QEMU's TAP
    backend). clang comes with `make setup` (bcc needs it)."""
    binary = os.path.join(directory, "xdpbr-guest")
    argv = ["clang", "-O2", "-Wall", "-o", binary, GUEST_SOURCE]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UsageError("the vm scenario compiles its guests with clang", fix="run `make setup`") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"cannot compile {GUEST_SOURCE}: {exc.stderr.strip()}") from None
    return binary


def run_guest(binary, cpu, fd, *args):
    """A guest process pinned to `cpu`, with the TAP `fd` inherited."""
    argv = ["taskset", "-c", str(cpu % os.cpu_count()), binary, args[0], str(fd), *map(str, args[1:])]
    return subprocess.Popen(argv, pass_fds=[fd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def guest_answer(proc, timeout):
    """The numbers a guest printed ("sent N", "received N SECONDS")."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"xdpbr-guest failed: {err.strip() or proc.returncode}")
    return [float(x) for x in out.split()[1:]]


class VmPath(Scenario):
    """Guest A -> TAP A -> bridge (plain, or xdpbr in `mode`) -> TAP B -> guest B. Mode
    `limit`: the bench's minimal XDP redirect on TAP A straight into TAP B instead of xdpbr,
    the ceiling of any XDP switch between two TAPs (what the guests and the TAPs cost)."""

    def __init__(self, mode=None):
        self.mode = mode
        self.name = f"vm-{mode or 'bridge'}"
        self.taps = []
        prefix = f"xdpbr-bench-vm{(mode or 'bridge').replace('+', '')}"
        super().__init__(prefix, programs=mode == "limit")

    def _build(self):
        directory = tempfile.mkdtemp(prefix="xdpbr-bench-guest-")
        self.undo.push(shutil.rmtree, directory, True)
        self.guest = build_guest(directory)
        lab = self.lab
        lab.make_bridge(nf_call_iptables=False)
        for ifname, guest in (("tapa", GUEST_A), ("tapb", GUEST_B)):
            self.taps.append(TapEndpoint(ifname, lab.switch))
            self.undo.push(self.taps[-1].close)
            lab.in_switch("ip", "link", "set", ifname, "master", lab.bridge, "up")
            lab.in_switch("bridge", "fdb", "replace", guest, "dev", ifname, "master", "static")
        lab.wait_forwarding(ports=["tapa", "tapb"])
        if self.mode == "limit":
            self.programs.set_limit_egress(lab.switch, existing_index(lab.switch, "tapb"))
            self.undo.push(attach_program(lab.switch, "tapa", self.programs.limit.fd))
        elif self.mode:
            attachment.attach(lab.bridge, lab.switch, mode=self.mode, grace_s=86400)
        _drain(self.taps[1].fd)

    def measure(self, size, window, warmup=0.5):
        frame = udp_frame(GUEST_B, GUEST_A, IP_A, IP_B, size)
        a, b = self.taps
        seconds = warmup + window
        dst = GUEST_B.replace(":", "")
        reader = run_guest(self.guest, SWITCH_CPU, b.fd, "read", seconds + 0.2, warmup, VNET_HDR_LEN, dst)
        writer = None
        try:
            time.sleep(0.1)  # the reader polls before the first frame comes
            s0 = cpustat.snapshot()
            writer = run_guest(self.guest, GENERATOR_CPU, a.fd, "write", seconds, VNET_HDR_LEN,
                               (VnetHdr().pack() + frame).hex())  # fmt: skip
            (sent,) = guest_answer(writer, seconds + 10)
            busy = cpustat.busy(s0, cpustat.snapshot())
            received, counted = guest_answer(reader, seconds + 10)
        finally:
            for proc in (writer, reader):
                if proc and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        _drain(b.fd)
        # Guest A is not a source outside the path: the path's work (TAP A's ingress, the
        # bridge or xdpbr, the enqueue into TAP B) runs inside its writev, on GENERATOR_CPU,
        # so its rate is the path's, and `written` is no open-loop offer. Frames written but
        # not received were dropped at TAP B (guest B, on the other CPU, fell behind).
        return figure(
            received / max(counted, 1e-9),
            busy[GENERATOR_CPU],
            written=sent / seconds,
            reader_cpu_busy=busy[SWITCH_CPU],
        )
