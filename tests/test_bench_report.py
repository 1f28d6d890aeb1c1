"""The benchmark's targets table (pure: made-up results, no kernel)."""

from bench.report import table, targets


def _fig(median, bound=False, **extra):
    return {
        "median": median,
        "min": median,
        "max": median,
        "n": 5,
        "cpu_busy": 0.95,
        "in_flight": 128,
        "generator_bound": bound,
    } | extra


def _results():
    frames = {}
    for size in ("60", "1514"):
        row = {"bridge": _fig(1.0e6), "xdp": _fig(3.9e6), "tc": _fig(1.6e6), "limit": _fig(4.0e6)}
        for r in row.values():
            r["vs_bridge"] = r["median"] / 1.0e6
        frames[size] = row
    frames["60"]["vm-bridge"] = _fig(0.3e6, vs_bridge=0.3, vs_vm_bridge=1.0)
    frames["60"]["vm-auto"] = _fig(0.5e6, vs_bridge=0.5, vs_vm_bridge=1.7)
    lat = {
        "size": 60,
        "bridge": {"idle": {"p50_us": 30, "p99_us": 50, "p999_us": 90, "samples": 20000, "lost": 0}},
    }
    lat["bridge"]["loaded"] = {"p50_us": 60, "p99_us": 200, "p999_us": 400, "samples": 20000, "lost": 0}
    lat["xdp"] = {
        "idle": dict(lat["bridge"]["idle"], p99_us=45),
        "loaded": dict(lat["bridge"]["loaded"], p99_us=150),
    }
    return {
        "kernel": "6.18",
        "cpus": 2,
        "cpu_model": "x",
        "rounds": 5,
        "window_s": 0.5,
        "flows": 1,
        "generator": {
            "requested": "auto",
            "capacity": "bounce",
            "rate_bounded": "packet",
            "live_frames": "EPERM",
        },
        "frames": frames,
        "latency": lat,
        "restart": {
            "runs": [{}, {}],
            "sent": 10,
            "lost": 1,
            "lost_restarts": 0,
            "lost_upgrade": 1,
            "upgrade": "u",
        },
    }


def test_the_new_targets_replace_the_old_ones():
    rows = {t["target"]: t for t in targets(_results())}
    assert rows["60 B: xdp >= 0.95 x limit"]["met"]  # 0.975
    assert rows["60 B: tc >= 1.5 x bridge"]["met"]
    assert not rows["60 B: vm with xdpbr >= 2 x vm with the bridge"]["met"]
    assert rows["latency idle: xdp p99 <= bridge (us)"]["met"]
    assert not rows["latency loaded: xdp p99 <= 0.7 x bridge (us)"]["met"]  # 150 > 140
    assert rows["frames lost across 3 SIGKILL restarts = 0"]["met"]
    assert not rows["frames lost across an upgrade (map layout changed) = 0"]["met"]
    assert not any("4 x bridge" in t or "1.2 x" in t or "tap-loop" in t for t in rows)


def test_a_generator_bound_figure_meets_no_ratio_target():
    results = _results()
    results["frames"]["60"]["bridge"]["generator_bound"] = True
    rows = [t for t in targets(results) if t["target"].startswith("60 B: tc")]
    assert len(rows) == 1 and not rows[0]["met"] and "generator-bound" in rows[0]["target"]


def test_the_table_names_every_target():
    results = _results()
    results["targets"] = targets(results)
    text = table(results)
    assert "\ntargets:\n" in text and "MISSED" in text and "p99.9" in text


def test_percentiles_are_nearest_rank_in_microseconds():
    from bench.latency import percentiles

    samples = [i * 1000 for i in range(1, 1001)]  # 1..1000 us, shuffled order does not matter
    p = percentiles(list(reversed(samples)))
    assert (p["p50_us"], p["p99_us"], p["p999_us"]) == (500, 990, 999)
    assert percentiles([7000])["p999_us"] == 7
    assert percentiles([])["p99_us"] is None


def _scale(one, spread, attach_s=2.1, p99_ms=3.0, missed=0):
    rates = {}
    for name in ("bridge", "xdp"):
        row = {"one": _fig(one), "one-port": _fig(0.95 * one), "spread": _fig(spread)}
        for case in ("one-port", "spread"):
            row[case]["vs_one"] = row[case]["median"] / one
        rates[name] = row
    lag = {"median": 1.0, "p99": p99_ms, "max": p99_ms, "n": 200, "missed": missed}
    return {
        "ports": 64,
        "fdb_entries": 4096,
        "destinations": 1024,
        "size": 60,
        "rates": rates,
        "attach_s": {"median": attach_s, "min": attach_s, "max": attach_s, "n": 5},
        "sync_lag_ms": lag | {"loop_fps": 5e5, "loop_lost": 0},
    }


def test_scale_targets_compare_the_spread_destinations_with_one():
    results = _results() | {"scale": _scale(one=8e6, spread=7.5e6)}
    rows = {t["target"]: t for t in targets(results)}
    assert rows["scale: xdp to 1024 destinations >= 0.9 x to one"]["met"]  # 0.9375
    assert rows["scale: attach of 64 ports, 4096 static entries < 3 s"]["met"]
    assert rows["scale: MAC learned under load -> fast path < 50 ms at p99"]["met"]
    results = _results() | {"scale": _scale(one=8e6, spread=0.6e6, attach_s=3.2, p99_ms=2.0, missed=1)}
    rows = {t["target"]: t for t in targets(results)}
    assert not rows["scale: xdp to 1024 destinations >= 0.9 x to one"]["met"]
    assert not rows["scale: attach of 64 ports, 4096 static entries < 3 s"]["met"]
    assert not rows["scale: MAC learned under load -> fast path < 50 ms at p99"]["met"]  # one never came
    results["targets"] = targets(results)
    assert "1024 behind one port" in table(results)


def _hotplug_row(ports, bridges=1, namespaces=1, median=20.0, worst=40.0, missed=0, left_behind=0):
    return {
        "ports": ports,
        "bridges": bridges,
        "namespaces": namespaces,
        "joins": 10,
        "median_ms": median,
        "max_ms": worst,
        "plain_median_ms": 2.5,
        "plain_max_ms": 3.4,
        "missed": missed,
        "left_behind": left_behind,
        "timeout_ms": 5000.0,
        "setup_s": 17.0,
        "attach_s": 1.1,
    }


def _hotplug(curve):
    summary = {"median": 21.0, "min": 15.0, "max": 90.0, "n": 40}
    missed, left = sum(r["missed"] for r in curve), sum(r["left_behind"] for r in curve)
    return {"hotplug": summary | {"missed": missed, "left_behind": left}, "hotplug_curve": curve}


def test_hotplug_targets_are_the_256_port_bridge_and_the_64_bridges():
    curve = [
        _hotplug_row(4, median=300.0, worst=900.0),  # no target for the small cases
        _hotplug_row(64),
        _hotplug_row(256, median=45.0, worst=250.0),
        _hotplug_row(4, bridges=64, namespaces=16, median=30.0, worst=120.0),
    ]
    rows = {t["target"]: t for t in targets(_results() | _hotplug(curve))}
    hot = {t: r for t, r in rows.items() if t.startswith("hot-plug")}
    assert len(hot) == 5 and not any("< 100 ms" in t for t in rows)  # the old target is gone
    big = "hot-plug, a bridge of 256 ports"
    many = "hot-plug, 64 bridges of 4 ports in 16 namespaces"
    assert hot[f"{big}: median <= 50 ms (10 joins, none missed)"] == {
        "target": f"{big}: median <= 50 ms (10 joins, none missed)",
        "value": 45.0,
        "met": True,
    }
    assert not hot[f"{big}: max <= 200 ms (10 joins, none missed)"]["met"]  # 250
    assert hot[f"{many}: median <= 50 ms (10 joins, none missed)"]["met"]
    assert hot[f"{many}: max <= 200 ms (10 joins, none missed)"]["met"]
    assert hot["hot-plug: slots left behind by deleted ports = 0"]["met"]


def test_a_missed_join_or_a_slot_left_behind_misses_the_hotplug_targets():
    curve = [_hotplug_row(256, missed=1), _hotplug_row(4, 64, 16, median=None, worst=None, missed=10)]
    curve[0]["left_behind"] = 2
    rows = {t["target"]: t for t in targets(_results() | _hotplug(curve))}
    hot = [r for t, r in rows.items() if t.startswith("hot-plug")]
    assert len(hot) == 5 and not any(r["met"] for r in hot)
    assert (
        rows["hot-plug, 64 bridges of 4 ports in 16 namespaces: max <= 200 ms (10 joins, none missed)"][
            "value"
        ]
        == -1
    )  # never accelerated: no time
    assert rows["hot-plug: slots left behind by deleted ports = 0"]["value"] == 2


def test_the_table_shows_the_hotplug_curve_beside_the_plain_bridge():
    curve = [_hotplug_row(4), _hotplug_row(256, median=45.3, worst=180.5), _hotplug_row(4, 64, 16)]
    curve[0] |= {"median_ms": None, "max_ms": None, "missed": 10}
    results = _results() | _hotplug(curve)
    results["targets"] = targets(results)
    lines = table(results).splitlines()
    header = next(i for i, line in enumerate(lines) if "xdpbr median / max" in line)
    assert "plain median / max" in lines[header] and "set-up (attach)" in lines[header]
    assert lines[header + 1].split() == "a bridge of 4 ports never / never 2.5 / 3.4 10 0 17 s (1 s)".split()
    assert lines[header + 2].split()[-12:] == "45.3 / 180.5 2.5 / 3.4 0 0 17 s (1 s)".split()
    assert lines[header + 3].startswith("  64 bridges of 4 ports in 16 namespaces ")
    assert "every join of the curve: accelerated after 21.0 ms (median of 40), 10 missed" in lines[header + 4]


def test_a_run_from_before_the_curve_still_prints():
    """docs/benchmarks.json of earlier runs has `hotplug` alone."""
    results = _results() | {
        "hotplug": {"median": 19.1, "min": 11.0, "max": 20.0, "n": 20, "missed": 0, "left_behind": 0}
    }
    results["targets"] = targets(results)
    assert "hot-plug: accelerated after 19.1 ms (median of 20), 0 missed, 0 left behind" in table(results)
    assert not any(t["target"].startswith("hot") for t in results["targets"])
