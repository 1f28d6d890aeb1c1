"""How busy each CPU was over an interval, from /proc/stat: where a benchmark's cost goes."""


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


def wait_quiet(threshold=0.10, interval=0.25, max_s=20.0):
    """Wait until no CPU is more than `threshold` busy over `interval`, at most `max_s`; returns
    the seconds waited, or None if the host never went quiet. A benchmark calls it before it
    measures: `ip netns del` returns before the kernel has torn the namespace down (cleanup_net
    runs in a kworker, seconds for a lab of 64 or 1,000 veths), and that work would be charged
    to whatever is measured next (one scrape of 1,000 ports' counters took 186 ms instead of
    ~80 right after the 64-port labs were deleted)."""
    import time

    start = time.monotonic()
    while time.monotonic() - start < max_s:
        before = snapshot()
        time.sleep(interval)
        if max(busy(before, snapshot()).values(), default=0.0) < threshold:
            return time.monotonic() - start
    return None
