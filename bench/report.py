"""The benchmark's targets and its table: what `xdpbr bench` prints from the results.

The targets (targets()): `xdp` >= 0.95 x `limit`, a ratio to the ceiling of any XDP switch on
the host rather than to the bridge (`limit` itself has measured under 4 x the bridge at 60 B);
`tc` >= 1.5 x the bridge; default-mode TCP >= the bridge; `vm` with xdpbr >= 2 x `vm` with the
bridge; afxdp-loop >= 1.5 x ovs-afxdp; the latency scenario's p99s; 0 frames lost across
restarts and across a real upgrade (a re-attach whose map layout differs); hot-plug, from
`ip link set PORT master BR up` until the port is accelerated: median <= 50 ms and max <= 200
ms over 10 joins on a bridge of 256 ports, and the same on 64 bridges of 4 ports in 16
namespaces, none missed, and no port's slot left behind by its deletion; and the limits of the
control plane, metrics, scale and netfilter scenarios.
"""

from bench.figures import generator_line, load_text

GENERATOR_BOUND = " (generator-bound: not a capacity)"


def _ratio(rows, label, num, den, value, target):
    """A ratio target between two frame figures; one measured by its source cannot be met."""
    bound = num.get("generator_bound") or den.get("generator_bound")
    rows.append((label + (GENERATOR_BOUND if bound else ""), value, value >= target and not bound))


def _frame_targets(rows, frames):
    for size, row in frames.items():
        if "xdp" in row and "limit" in row:
            value = row["xdp"]["median"] / row["limit"]["median"]
            _ratio(rows, f"{size} B: xdp >= 0.95 x limit", row["xdp"], row["limit"], value, 0.95)
        if "tc" in row:
            _ratio(
                rows, f"{size} B: tc >= 1.5 x bridge", row["tc"], row["bridge"], row["tc"]["vs_bridge"], 1.5
            )
        if "vm-auto" in row:
            value = row["vm-auto"]["vs_vm_bridge"]
            _ratio(rows, f"{size} B: vm with xdpbr >= 2 x vm with the bridge", {}, {}, value, 2)
        if "ovs-afxdp" in row:
            value = row["afxdp-loop"]["vs_ovs_afxdp"]
            _ratio(rows, f"{size} B: afxdp-loop >= 1.5 x ovs-afxdp", {}, {}, value, 1.5)


def _latency_targets(rows, latency):
    for load in ("idle", "loaded"):
        base = latency.get("bridge", {}).get(load)
        if not base:
            continue
        limit, label = (
            (base["p99_us"], "<= bridge") if load == "idle" else (0.7 * base["p99_us"], "<= 0.7 x bridge")
        )
        for name in ("xdp", "auto"):
            if latency.get(name, {}).get(load):
                p99 = latency[name][load]["p99_us"]
                rows.append((f"latency {load}: {name} p99 {label} (us)", p99, p99 <= limit))


def _scale_targets(rows, sc):
    n, xdp = sc["destinations"], sc["rates"]["xdp"]
    _ratio(
        rows,
        f"scale: xdp to {n} destinations >= 0.9 x to one",
        xdp["spread"],
        xdp["one"],
        xdp["spread"]["vs_one"],
        0.9,
    )
    attach = sc["attach_s"]["median"]
    rows.append(
        (
            f"scale: attach of {sc['ports']} ports, {sc['fdb_entries']} static entries < 3 s",
            attach,
            attach < 3,
        )
    )
    lag = sc["sync_lag_ms"]
    ok = lag["p99"] is not None and lag["p99"] < 50 and not lag["missed"]
    rows.append(("scale: MAC learned under load -> fast path < 50 ms at p99", lag["p99"] or -1, ok))


HOTPLUG_MEDIAN_MS, HOTPLUG_MAX_MS = 50, 200


def _hotplug_case(row):
    if row["bridges"] == 1:
        return f"a bridge of {row['ports']} ports"
    return f"{row['bridges']} bridges of {row['ports']} ports in {row['namespaces']} namespaces"


def _hotplug_targets(rows, curve):
    """The 256-port bridge's and the 64 bridges' joins: a missed join (never accelerated within
    the timeout) misses both of its case's targets."""
    for row in curve:
        if not (row["bridges"] == 1 and row["ports"] == 256 or row["bridges"] == 64):
            continue
        label, clean = f"hot-plug, {_hotplug_case(row)}", not row["missed"]
        for key, limit in (("median_ms", HOTPLUG_MEDIAN_MS), ("max_ms", HOTPLUG_MAX_MS)):
            value = row[key]
            ok = clean and value is not None and value <= limit
            rows.append(
                (f"{label}: {key[:-3]} <= {limit} ms ({row['joins']} joins, none missed)", value or -1, ok)
            )
    left = sum(row["left_behind"] for row in curve)
    rows.append(("hot-plug: slots left behind by deleted ports = 0", left, left == 0))


def targets(results):
    """Every target with the measured value and whether it is met (the module's docstring)."""
    rows = []
    _frame_targets(rows, results.get("frames", {}))
    tcp = results.get("tcp_gbit_s", {})
    if "auto" in tcp:
        rows.append(("tcp: default mode >= bridge", tcp["auto"]["vs_bridge"], tcp["auto"]["vs_bridge"] >= 1))
    _latency_targets(rows, results.get("latency", {}))
    control = results.get("control", {})
    if "attach_64_ports_s" in control:
        attach = control["attach_64_ports_s"]["median"]
        rows.append(("attach of 64 ports < 3 s", attach, attach < 3))
        learn = control["learn_to_fast_path_ms"]
        rows.append(
            ("MAC learned -> fast path < 50 ms (median of 100)", learn["median"], learn["median"] < 50)
        )
    if "metrics" in results:
        scrape = results["metrics"]["scrape_ms"]["median"]
        rows.append(
            (f"scrape of {results['metrics']['ports']} ports' counters < 100 ms", scrape, scrape < 100)
        )
    if "restart" in results:
        r = results["restart"]
        rows.append(
            ("frames lost across 3 SIGKILL restarts = 0", r["lost_restarts"], r["lost_restarts"] == 0)
        )
        rows.append(
            (
                "frames lost across an upgrade (map layout changed) = 0",
                r["lost_upgrade"],
                r["lost_upgrade"] == 0,
            )
        )
    if "hotplug_curve" in results:
        _hotplug_targets(rows, results["hotplug_curve"])
    if "scale" in results:
        _scale_targets(rows, results["scale"])
    if "netfilter" in results:
        nf = results["netfilter"]
        worst = max(nf["rule_to_hold_ms"]["max"], nf["release_ms"]["max"])
        rows.append(("netfilter rule honoured < 1 s (worst of holds and releases), ms", worst, worst < 1000))
        cpu = nf["daemon_cpu_percent"]
        rows.append(("daemon CPU watching 10 bridges' 5,000 rules < 2 % of a core", cpu, cpu < 2))
    return [{"target": t, "value": round(v, 3), "met": bool(m)} for t, v, m in rows]


def _frame_lines(size, row):
    lines = ["", f"{size} B frames     Mframes/s (min-max)      vs bridge   load          CPU busy"]
    for name, r in row.items():
        load = f"{load_text(r):>13}"
        mark = "  generator-bound: not a capacity" if r["generator_bound"] else ""
        extra = f"   {r['vs_vm_bridge']:.2f} x vm-bridge" if "vs_vm_bridge" in r else ""
        extra += f", {r['vs_vm_limit']:.2f} x vm-limit" if "vs_vm_limit" in r else ""
        extra += f"   {r['vs_tap_loop']:.2f} x tap-loop" if "vs_tap_loop" in r else ""
        extra += f", {r['vs_ovs_afxdp']:.2f} x ovs-afxdp" if "vs_ovs_afxdp" in r else ""
        lines.append(
            f"  {name:12} {r['median'] / 1e6:8.3f} ({r['min'] / 1e6:.3f}-{r['max'] / 1e6:.3f})"
            f" {r['vs_bridge']:8.2f}x  {load} {r['cpu_busy']:7.0%}{extra}{mark}"
        )
    return lines


def _control_lines(c):
    lines = [""]
    if "attach_64_ports_s" in c:
        a, m = c["attach_64_ports_s"], c["learn_to_fast_path_ms"]
        lines += [
            f"attach of 64 ports: {a['median']:.2f} s ({a['min']:.2f}-{a['max']:.2f})",
            f"MAC learned -> fast path: {m['median']:.2f} ms ({m['min']:.2f}-{m['max']:.2f}, "
            f"{m['n']} MACs, {m['missed']} missed)",
        ]
    for verb in ("show", "stats"):
        if f"cli_{verb}_ms" in c:
            s = c[f"cli_{verb}_ms"]
            lines.append(
                f"`xdpbr {verb}` (CLI, new process): {s['median']:.0f} ms "
                f"({s['min']:.0f}-{s['max']:.0f}, {s['n']} runs)"
            )
    return lines


def _latency_lines(lat):
    lines = ["", f"UDP round trip, {lat['size']} B      p50 / p99 / p99.9 us   (samples)"]
    if "background_target_fps" in lat:
        lines[-1] += (
            f"   loaded: a third port offered {lat['background_target_fps'] / 1e3:.0f} kframes/s"
            " (half the bridge's capacity)"
        )
    for name, row in lat.items():
        if not isinstance(row, dict) or "idle" not in row:
            continue
        for load in ("idle", "loaded"):
            r = row.get(load)
            if not r:
                continue
            busy = ", ".join(f"CPU {c} {b:.0%}" for c, b in r.get("cpu_busy", {}).items())
            bg = r.get("background")
            carried = (
                f"; background offered {bg['offered_fps'] / 1e3:.0f}, carried {bg['carried_fps'] / 1e3:.0f}"
                f", refused {bg['refused_fps'] / 1e3:.0f} kframes/s"
                if bg
                else ""
            )
            lines.append(
                f"  {name:8} {load:7} {r['p50_us']:7.1f} {r['p99_us']:7.1f} {r['p999_us']:8.1f}"
                f"   ({r['samples']}, {r['lost']} lost; {busy}{carried})"
            )
    return lines


def _ms(value):
    return "never" if value is None else f"{value:.1f}"


def _hotplug_lines(curve):
    lines = [
        "",
        f"hot-plug: `ip link set PORT master BR up` -> port accelerated, ms ({curve[0]['joins']} joins a"
        " case); the plain bridge's join is that command's own time",
        f"  {'case':41} {'xdpbr median / max':>18}   {'plain median / max':>18}   missed  left behind"
        "  set-up (attach)",
    ]
    for row in curve:
        lines.append(
            f"  {_hotplug_case(row):41} {_ms(row['median_ms']):>8} / {_ms(row['max_ms']):<7}"
            f"   {row['plain_median_ms']:8.1f} / {row['plain_max_ms']:<7.1f}   {row['missed']:6}"
            f"  {row['left_behind']:11}  {row['setup_s']:.0f} s ({row['attach_s']:.0f} s)"
        )
    return lines


SCALE_CASES = {"one": "1 destination", "one-port": "{n} behind one port", "spread": "{n} spread"}


def _scale_lines(sc):
    n = sc["destinations"]
    lines = [
        "",
        f"scale: {sc['ports']} ports, {sc['fdb_entries']} static FDB entries, {sc['size']} B, from port 0"
        "           Mframes/s (min-max)   vs 1 dest.  CPU busy",
    ]
    for name, row in sc["rates"].items():
        for case, label in SCALE_CASES.items():
            r = row[case]
            mark = "  generator-bound: not a capacity" if r["generator_bound"] else ""
            ratio = f"{r['vs_one']:8.2f}x" if "vs_one" in r else " " * 9
            lines.append(
                f"  {name:6} {label.format(n=n):24} {r['median'] / 1e6:7.3f} "
                f"({r['min'] / 1e6:.3f}-{r['max'] / 1e6:.3f}) {ratio} {r['cpu_busy']:7.0%}{mark}"
            )
    a, lag = sc["attach_s"], sc["sync_lag_ms"]
    lines.append(
        f"  attach (compile and the entries' mirror included): {a['median']:.2f} s "
        f"({a['min']:.2f}-{a['max']:.2f})"
    )
    if lag["p99"] is not None:
        lines.append(
            f"  MAC learned under load -> fast path: median {lag['median']:.2f} ms, p99 {lag['p99']:.2f} ms, "
            f"max {lag['max']:.2f} ms ({lag['n']} MACs, {lag['missed']} missed; "
            f"the loop carried {lag['loop_fps'] / 1e6:.3f} Mfps meanwhile, {lag['loop_lost']} lost)"
        )
    return lines


def table(results):
    lines = [
        f"kernel {results['kernel']}, {results['cpus']} CPUs ({results['cpu_model']}), {results['rounds']} "
        f"rounds of {results['window_s']} s, {results['flows']} flow(s); medians (min-max)",
        generator_line(results["generator"]),
    ]
    for size, row in results.get("frames", {}).items():
        lines += _frame_lines(size, row)
    if "tcp_gbit_s" in results:
        lines += ["", f"TCP, one stream, {results['tcp_seconds']} s   Gbit/s (min-max)   vs bridge"]
        for name, r in results["tcp_gbit_s"].items():
            lines.append(
                f"  {name:12} {r['median']:6.1f} ({r['min']:.1f}-{r['max']:.1f}) {r['vs_bridge']:10.2f}x"
            )
    if "latency" in results:
        lines += _latency_lines(results["latency"])
    if "control" in results:
        lines += _control_lines(results["control"])
    if "metrics" in results:
        m = results["metrics"]
        s = m["scrape_ms"]
        lines.append(
            f"scrape of {m['ports']} ports' counters: {s['median']:.1f} ms ({s['min']:.1f}-{s['max']:.1f}, "
            f"{s['n']} scrapes; prometheus_client's generate_latest "
            f"{m['generate_latest_ms']['median']:.1f} ms)"
        )
    if "restart" in results:
        r = results["restart"]
        lines += [
            "",
            f"restart under load: {r['sent']} frames sent, {r['lost']} lost ({len(r['runs'])} runs): "
            f"{r['lost_restarts']} around SIGKILL restarts, {r['lost_upgrade']} around upgrades "
            f"({r['upgrade']})",
        ]
    if "hotplug_curve" in results:
        lines += _hotplug_lines(results["hotplug_curve"])
    if "hotplug" in results:
        h = results["hotplug"]
        med = "never" if h["median"] is None else f"{h['median']:.1f} ms"
        every = "  every join of the curve: " if "hotplug_curve" in results else "hot-plug: "
        lines += [
            f"{every}accelerated after {med} (median of {h.get('n', 0)}), {h['missed']} missed, "
            f"{h['left_behind']} left behind"
        ]
    if "scale" in results:
        lines += _scale_lines(results["scale"])
    if "netfilter" in results:
        nf = results["netfilter"]
        held, released = nf["rule_to_hold_ms"], nf["release_ms"]
        lines += [
            f"netfilter ({nf['bridges']} bridges, {nf['legacy_rules']} legacy rules): rule -> port held "
            f"{held['median']:.0f} ms (max {held['max']:.0f}), released {released['median']:.0f} ms "
            f"(max {released['max']:.0f}); daemon CPU {nf['daemon_cpu_percent']:.2f} % of a core"
        ]
    if results["targets"]:
        lines += ["", "targets:"]
        for t in results["targets"]:
            lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m bench.report FILE.json`: the table of a saved run
    import json
    import sys

    with open(sys.argv[1]) as f:
        print(table(json.load(f)))
