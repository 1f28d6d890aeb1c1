"""One frame-rate figure: the rate, what loaded the path, how busy its CPU was, and whether the
source rather than the path was the limit (`generator_bound`)."""

import statistics

from testbed.bounceloop import BUSY_ENOUGH

NEAR_OFFER = 0.90  # an open-loop figure this close to its offer measured the source


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def nearest_rank(ordered, q):
    """The q-th percentile (q in %, 99.9 allowed) of sorted, non-empty `ordered`, by nearest
    rank: the value at ceil(q% of n), counting from 1."""
    index = max(0, -(-int(q * 1000) * len(ordered) // 100_000) - 1)
    return ordered[min(index, len(ordered) - 1)]


def figure(rate, busy, offered=None, in_flight=None, **extra):
    """One measured figure as the JSON reports it."""
    out = {"rate": rate, "cpu_busy": busy}
    if offered is not None:
        out["offered"] = offered
    if in_flight is not None:
        out["in_flight"] = in_flight
    out["generator_bound"] = busy < BUSY_ENOUGH or (offered is not None and rate >= NEAR_OFFER * offered)
    return out | extra


def load_text(fig):
    """What loaded the path: an open-loop offer, frames in a closed loop, or what a vm guest
    wrote (its writev runs the path: no offer from outside it)."""
    if "offered" in fig:
        return f"offered {fig['offered'] / 1e6:.2f}"
    if "written" in fig:
        return f"written {fig['written'] / 1e6:.2f}"
    return f"{fig['in_flight']:.0f} in flight"


def describe(fig):
    load = load_text(fig)
    lost = f", {fig['lost']} lost" if fig.get("lost") else ""
    bound = ", generator-bound" if fig["generator_bound"] else ""
    return f"{fig['rate'] / 1e6:7.3f} Mfps ({load}, CPU {fig['cpu_busy']:.0%} busy{lost}{bound})"


def summarise(figures):
    """Median, min, max of the rates, with the medians of what describes them."""
    out = summary([f["rate"] for f in figures])
    out["cpu_busy"] = statistics.median(f["cpu_busy"] for f in figures)
    for key in ("offered", "written"):
        if all(key in f for f in figures):
            out[key] = statistics.median(f[key] for f in figures)
    if all("in_flight" in f for f in figures):
        out["in_flight"] = statistics.median(f["in_flight"] for f in figures)
        out["lost"] = sum(f.get("lost", 0) for f in figures)
    for key in ("source_cpu_busy", "reader_cpu_busy"):
        if any(key in f for f in figures):
            out[key] = statistics.median(f.get(key, 0) for f in figures)
    out["generator_bound"] = out["cpu_busy"] < BUSY_ENOUGH or (
        "offered" in out and out["median"] >= NEAR_OFFER * out["offered"]
    )
    return out


def generator_line(g):
    live = "live frames allowed" if g["live_frames"] == "allowed" else g["live_frames"]
    return (
        f"generator {g['requested']}: capacity from {g['capacity']}, "
        f"rate-bounded from {g['rate_bounded']} ({live})"
    )
