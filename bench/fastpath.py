"""Frames per second through two veth ports of a bridge, and TCP through it.

Paths, each in its own namespaces, measured in alternating rounds of the same run:
  bridge  the Linux bridge, bridge-nf-call-iptables=0 (set only in the benchmark's namespace)
  xdp     the same bridge accelerated by xdpbr in `xdp` mode
  limit   a minimal XDP program redirecting every frame to the other port: the ceiling
Method (KERNEL-FACTS): a live-frames generator on CPU 0 sends UDP frames out of a veth whose
peer is the switch's ingress port; that port's NAPI runs threaded, pinned to CPU 1; an XDP sink
on the far veth counts per CPU. 1 s warm-up, a timed window, medians over rounds.
TCP: iperf3, one stream, default offloads, between two containers, bridge vs the default mode.

    .venv/bin/python -m bench.fastpath [--rounds 5] [--window 4] [--json FILE]
"""

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from control import attachment
from control.lab import Lab, sh
from loader.packets import udp_frame
from loader.trafficgen import BenchPrograms, LiveFrames, attach_program

SIZES = (60, 1514)
PER_CALL = 1_000_000  # ~0.2-0.3 s of frames flat out: amortises the ~30 ms per call


def _ifindex(netns, ifname):
    return int(sh("ip", "-n", netns, "-o", "link", "show", ifname).split(":")[0])


def _pin_napi_threads(netns, ifname, cpu):
    """Threaded NAPI for the switch's ingress port, its kthreads pinned to `cpu`."""
    subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"], check=True
    )
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as f:
                name = f.read().strip()
            if name.startswith(f"napi/{ifname}-"):
                os.sched_setaffinity(int(comm.split("/")[2]), {cpu})
        except OSError:
            continue


class Path:
    """A generator, a bridge with two ports and a sink, in namespaces of their own."""

    def __init__(self, name, index):
        self.name = name
        self.lab = Lab(prefix=f"xdpbr-bench-{name}")
        self.programs = BenchPrograms()
        self.undo = []
        try:
            self._build(index)
        except BaseException:
            self.close()
            raise

    def _build(self, i):
        lab = self.lab
        lab.make_bridge(nf_call_iptables=False)
        self.gen = lab.container(f"g{i}", ip=f"10.201.{i}.1")
        self.sink = lab.container(f"s{i}", ip=f"10.201.{i}.2")
        lab.wait_forwarding()
        for host in (self.gen, self.sink):
            sh("bridge", "-n", lab.switch, "fdb", "replace", host.mac, "dev", host.port, "master", "static")
        self.undo.append(attach_program(self.sink.netns, "eth0", self.programs.sink.fd))
        if self.name == "bridge":
            # XDP_TX from the generator needs NAPI at the bridge port: GRO on, as for any veth
            sh("ip", "netns", "exec", lab.switch, "ethtool", "-K", self.gen.port, "gro", "on")
        elif self.name == "xdp":
            attachment.attach(lab.bridge, lab.switch, mode="xdp", grace_s=86400)
        elif self.name == "limit":
            self.programs.set_limit_egress(lab.switch, _ifindex(lab.switch, self.sink.port))
            self.undo.append(attach_program(lab.switch, self.gen.port, self.programs.limit.fd))
        _pin_napi_threads(lab.switch, self.gen.port, cpu=1)
        self.gen_ifindex = _ifindex(self.gen.netns, "eth0")

    def frames_per_second(self, size, window, warmup=1.0):
        frame = udp_frame(self.sink.mac, self.gen.mac, self.gen.ip, self.sink.ip, size)
        gen = LiveFrames(self.programs, self.gen.netns, self.gen_ifindex, frame)
        gen.run_for(warmup, PER_CALL)
        before, start = self.programs.sink_total(), time.monotonic()
        offered = gen.run_for(window, PER_CALL)
        elapsed = time.monotonic() - start
        received = self.programs.sink_total() - before
        return received / elapsed, offered / elapsed

    def close(self):
        if self.name == "xdp" and self.lab.switch:
            try:
                attachment.detach(self.lab.bridge, self.lab.switch)
            except Exception:  # noqa: BLE001 - the lab's close removes the pins anyway
                pass
        for fn in reversed(self.undo):
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass
        self.programs.close()
        self.lab.close()


def tcp_gbits(lab, a, b, seconds):
    b.run("iperf3", "-s", "-1", "-D", "-p", "5301")
    time.sleep(0.3)
    res = a.run("iperf3", "-c", b.ip, "-p", "5301", "-t", str(seconds), "-J", timeout=seconds + 30)
    b.run("pkill", "-f", "iperf3 -s -1", check=False)
    return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def _median(values):
    return statistics.median(values) if values else 0.0


def _cli_latency(argv, runs=5):
    cli = os.path.join(os.path.dirname(sys.executable), "xdpbr")
    cmd = [cli] if os.path.exists(cli) else [sys.executable, "-m", "control.cli"]
    times = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run([*cmd, *argv], capture_output=True, check=True)
        times.append(time.monotonic() - start)
    return _median(times)


def run(rounds, window, tcp_seconds):
    os.sched_setaffinity(0, {0})  # the generator's CPU
    results = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "window_s": window,
        "frames": {},
        "tcp_gbit_s": {},
        "cli_latency_s": {},
    }
    paths = []
    try:
        for i, name in enumerate(("bridge", "xdp", "limit")):
            paths.append(Path(name, i))
        samples = {(p.name, s): [] for p in paths for s in SIZES}
        offered = {(p.name, s): [] for p in paths for s in SIZES}
        for r in range(rounds):
            for size in SIZES:
                for path in paths if r % 2 == 0 else reversed(paths):
                    rate, load = path.frames_per_second(size, window)
                    samples[(path.name, size)].append(rate)
                    offered[(path.name, size)].append(load)
                    print(
                        f"round {r + 1} {size:5} B {path.name:7} {rate / 1e6:6.3f} Mfps "
                        f"(offered {load / 1e6:.2f})",
                        file=sys.stderr,
                        flush=True,
                    )
        xdp_path = next(p for p in paths if p.name == "xdp")
        results["cli_latency_s"] = {
            "show": _cli_latency(["-n", xdp_path.lab.switch, "show"]),
            "stats": _cli_latency(["-n", xdp_path.lab.switch, "stats"]),
        }
        for size in SIZES:
            bridge = _median(samples[("bridge", size)])
            row = {}
            for name in ("bridge", "xdp", "limit"):
                vals = samples[(name, size)]
                row[name] = {
                    "median_fps": _median(vals),
                    "min_fps": min(vals),
                    "max_fps": max(vals),
                    "offered_fps": _median(offered[(name, size)]),
                    "vs_bridge": _median(vals) / bridge if bridge else None,
                }
            row["xdp"]["vs_limit"] = row["xdp"]["median_fps"] / row["limit"]["median_fps"]
            results["frames"][str(size)] = row
    finally:
        for p in paths:
            p.close()
    results["tcp_gbit_s"] = tcp_rounds(rounds=max(3, rounds // 2 + 1), seconds=tcp_seconds)
    return results


def tcp_rounds(rounds, seconds):
    labs = {}
    try:
        for name in ("bridge", "auto"):
            lab = Lab(prefix=f"xdpbr-bench-tcp{name}")
            labs[name] = lab
            lab.make_bridge(nf_call_iptables=False)
            lab.a, lab.b = lab.container("a"), lab.container("b")
            lab.wait_forwarding()
            if name == "auto":
                attachment.attach(lab.bridge, lab.switch, grace_s=86400)
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        values = {name: [] for name in labs}
        for r in range(rounds):
            for name in labs if r % 2 == 0 else reversed(list(labs)):
                lab = labs[name]
                values[name].append(tcp_gbits(lab, lab.a, lab.b, seconds))
                print(
                    f"tcp round {r + 1} {name:6} {values[name][-1]:.1f} Gbit/s", file=sys.stderr, flush=True
                )
        return {name: {"median": _median(v), "min": min(v), "max": max(v)} for name, v in values.items()}
    finally:
        for name, lab in labs.items():
            if name == "auto" and lab.switch:
                try:
                    attachment.detach(lab.bridge, lab.switch)
                except Exception:  # noqa: BLE001
                    pass
            lab.close()


def render(results):
    lines = [
        f"kernel {results['kernel']}, {results['cpus']} CPUs, {results['rounds']} rounds of "
        f"{results['window_s']} s, medians (min-max)",
        "",
    ]
    lines.append(f"{'size':>6}  {'path':7} {'Mframes/s':>22} {'vs bridge':>9} {'offered':>8}")
    for size, row in results["frames"].items():
        for name, r in row.items():
            extra = f"   {r['vs_limit']:.2f} x limit" if "vs_limit" in r else ""
            lines.append(
                f"{size:>5}B  {name:7} {r['median_fps'] / 1e6:7.3f} ({r['min_fps'] / 1e6:.3f}-"
                f"{r['max_fps'] / 1e6:.3f}) {r['vs_bridge']:8.2f}x {r['offered_fps'] / 1e6:7.2f}{extra}"
            )
    lines.append("")
    for name, r in results["tcp_gbit_s"].items():
        lines.append(f"TCP {name:6} {r['median']:6.1f} Gbit/s ({r['min']:.1f}-{r['max']:.1f})")
    lines.append("")
    for cmd, seconds in results["cli_latency_s"].items():
        lines.append(f"xdpbr {cmd}: {seconds * 1000:.0f} ms (whole command, median of 5)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--window", type=float, default=4.0)
    p.add_argument("--tcp-seconds", type=int, default=5)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    results = run(args.rounds, args.window, args.tcp_seconds)
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
