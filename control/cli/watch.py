"""`xdpbr stats --watch`: rates per interval, per port and in total, as `ip -s` deltas or bmon.

Each interval reads the cumulative counters once (state.counter_rows: pinned maps, no
compiler) and divides the difference by the measured time. Per port:
  frames_per_s, bits_per_s   frames entering the port: the counters at its first attach point
                             (XDP in xdp and xdp+tc, TC in tc), every reason
  xdp_*, tc_*                frames the fast path forwarded at that attach point
  bridge_*                   the rest: handed to the Linux bridge
  pass_reasons               why, most frames first, from the port's last attach point
                             (in xdp+tc, TC counts again what XDP passed: its reasons are final)
A port in mode `bridge` runs no program, so nothing counts its frames: its rates are null.
"""

import json
import os
import shutil
import sys
import time

from ...loader.layouts import ATTACH_POINTS
from ..datapath import state
from . import render

RATES = ("frames_per_s", "bits_per_s", "xdp_frames_per_s", "xdp_bits_per_s")
RATES += ("tc_frames_per_s", "tc_bits_per_s", "bridge_frames_per_s", "bridge_bits_per_s")

# ANSI (ECMA-48) controls: home, erase to end of line / of screen, hide and show the cursor.
HOME, ERASE_LINE, ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
CLEAR, HIDE_CURSOR, SHOW_CURSOR = "\x1b[2J", "\x1b[?25l", "\x1b[?25h"


def snapshot(bridge=None, netns=None):
    """[{bridge, netns, ports: [{port, mode, counts: {(attach, reason): (packets, bytes)}}]}]"""
    return state.each_bridge(bridge, netns, _snapshot_one)


def _snapshot_one(name, ns, s):
    rows = state.port_rows(s, ns)
    ports = {row["port"]: {"port": row["port"], "mode": row["mode"], "counts": {}} for row in rows}
    for port, attach, reason, packets, nbytes in state.counter_rows(s, rows):
        if port in ports:  # not slot 0: frames from interfaces that are no port (yet)
            ports[port]["counts"][(attach, reason)] = (packets, nbytes)
    return [{"bridge": name, "netns": ns, "ports": list(ports.values())}]


def _attach_points(mode):
    return {"xdp": ("xdp",), "tc": ("tc",), "xdp+tc": ("xdp", "tc")}.get(mode, ())


def _delta(now, before, key):
    """Counter growth; a counter that went back (a port re-added, maps rebuilt) starts over."""
    p, b = now.get(key, (0, 0))
    p0, b0 = before.get(key, (0, 0))
    return (p - p0, b - b0) if p >= p0 and b >= b0 else (p, b)


def port_rates(port, before, seconds):
    """Rates of one port between two snapshots of its counts (`before` None: a new port, 0)."""
    points = _attach_points(port["mode"])
    row = {"port": port["port"], "mode": port["mode"]}
    if not points:
        return row | dict.fromkeys(RATES) | {"fast_path_share": None, "pass_reasons": []}
    now = port["counts"]
    before = now if before is None else before
    deltas = {key: _delta(now, before, key) for key in set(now) | set(before)}

    def total(pred):
        hits = [d for key, d in deltas.items() if pred(*key)]
        return sum(p for p, _ in hits), sum(b for _, b in hits)

    received = total(lambda attach, reason: attach == points[0])
    fast = {a: total(lambda attach, reason, a=a: attach == a and reason == "forward") for a in ATTACH_POINTS}
    to_bridge = (
        max(received[0] - sum(p for p, _ in fast.values()), 0),
        max(received[1] - sum(b for _, b in fast.values()), 0),
    )
    reasons = sorted(
        ((r, p) for (a, r), (p, _) in deltas.items() if a == points[-1] and r != "forward" and p > 0),
        key=lambda rp: (-rp[1], rp[0]),
    )
    row |= _per_second("", received, seconds)
    for attach in ATTACH_POINTS:  # an attach point the mode does not run: null, not 0
        per_s = _per_second(f"{attach}_", fast[attach], seconds)
        row |= per_s if attach in points else dict.fromkeys(per_s)
    row |= _per_second("bridge_", to_bridge, seconds)
    row["fast_path_share"] = round(1 - to_bridge[0] / received[0], 4) if received[0] else None
    row["pass_reasons"] = [{"reason": r, "frames_per_s": round(p / seconds, 3)} for r, p in reasons]
    return row


def _per_second(prefix, counts, seconds):
    packets, nbytes = counts
    return {
        f"{prefix}frames_per_s": round(packets / seconds, 3),
        f"{prefix}bits_per_s": round(8 * nbytes / seconds, 3),
    }


def _sum_rows(rows, name="total"):
    total = {"port": name, "mode": None}
    for key in RATES:
        values = [r[key] for r in rows if r[key] is not None]
        total[key] = round(sum(values), 3) if values else None
    fast = (total["xdp_frames_per_s"] or 0) + (total["tc_frames_per_s"] or 0)
    total["fast_path_share"] = round(fast / total["frames_per_s"], 4) if total["frames_per_s"] else None
    reasons = {}
    for r in rows:
        for item in r["pass_reasons"]:
            reasons[item["reason"]] = reasons.get(item["reason"], 0) + item["frames_per_s"]
    ranked = sorted(reasons.items(), key=lambda rp: (-rp[1], rp[0]))
    total["pass_reasons"] = [{"reason": r, "frames_per_s": round(f, 3)} for r, f in ranked]
    return total


def rates(before, after, seconds, now=None):
    """One interval as a JSON-ready dict: every bridge with its ports and total, and the total
    over all bridges. `before` and `after` are snapshots; `seconds` the time between them."""
    old = {(b["bridge"], b["netns"], p["port"]): p for b in before for p in b["ports"]}
    bridges = []
    for b in after:
        ports = []
        for p in b["ports"]:
            prior = old.get((b["bridge"], b["netns"], p["port"]))
            # a port whose mode changed counts at other attach points: start it over
            ports.append(
                port_rates(p, prior["counts"] if prior and prior["mode"] == p["mode"] else None, seconds)
            )
        bridges.append(
            {"bridge": b["bridge"], "netns": b["netns"], "ports": ports, "total": _sum_rows(ports)}
        )
    return {
        "time": round(now if now is not None else time.time(), 3),
        "interval_s": round(seconds, 3),
        "bridges": bridges,
        "total": _sum_rows([b["total"] for b in bridges]),
    }


def _fit(lines, out):
    """On a terminal: cut lines to its width (a wrapped line would break the redraw) and the
    list to its height, saying how many rows did not fit."""
    try:
        columns, rows = os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        columns, rows = shutil.get_terminal_size()
    if len(lines) > rows - 1:
        hidden = len(lines) - (rows - 2)
        lines = lines[: rows - 2] + [f"... {hidden} more lines: a taller terminal, or name one BRIDGE"]
    return [line[:columns] for line in lines]


def run(bridge, netns, interval, count=None, as_json=False, out=None):
    """Print rates every `interval` s until `count` intervals (or Ctrl-C). On a terminal the
    view is redrawn in place; otherwise each interval is appended (plain lines, or with
    `as_json` one JSON object a line)."""
    out = out or sys.stdout
    redraw = not as_json and out.isatty()
    before, started = snapshot(bridge, netns), time.monotonic()
    printed = 0
    try:
        if redraw:
            out.write(HIDE_CURSOR + CLEAR)
        while count is None or printed < count:
            # sleep to the next tick, not for `interval`: reading the maps takes time too
            time.sleep(max(started + interval - time.monotonic(), 0))
            after, now = snapshot(bridge, netns), time.monotonic()
            doc = rates(before, after, now - started)
            if as_json:
                out.write(json.dumps(doc, separators=(",", ":")) + "\n")
            elif redraw:
                lines = _fit(render.rates_text(doc, interval).splitlines(), out)
                out.write(HOME + "".join(line + ERASE_LINE + "\n" for line in lines) + ERASE_BELOW)
            else:
                out.write(render.rates_text(doc, interval) + "\n\n")
            out.flush()
            printed += 1
            before, started = after, now
    finally:
        if redraw:
            out.write(SHOW_CURSOR)
            out.flush()
