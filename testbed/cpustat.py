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
