"""`xdpbr bench [SCENARIO...]`: every path measured side by side in alternating rounds.

SCENARIOS, the table below, is the one list of scenarios: their names, the line each has in
`xdpbr bench --help` and in README.md (tests/test_bench_table.py holds them equal), the order
they run in, and the function that runs each. All of them run when none is named. Frame-rate
scenarios share one run (run_frames) and always include `bridge`, the baseline every ratio is
taken against.

Traffic sources (`--generator`, testbed/sources.py): live frames where the kernel allows them;
else (`auto`) a closed loop (testbed/bounceloop.py) through the switch for the veth paths'
capacity figures, and through the relay itself for the relays' feed (tap-loop, afxdp-loop,
ovs-afxdp: what endpoint B delivers is sent into endpoint A again); AF_PACKET for rate-bounded
traffic (restart, the latency background). Every figure carries `cpu_busy` (the CPU that runs
the path under test), `offered` (open loop) or `in_flight` (closed loop), and `generator_bound`
where that CPU had time to spare or an open-loop figure came within 10 % of its offer: such a
figure measures the source, not the path.

Method: each round measures every path once, in an order reversed every other round
(A B C, C B A, ...), at least 5 rounds; medians with min and max; ratios between medians of
the same run. Every path builds its own namespaces and removes them afterwards; sysctls change
only inside them.
"""

import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from xdpbr.loader.errors import UsageError

from bench.figures import describe, summarise
from bench.report import table, targets
from testbed import cpustat

SIZES = (60, 1514)
MIN_ROUNDS = 5
LEARN_SAMPLES = 100


def _progress(text):
    print(text, file=sys.stderr, flush=True)


def _summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def frame_paths(scenarios, flows, choice):
    """(name, constructor) of every frame-rate path the scenarios need, baseline first."""
    from bench.taps import TapLoop, VmPath
    from bench.veth import VethPath

    names = ["bridge"]
    if "bridge" in scenarios:
        # Loading br_netfilter would switch bridge-nf-call-* on in every namespace of the
        # host (the production bridges' too): the row runs only where the module already is.
        if os.path.isdir("/proc/sys/net/bridge"):
            names.append("bridge+nf")
        else:
            _progress("bridge+nf skipped: br_netfilter is not loaded, and the benchmark does not load it")
    if "fastpath" in scenarios:
        names += ["xdp", "tc", "xdp+tc", "auto"]
    if "limit" in scenarios:
        names.append("limit")
    paths = [(n, lambda n=n, i=i: VethPath(n, i, flows, choice.capacity)) for i, n in enumerate(names)]

    def fed(cls):  # the relays' feed: live frames, or the closed loop through the relay itself
        def make():
            path = cls()
            path.feed = choice.capacity
            return path

        return make

    if "tap-loop" in scenarios or "afxdp-loop" in scenarios:
        paths.append(("tap-loop", fed(TapLoop)))
    if "afxdp-loop" in scenarios:
        from bench import ovs
        from bench.afxdp import AfxdpLoop

        paths.append(("afxdp-loop", fed(AfxdpLoop)))
        why = ovs.unavailable()
        if why:
            _progress(f"ovs-afxdp skipped: {why}")
        else:
            paths.append(("ovs-afxdp", fed(ovs.OvsAfxdpLoop)))
    if "vm" in scenarios:
        paths += [(f"vm-{m or 'bridge'}", lambda m=m: VmPath(m)) for m in (None, "auto", "limit")]
    return paths


def alternate(items, round_index):
    return items if round_index % 2 == 0 else list(reversed(items))


def run_frames(scenarios, rounds, window, flows, choice):
    paths = []
    try:
        for name, make in frame_paths(scenarios, flows, choice):
            _progress(f"building {name}")
            paths.append((name, make()))
        figures = {(n, s): [] for n, _ in paths for s in SIZES}
        os.sched_setaffinity(0, {0})  # the generator's CPU (veth.GENERATOR_CPU)
        for r in range(rounds):
            for size in SIZES:
                for name, path in alternate(paths, r):
                    fig = path.measure(size, window)
                    figures[(name, size)].append(fig)
                    _progress(f"round {r + 1} {size:5} B {name:10} {describe(fig)}")
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        for _, path in paths:
            path.close()
    out = {}
    for size in SIZES:
        row = {}
        for name, _ in paths:
            row[name] = summarise(figures[(name, size)])
        base = row["bridge"]["median"]
        for summary in row.values():
            summary["vs_bridge"] = summary["median"] / base if base else None
        for name in ("afxdp-loop", "ovs-afxdp"):
            if name in row:
                row[name]["vs_tap_loop"] = row[name]["median"] / row["tap-loop"]["median"]
        if "ovs-afxdp" in row:
            row["afxdp-loop"]["vs_ovs_afxdp"] = row["afxdp-loop"]["median"] / row["ovs-afxdp"]["median"]
        if "vm-bridge" in row:
            for name in ("vm-bridge", "vm-auto", "vm-limit"):
                row[name]["vs_vm_bridge"] = row[name]["median"] / row["vm-bridge"]["median"]
            row["vm-auto"]["vs_vm_limit"] = row["vm-auto"]["median"] / row["vm-limit"]["median"]
        out[str(size)] = row
    return out


def run_tcp(rounds, seconds):
    from bench.tcp import MODES, TcpPath

    paths = []
    try:
        for name in MODES:
            _progress(f"building tcp-{name}")
            paths.append((name, TcpPath(name)))
        values = {name: [] for name, _ in paths}
        for r in range(rounds):
            for name, path in alternate(paths, r):
                values[name].append(path.measure(seconds))
                _progress(f"round {r + 1} tcp {name:7} {values[name][-1]:6.1f} Gbit/s")
    finally:
        for _, path in paths:
            path.close()
    out = {name: _summary(v) for name, v in values.items()}
    for summary in out.values():
        summary["vs_bridge"] = summary["median"] / out["bridge"]["median"]
    return out


CLI_RUNS = 20  # `xdpbr show` / `xdpbr stats` runs timed in `control`


def run_control(rounds):
    from bench.control_plane import Attach64, LearnLag, cli_seconds

    out = {}
    attach = Attach64()
    try:
        times = []
        for r in range(rounds):
            times.append(attach.measure())
            _progress(f"round {r + 1} attach of 64 ports {times[-1]:.2f} s")
        out["attach_64_ports_s"] = _summary(times)
    finally:
        attach.close()
    learn = LearnLag()
    try:
        lags = [learn.measure() for _ in range(LEARN_SAMPLES)]
        for verb in ("show", "stats"):  # the learned MACs' bridge: 2 ports, the daemon running
            ms = [t * 1000 for t in cli_seconds(learn.lab.switch, verb, learn.lab.bridge, runs=CLI_RUNS)]
            out[f"cli_{verb}_ms"] = _summary(ms)
            _progress(f"`xdpbr {verb}`: median {out[f'cli_{verb}_ms']['median']:.0f} ms of {CLI_RUNS}")
    finally:
        learn.close()
    seen = [lag * 1000 for lag in lags if lag is not None]
    out["learn_to_fast_path_ms"] = _summary(seen) | {"missed": lags.count(None)}
    _progress(f"MAC learned -> fast path: median {out['learn_to_fast_path_ms']['median']:.2f} ms")
    return out


def run_latency(rounds, window, choice):
    """The bridge's one-direction capacity (60 B, `rounds` windows), then each latency path
    idle and loaded: half that capacity offered from the third host, the same open-loop offer
    on every path (a frame its port refuses is not sent again), what each path carried counted
    at the background's sink (bench/latency.py)."""
    from bench.latency import CHUNKS, PATHS, SAMPLES, LatencyPath, summary
    from bench.veth import VethPath

    path = VethPath("bridge", 9, 1, choice.capacity)
    try:
        os.sched_setaffinity(0, {0})  # the generator's CPU (veth.GENERATOR_CPU)
        capacity = summarise([path.measure(60, window) for _ in range(rounds)])
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        path.close()
    target_fps = capacity["median"] / 2
    _progress(
        f"latency: bridge capacity {capacity['median'] / 1e6:.3f} Mfps, CPU {capacity['cpu_busy']:.0%} busy"
    )
    out = {"size": 60, "bridge_capacity": capacity, "background_target_fps": target_fps}
    paths = []
    try:
        for i, name in enumerate(PATHS):
            _progress(f"building latency-{name}")
            paths.append((name, LatencyPath(name, i, choice.rate_bounded)))
        os.sched_setaffinity(0, {0})  # the background source's CPU
        runs = {(n, load): [] for n in PATHS for load in ("idle", "loaded")}
        for chunk in range(CHUNKS):
            for name, path in alternate(paths, chunk):
                for load, fps in (("idle", None), ("loaded", target_fps)):
                    runs[(name, load)].append(path.measure(SAMPLES // CHUNKS, fps))
        for name in PATHS:
            out[name] = {load: summary(runs[(name, load)]) for load in ("idle", "loaded")}
            _progress(f"latency {name}: {out[name]}")
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        for _, path in paths:
            path.close()
    offered = [out[n]["loaded"]["background"]["offered_fps"] for n in PATHS]
    out["background_fps"] = statistics.median(offered)  # what the source offered, median of paths
    return out


def run_restart(rounds, choice):
    from bench.operations import UPGRADE_PORTS, RestartUnderLoad

    path = RestartUnderLoad(generator=choice.rate_bounded)
    try:
        runs = []
        for r in range(max(1, rounds // 2)):
            for kind in ("restart", "upgrade"):
                runs.append(path.measure(kind))
                _progress(f"round {r + 1} {kind} under load: {runs[-1]}")
    finally:
        path.close()

    def lost(kind):
        return sum(run["lost"] for run in runs if run["kind"] == kind)

    rebuilt = sorted({name for run in runs for name in run["rebuilt"]})
    return {
        "runs": runs,
        "lost": sum(run["lost"] for run in runs),
        "sent": sum(run["sent"] for run in runs),
        "lost_restarts": lost("restart"),
        "lost_upgrade": lost("upgrade"),
        "upgrade": f"max_ports {UPGRADE_PORTS[1]} <-> {UPGRADE_PORTS[0]}, maps rebuilt: {', '.join(rebuilt)}",
    }


def run_hotplug():
    """bench/operations.py HotPlug: each case of the curve built, joined HOTPLUG_JOINS times
    and removed before the next. `hotplug` keeps its keys (every join of the curve, in ms);
    `hotplug_curve` has one row a case."""
    from bench.operations import HOTPLUG_CASES, HOTPLUG_JOINS, JOIN_TIMEOUT_S, HotPlug

    curve, every, missed, left = [], [], 0, 0
    for n, (ports, bridges, namespaces) in enumerate(HOTPLUG_CASES):
        if n:
            _settle()  # the last case's namespaces torn down
        _progress(f"building hot-plug: {bridges} bridge(s) of {ports} ports in {namespaces} namespace(s)")
        path = HotPlug(ports, bridges, namespaces, phase=n)
        try:
            _progress(f"hot-plug set-up {path.setup_s:.1f} s (attach {path.attach_s:.1f} s)")
            joins = [path.measure(j) for j in range(HOTPLUG_JOINS)]
        finally:
            path.close()
        plain = [p * 1000 for p, _, _ in joins]
        seen = [j * 1000 for _, j, _ in joins if j is not None]
        row = {
            "ports": ports,
            "bridges": bridges,
            "namespaces": namespaces,
            "joins": len(joins),
            "median_ms": statistics.median(seen) if seen else None,
            "max_ms": max(seen) if seen else None,
            "plain_median_ms": statistics.median(plain),
            "plain_max_ms": max(plain),
            "missed": len(joins) - len(seen),
            "left_behind": sum(lb for _, _, lb in joins),
            "timeout_ms": JOIN_TIMEOUT_S * 1000,
            "setup_s": path.setup_s,
            "attach_s": path.attach_s,
        }
        curve.append(row)
        every += seen
        missed, left = missed + row["missed"], left + row["left_behind"]
        _progress(
            f"hot-plug {bridges} x {ports} ports: median {row['median_ms']} ms, max {row['max_ms']} ms "
            f"(plain bridge {row['plain_median_ms']:.1f} / {row['plain_max_ms']:.1f} ms), "
            f"{row['missed']} missed, {row['left_behind']} left behind"
        )
    summary = _summary(every) if every else {"median": None, "n": 0}
    return {"hotplug": summary | {"missed": missed, "left_behind": left}, "hotplug_curve": curve}


def run_netfilter(rounds):
    from bench.netfilter import BRIDGES, RULES_PER_BRIDGE, NetfilterReaction

    path = NetfilterReaction()
    try:
        held, released = [], []
        for i in range(rounds):
            h, r = path.reaction(i)
            held.append((h if h is not None else 10.0) * 1000)
            released.append((r if r is not None else 10.0) * 1000)
            _progress(
                f"round {i + 1} netfilter rule held in {held[-1]:.0f} ms, released in {released[-1]:.0f} ms"
            )
        cpu = path.daemon_cpu_percent()
    finally:
        path.close()
    _progress(f"daemon CPU over 10 s idle: {cpu:.2f} % of a core")
    return {
        "bridges": BRIDGES,
        "legacy_rules": BRIDGES * RULES_PER_BRIDGE,
        "rule_to_hold_ms": _summary(held),
        "release_ms": _summary(released),
        "daemon_cpu_percent": cpu,
    }


def run_scale(rounds, window, flows, destinations):
    """bench/scale.py: both paths, one destination and `destinations` (spread over the ports,
    and all behind one port), in alternating rounds; the xdpbr bridge re-attached (timed)
    every round; then the sync lag under load."""
    from bench.scale import FDB_ENTRIES, PORTS, ScaleLoop, lag_summary
    from bench.veth import GENERATOR_CPU

    cases = [(1, "one"), (destinations, "one-port"), (destinations, "spread")]
    paths = []
    try:
        for name, mode in (("bridge", None), ("xdp", "xdp")):
            _progress(f"building scale-{name}: {PORTS} ports, {FDB_ENTRIES} static FDB entries")
            paths.append((name, ScaleLoop(mode, flows, one_port=destinations)))
        xdp = paths[1][1]
        figures = {(name, case): [] for name, _ in paths for _, case in cases}
        attach = []
        os.sched_setaffinity(0, {GENERATOR_CPU})
        for r in range(rounds):
            attach.append(xdp.attach_seconds())
            _progress(f"round {r + 1} scale: attach {attach[-1]:.2f} s")
            for name, path in alternate(paths, r):
                for n, case in alternate(cases, r):
                    fig = path.measure(n, 60, window, layout="spread" if case == "one" else case)
                    figures[(name, case)].append(fig)
                    _progress(f"round {r + 1} scale {name:6} {n:5} dest. {case:8} {describe(fig)}")
        lags, loop_fps, loop_lost = xdp.sync_lag(destinations)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        for _, path in paths:
            path.close()
    rates = {name: {case: summarise(figures[(name, case)]) for _, case in cases} for name, _ in paths}
    for row in rates.values():
        for case in ("spread", "one-port"):
            row[case]["vs_one"] = row[case]["median"] / row["one"]["median"]
    lag = lag_summary(lags) | {"loop_fps": loop_fps, "loop_lost": loop_lost}
    _progress(f"scale: sync lag under load p99 {lag['p99']} ms, loop {loop_fps / 1e6:.3f} Mfps")
    return {
        "ports": PORTS,
        "fdb_entries": FDB_ENTRIES,
        "destinations": destinations,
        "size": 60,
        "rates": rates,
        "xdp_vs_bridge": rates["xdp"]["spread"]["median"] / rates["bridge"]["spread"]["median"],
        "attach_s": _summary(attach),
        "sync_lag_ms": lag,
    }


def _settle():
    """Before a scenario: the host quiet (the kernel done with the last one's namespaces)."""
    if cpustat.wait_quiet() is None:
        _progress("the host did not go quiet within 30 s; measuring anyway")


class Options(NamedTuple):
    """What every scenario's run may use, from the command line."""

    rounds: int
    window: float
    tcp_seconds: int
    flows: int
    choice: object  # testbed.sources.Choice: the traffic sources
    destinations: int


# Each table row's `run(selected, options)` returns the results' entries it measured; rows that
# share a function (the frame-rate paths, measured in the same rounds) run it once, for all of
# the selected ones.


def _frames(selected, o):
    return {"frames": run_frames(selected, o.rounds, o.window, o.flows, o.choice)}


def _tcp(selected, o):
    return {"tcp_seconds": o.tcp_seconds, "tcp_gbit_s": run_tcp(o.rounds, o.tcp_seconds)}


def _latency(selected, o):
    return {"latency": run_latency(o.rounds, o.window, o.choice)}


def _control(selected, o):
    return {"control": run_control(o.rounds)}


def _metrics(selected, o):
    from bench import metrics

    m = metrics.measure()
    _progress(f"scrape of {m['ports']} ports: {m['scrape_ms']['median']:.1f} ms")
    return {"metrics": m}


def _restart(selected, o):
    return {"restart": run_restart(o.rounds, o.choice)}


def _hotplug(selected, o):
    return run_hotplug()


def _netfilter(selected, o):
    return {"netfilter": run_netfilter(o.rounds)}


def _scale(selected, o):
    return {"scale": run_scale(o.rounds, o.window, o.flows, o.destinations)}


class ScenarioRow(NamedTuple):
    """One scenario: its name on the command line, what it measures (one sentence, shown as it
    is by `xdpbr bench --help` and README.md) and the function that runs it."""

    name: str
    help: str
    run: Callable[[set, Options], dict]


SCENARIOS = (  # in the order they run
    ScenarioRow(
        "bridge", "the Linux bridge between two veth ports, bridge-nf-call-iptables off and on", _frames
    ),
    ScenarioRow(
        "fastpath", "the same ports accelerated by xdpbr in each mode: xdp, tc, xdp+tc, auto", _frames
    ),
    ScenarioRow(
        "limit", "a minimal XDP redirect to the other port: the ceiling of any XDP switch here", _frames
    ),
    ScenarioRow(
        "tap-loop", "QEMU's TAP path: two TAP endpoints relayed by a Python loop like QEMU's", _frames
    ),
    ScenarioRow(
        "afxdp-loop",
        "the same loop between two AF_XDP endpoints (rings, shared UMEM), with tap-loop and Open "
        "vSwitch's userspace datapath with AF_XDP ports (ovs-afxdp) alongside",
        _frames,
    ),
    ScenarioRow(
        "vm", "two TAP endpoints joined by a bridge, plain and accelerated (guest to guest)", _frames
    ),
    ScenarioRow("tcp", "iperf3 through the bridge and through xdpbr in each mode, default offloads", _tcp),
    ScenarioRow(
        "latency",
        "UDP round trips (60 B) through the bridge, xdp and auto: p50/p99/p99.9 of 20,000, idle and "
        "with a third port sending at half the bridge's capacity (same run)",
        _latency,
    ),
    ScenarioRow(
        "control",
        "attach of a 64-port bridge (compile included), MAC learned -> fast path, and xdpbr show / "
        "xdpbr stats from the shell (a new process each, median of 20)",
        _control,
    ),
    ScenarioRow("metrics", "a Prometheus scrape of 1,000 ports' counters: median of 20", _metrics),
    ScenarioRow(
        "restart",
        "frames at a fixed rate while the daemon is SIGKILLed and restarted 3 times, and (another "
        "run) while the bridge is upgraded in place twice to a build whose map layout differs "
        "(max_ports 1024 <-> 512): frames lost in each (target 0)",
        _restart,
    ),
    ScenarioRow(
        "hotplug",
        "a veth joined with `ip link set PORT master BR up` while the daemon runs, 10 times on bridges of "
        "4, 64 and 256 ports and on 64 bridges of 4 ports: time until it is accelerated, beside that "
        "command's own time",
        _hotplug,
    ),
    ScenarioRow(
        "netfilter",
        "10 bridges with 5,000 legacy rules in all under one daemon: a rule on one port until the "
        "port is held and released (target < 1 s), the daemon's idle CPU (< 2 %)",
        _netfilter,
    ),
    ScenarioRow(
        "scale",
        "a 64-port bridge with 4,096 static FDB entries: one port to --destinations MACs spread over "
        "the others vs one destination (bridge and xdp, 60 B, closed loop), attach of that bridge, "
        "and the daemon's sync lag for a MAC learned under that load",
        _scale,
    ),
)
NAMES = tuple(row.name for row in SCENARIOS)


def run(scenarios, rounds, window, tcp_seconds, flows, choice, destinations=1024):
    results = {
        "generator": choice.as_dict(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "scenarios": list(scenarios),
        "rounds": rounds,
        "window_s": window,
        "flows": flows,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    options = Options(rounds, window, tcp_seconds, flows, choice, destinations)
    selected, done = set(scenarios), []
    for row in SCENARIOS:
        if row.name in selected and row.run not in done:
            done.append(row.run)
            _settle()
            results.update(row.run(selected, options))
    results["targets"] = targets(results)
    return results


def unwind_on_sigterm(pid):
    """A SIGTERM handler that unwinds this process like an exception (every path removes its
    namespaces), and only this one. pyroute2 forks a child to open a netlink socket in a
    namespace and stops it with SIGTERM; the child inherits this handler, and unwinding there
    ran the finally blocks of a copy of this process: it deleted the namespaces of every path
    built so far, under the running benchmark (seen as namespaces vanishing mid-run)."""

    def handler(signum, frame):
        if os.getpid() != pid:
            os._exit(128 + signum)
        sys.exit(128 + signum)

    return handler


def check_scenarios(names):
    """The named scenarios in the table's order (all of them when none is named)."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise UsageError(f"unknown scenario {unknown[0]!r}; scenarios: {', '.join(NAMES)}")
    return [n for n in NAMES if n in names] if names else list(NAMES)


INSTANCE = "bench"  # the benchmark's own pins, run dir and daemons: never the host's xdpbr
MAX_WINDOW_S, MAX_TCP_S = 600, 600
MAX_DESTINATIONS = 4096  # bench/scale.py FDB_ENTRIES: every destination a static entry


def command(args):
    """`xdpbr bench`: checks the options, runs the scenarios, prints and charts the results."""
    from xdpbr.control.cli import render
    from xdpbr.loader import instance

    from bench import chart

    if args.netns:
        raise UsageError("bench builds namespaces of its own; drop -n")
    scenarios = check_scenarios(args.scenarios)
    if args.rounds < MIN_ROUNDS:
        raise UsageError(f"--rounds {args.rounds}: at least {MIN_ROUNDS} rounds")
    if not 1 <= args.flows <= 1024:
        raise UsageError(f"--flows {args.flows}: expected 1 to 1024")
    if not 1 <= args.destinations <= MAX_DESTINATIONS:
        raise UsageError(f"--destinations {args.destinations}: expected 1 to {MAX_DESTINATIONS}")
    if not 0.1 <= args.window <= MAX_WINDOW_S:
        raise UsageError(f"--window {args.window}: expected 0.1 to {MAX_WINDOW_S} seconds")
    if not 1 <= args.tcp_seconds <= MAX_TCP_S:
        raise UsageError(f"--tcp-seconds {args.tcp_seconds}: expected 1 to {MAX_TCP_S} seconds")
    from testbed.sources import choose

    # a SIGTERM (timeout, systemd) unwinds like an exception: every path removes its namespaces
    signal.signal(signal.SIGTERM, unwind_on_sigterm(os.getpid()))

    choice = choose(getattr(args, "generator", "auto"))  # probes live frames once
    instance.select(INSTANCE)
    results = run(
        scenarios, args.rounds, args.window, args.tcp_seconds, args.flows, choice, args.destinations
    )
    png = chart.write_png(results, args.png) if args.png else None
    results["png"] = png
    if args.json:
        render.emit(results, True, str)
    else:
        print(table(results))
        if png:
            print(f"\nchart: {png}")
    return 0
