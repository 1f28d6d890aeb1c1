"""One table drives `xdpbr bench` (bench/run.py SCENARIOS): the order scenarios run in, the
choices and help of `xdpbr bench --help`, and README.md's list are the table's. An xdpbr
installed without the checkout's benchmark says so in one line (pure: nothing is measured)."""

import os
import re
import sys

import pytest
from xdpbr.control.cli import main as cli

from bench import run
from tests.helpers import ROOT, subparsers


def _rows(lines, item):
    """[(name, help)] of the lines `item` matches, each help joined with its continuation lines
    (indented deeper than the item) and its whitespace collapsed; the list ends at any other line."""
    rows, listing = [], False
    for line in lines:
        m = item.match(line)
        if m:
            rows.append((m.group(1), m.group(2)))
            listing = True
        elif listing and line.startswith(" " * 4) and line.strip():
            rows[-1] = (rows[-1][0], f"{rows[-1][1]} {line.strip()}")
        else:
            listing = False
    return [(name, " ".join(text.split())) for name, text in rows]


def _table():
    return [(row.name, " ".join(row.help.split())) for row in run.SCENARIOS]


def _bench_parser():
    return next(sub for name, _, sub in subparsers(cli.build_parser()) if name == "bench")


def readme_scenarios():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"^- `bench` measures this host.*?\n\n", text, re.S | re.M).group(0)
    return _rows(block.splitlines(), re.compile(r"^  - `([a-z-]+)`: (.*)$"))


def help_scenarios(text):
    lines = text.split("scenarios (all of them when none is named, in this order):\n", 1)[1]
    return _rows(lines.splitlines(), re.compile(r"^  ([a-z-]+) +(.*)$"))


def test_the_table_names_each_scenario_once_with_a_help_line():
    names = [row.name for row in run.SCENARIOS]
    assert len(names) == len(set(names)) and run.NAMES == tuple(names)
    assert all(row.help and "\n" not in row.help and callable(row.run) for row in run.SCENARIOS)


def test_the_readme_lists_the_tables_scenarios_in_its_order_with_its_help():
    assert readme_scenarios() == _table()


def test_bench_help_lists_the_tables_scenarios_in_its_order_with_its_help():
    assert help_scenarios(_bench_parser().format_help()) == _table()


def test_the_cli_takes_the_tables_names_in_its_order():
    assert run.check_scenarios([]) == list(run.NAMES)
    assert run.check_scenarios(["scale", "bridge"]) == ["bridge", "scale"]  # the table's order
    with pytest.raises(cli.UsageError, match="unknown scenario 'fastpth'; scenarios: bridge, fastpath, "):
        run.check_scenarios(["fastpth"])


def test_the_run_goes_through_the_table_once_per_function(monkeypatch):
    """Frame-rate scenarios share one run; every other scenario runs its own, in table order."""
    calls = []

    def fake(function):
        def measure(selected, options):
            calls.append((function.__name__, sorted(selected)))
            return {function.__name__: options.rounds}

        return measure

    fakes = {row.run: fake(row.run) for row in run.SCENARIOS}  # rows that share one still do
    monkeypatch.setattr(run, "SCENARIOS", tuple(row._replace(run=fakes[row.run]) for row in run.SCENARIOS))
    monkeypatch.setattr(run, "_settle", lambda: None)
    monkeypatch.setattr(run, "targets", lambda results: [])

    class Choice:
        def as_dict(self):
            return {}

    results = run.run(["vm", "scale", "bridge", "tcp"], 5, 1.0, 1, 1, Choice())
    selected = ["bridge", "scale", "tcp", "vm"]
    assert calls == [("_frames", selected), ("_tcp", selected), ("_scale", selected)]
    assert [k for k in results if k.startswith("_")] == ["_frames", "_tcp", "_scale"]
    assert results["scenarios"] == ["vm", "scale", "bridge", "tcp"] and results["targets"] == []


def test_without_the_benchmark_bench_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bench.run", None)  # as an installed xdpbr has no bench/
    assert "bench" in cli.build_parser().format_help()  # the main help needs no benchmark
    assert "the benchmark is not installed with xdpbr" in _bench_parser().format_help()
    assert cli.main(["bench", "scale"]) == 1
    assert capsys.readouterr().err == (
        "xdpbr: the benchmark is not installed with xdpbr; run it from a checkout: make bench\n"
    )


def test_the_hotplug_row_keeps_its_keys_and_adds_the_curve(monkeypatch):
    """run_hotplug with a made-up HotPlug: one case at a time, closed before the next; `hotplug`
    keeps the keys it always had (every join, ms), `hotplug_curve` has a row a case."""
    from bench import operations

    made = []

    class FakeHotPlug:
        def __init__(self, ports, bridges, namespaces, phase):
            self.case, self.closed = (ports, bridges, namespaces), False
            self.setup_s, self.attach_s = 10.0 + bridges, 0.5 * bridges
            assert all(p.closed for p in made)
            made.append(self)

        def measure(self, j):
            if self.case == (64, 1, 1) and j == 0:
                return 0.004, None, True  # never accelerated, its slot left behind
            return 0.002 + j / 1000, 0.010 + self.case[0] / 1000 + j / 1000, False

        def close(self):
            self.closed = True

    cases = ((4, 1, 1), (64, 1, 1), (4, 64, 16))
    monkeypatch.setattr(operations, "HotPlug", FakeHotPlug)
    monkeypatch.setattr(operations, "HOTPLUG_CASES", cases)
    monkeypatch.setattr(operations, "HOTPLUG_JOINS", 3)
    monkeypatch.setattr(run, "_settle", lambda: None)
    out = run.run_hotplug()

    assert [p.case for p in made] == list(cases) and all(p.closed for p in made)
    assert set(out["hotplug"]) == {"median", "min", "max", "n", "missed", "left_behind"}
    assert out["hotplug"] | {"median": None} == {
        "median": None,
        "min": pytest.approx(14),
        "max": pytest.approx(76),
        "n": 8,
        "missed": 1,
        "left_behind": 1,
    }
    small, big, many = out["hotplug_curve"]
    assert small == {
        "ports": 4,
        "bridges": 1,
        "namespaces": 1,
        "joins": 3,
        "median_ms": pytest.approx(15),
        "max_ms": pytest.approx(16),
        "plain_median_ms": pytest.approx(3),
        "plain_max_ms": pytest.approx(4),
        "missed": 0,
        "left_behind": 0,
        "timeout_ms": 5000.0,
        "setup_s": 11.0,
        "attach_s": 0.5,
    }
    assert (big["median_ms"], big["max_ms"], big["missed"], big["left_behind"]) == (
        pytest.approx(75.5),
        pytest.approx(76),
        1,
        1,
    )
    assert (many["bridges"], many["namespaces"], many["setup_s"]) == (64, 16, 74.0)
