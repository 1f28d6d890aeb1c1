"""How long a Prometheus scrape takes with 1,000 ports' counters (target: under 100 ms).

One bridge with 1,000 veth ports in the benchmark's own namespace, attached in `bridge` mode
(entries, slots and counters, no programs: the scrape reads the same maps either way); each
port's counters are given traffic-like values for five reasons on both attach points. The
scrape is what `xdpbr daemon --metrics` serves: the collector read and written by
control.exposition.render(); prometheus_client's generate_latest() is timed beside it.

    .venv/bin/python -m bench.metrics [--ports 1000] [--scrapes 20]

`xdpbr bench metrics` runs the same measurement (1,000 ports, 20 scrapes) and records it.
"""

import argparse
import statistics
import sys
import time

from xdpbr.control.datapath import attachment
from xdpbr.control.datapath.session import Session
from xdpbr.control.metrics import collector as metrics
from xdpbr.control.metrics.exposition import render
from xdpbr.loader import bpfsys
from xdpbr.loader.layouts import ATTACH_POINTS, REASON_INDEX, U32, Counter, stats_index

from bench.control_plane import add_veth_ports
from bench.scenario import Scenario
from testbed import cpustat

REASONS_USED = ("forward", "broadcast", "multicast", "unknown_source", "checksum_partial")


def fill_counters(lab):
    ncpu = bpfsys.possible_cpus()
    with Session(lab.bridge, lab.switch) as s:
        s.open_pins()
        for entry in s.ports().values():
            for attach in range(len(ATTACH_POINTS)):
                for n, reason in enumerate(REASONS_USED):
                    value = (Counter * ncpu)(
                        *[Counter(packets=1000 * (n + 1) + c, bytes=64000 * (n + 1)) for c in range(ncpu)]
                    )
                    bpfsys.map_update(
                        s.maps["xdpbr_stats"],
                        U32(stats_index(entry.slot, attach, REASON_INDEX[reason])),
                        value,
                    )
        return len(s.ports())


def _ms(values):
    ms = [v * 1000 for v in values]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


class MetricsScrape(Scenario):
    """A bridge of `ports` veth ports attached in bridge mode, its counters filled."""

    def __init__(self, ports):
        super().__init__("xdpbr-bench-metrics", ports)

    def _build(self, ports):
        lab = self.lab
        lab.make_bridge()
        add_veth_ports(lab, ports)
        start = time.monotonic()
        attachment.attach(lab.bridge, lab.switch, mode="bridge", grace_s=86400)
        self.attach_s = time.monotonic() - start
        self.undo.push(attachment.detach, lab.bridge, lab.switch)
        self.ports = fill_counters(lab)

    def measure(self, scrapes):
        """({writer: [seconds a scrape]}, bytes of exposition) for both writers, alternating."""
        from prometheus_client import generate_latest

        reg = metrics.registry(metrics.PinnedMapReader(self.lab.bridge, self.lab.switch), with_process=True)
        times = {"xdpbr": [], "generate_latest": []}
        size = len(render(reg))  # warm-up
        for _ in range(scrapes):  # alternate the two writers
            for name, write in (("xdpbr", render), ("generate_latest", generate_latest)):
                t = time.perf_counter()
                write(reg)
                times[name].append(time.perf_counter() - t)
        return times, size


def measure(ports=1000, scrapes=20):
    """The `metrics` scenario of `xdpbr bench`: {ports, bytes, scrape_ms, generate_latest_ms,
    attach_s} from one lab, removed afterwards."""
    with MetricsScrape(ports) as path:
        cpustat.wait_quiet()  # the 1,000 ports' set-up done in the kernel too
        times, size = path.measure(scrapes)
    return {
        "ports": path.ports,
        "bytes": size,
        "scrape_ms": _ms(times["xdpbr"]),
        "generate_latest_ms": _ms(times["generate_latest"]),
        "attach_s": path.attach_s,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ports", type=int, default=1000)
    p.add_argument("--scrapes", type=int, default=20)
    args = p.parse_args(argv)
    out = measure(args.ports, args.scrapes)
    print(
        f"{out['ports']} ports, {out['bytes']} bytes of exposition, {args.scrapes} scrapes each "
        "(target: under 100 ms)"
    )
    for name in ("scrape_ms", "generate_latest_ms"):
        s = out[name]
        print(f"  {name:20} median {s['median']:6.1f} ms (min {s['min']:.1f}, max {s['max']:.1f})")
    print(f"attach of {out['ports']} ports in bridge mode took {out['attach_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
