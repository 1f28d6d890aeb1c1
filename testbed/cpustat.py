"""How busy each CPU was over an interval, from /proc/stat: where a benchmark's cost goes."""

import glob
import time


def snapshot():
    """{cpu: (busy jiffies, total jiffies)} now."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle = values[3] + values[4]
            out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


def busy(before, after):
    """{cpu: fraction of the interval it was busy (0-1)} between two snapshots."""
    out = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        out[cpu] = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return out


def netns_cleanup_running():
    """Whether a kworker is tearing a network namespace down now (its name shows the workqueue
    it runs: "+netns" while it works, "-netns" once idle)."""
    for path in glob.glob("/proc/[0-9]*/task/[0-9]*/comm"):
        try:
            with open(path) as f:
                comm = f.read()
        except OSError:
            continue
        if comm.startswith("kworker") and "+netns" in comm:
            return True
    return False


def wait_quiet(threshold=0.10, interval=0.25, max_s=30.0, windows=4):
    """Wait until no network namespace is being torn down and no CPU was more than `threshold`
    busy over `windows` consecutive intervals, at most `max_s`; returns the seconds waited, or
    None if the host never went quiet. A benchmark calls it before it measures: `ip netns del`
    returns before the kernel has torn the namespace down (cleanup_net runs in a kworker for
    seconds after a lab of 64 or 1,000 veths, mostly waiting for RCU, with bursts of work), and
    that work was charged to whatever was measured next (one scrape of 1,000 ports' counters
    took 131-250 ms instead of ~70 after the latency labs went)."""
    start, quiet = time.monotonic(), 0
    while time.monotonic() - start < max_s:
        before = snapshot()
        time.sleep(interval)
        calm = max(busy(before, snapshot()).values(), default=0.0) < threshold
        quiet = quiet + 1 if calm and not netns_cleanup_running() else 0
        if quiet >= windows:
            return time.monotonic() - start
    return None
