"""Text or JSON from the dicts a command returns: one source for both outputs."""

import json
import sys
import time


def emit(rows, as_json, text_fn, out=None):
    out = out or sys.stdout
    if as_json:
        out.write(json.dumps(rows, separators=(",", ":")) + "\n")
    else:
        text = text_fn(rows)
        if text:
            out.write(text + "\n")
    out.flush()


def _table(rows, columns):
    if not rows:
        return ""
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)


def show_text(bridges):
    blocks = []
    for b in bridges:
        where = f" netns {b['netns']}" if b["netns"] else ""
        state = "active" if b["fast_path_active"] else "PASSING ALL (no daemon heartbeat within grace period)"
        nf = b["netfilter"] + (", counting rules hold" if b.get("netfilter_counters") == "hold" else "")
        if b.get("netfilter_hold"):
            nf += f" (every port held by {b['netfilter_hold']['text']})"
        elif any(p.get("netfilter_hold") for p in b["ports"]):
            nf += f" ({sum(1 for p in b['ports'] if p.get('netfilter_hold'))} port(s) held by rules)"
        entry = f" (configured by {b['config_entry']})" if b.get("config_entry") else ""
        head = (
            f"bridge {b['bridge']}{where}{entry}: fast path {state}; mode {b['mode']}, "
            f"xdp-mode {b['xdp_mode']}, netfilter {nf}; "
            f"heartbeat {b['heartbeat_age_s']:.1f}s ago (grace {b['grace_s']:g}s); "
            f"programs xdp {b['xdp_prog_id']} tc {b['tc_prog_id']} (tags {b['xdp_prog_tag']} "
            f"{b['tc_prog_tag']}, layout version {b['layout_version']})"
            + (
                "; FDB mirror FULL: new MACs take the slow path (fdb_full)"
                if b.get("fdb_mirror_full")
                else ""
            )
        )
        table = _table(
            b["ports"],
            [
                "port",
                "mode",
                "why",
                "xdp_mode",
                "xdp_prog_id",
                "tc_prog_id",
                "forwarding",
                "xdp_egress",
                "peer_gro_set",
            ],
        )
        held = [
            f"{p['port']}: held by {p['netfilter_hold']['text']}"
            for p in b["ports"]
            if p.get("netfilter_hold")
        ]
        if held and not b.get("netfilter_hold"):
            table += "\n" + "\n".join(held)
        shaped = [line for p in b["ports"] for line in _tc_lines(p)]
        if shaped:
            table += "\n" + "\n".join(shaped)
        blocks.append(head + ("\n" + _indent(table) if table else ""))
    daemon = next((b["daemon"] for b in bridges if b.get("daemon")), None) or {}
    for alone in daemon.get("left_alone") or []:
        blocks.append(f"configured bridge {alone['bridge']} ({alone['entry']}) left alone: {alone['reason']}")
    return "\n".join(blocks)


def _tc_lines(port):
    """What tc policy of another tool the port's frames meet, and what xdpbr does about it."""
    if port.get("tc_egress_policy"):
        yield f"{port['port']}: egress shaped by {port['tc_egress_policy']}: no XDP or peer redirect into it"
    if port.get("tc_ingress_policy"):
        yield f"{port['port']}: ingress policed by {port['tc_ingress_policy']}: its frames go to the bridge"


def _indent(text):
    return "\n".join("    " + line for line in text.splitlines())


def stats_text(rows):
    return _table(rows, ["bridge", "port", "attach", "reason", "packets", "bytes"])


def fdb_text(rows):
    return _table(rows, ["mac", "vlan", "port", "flags", "fast_path_used_s_ago"])


def ports_text(rows):
    table = _table(rows, ["port", "mode", "why", "xdp_mode", "tc_attach"])
    shaped = [line for p in rows for line in _tc_lines(p)]
    return "\n".join([table, *shaped]) if shaped else table


def endpoints_text(rows):
    return _table(rows, ["bridge", "name", "path", "why", "port", "mac", "queues", "present"])


def _si(value):
    """1234567 -> 1.23M: three significant digits, SI prefixes (frames and bits per second)."""
    if value is None:
        return "-"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


RATE_COLUMNS = (
    ("port", "port", str, "<"),
    ("mode", "mode", lambda v: v or "", "<"),
    ("frames/s", "frames_per_s", _si, ">"),
    ("bits/s", "bits_per_s", _si, ">"),
    ("xdp/s", "xdp_frames_per_s", _si, ">"),
    ("tc/s", "tc_frames_per_s", _si, ">"),
    ("bridge/s", "bridge_frames_per_s", _si, ">"),
    ("fast", "fast_path_share", lambda v: "-" if v is None else f"{100 * v:.0f}%", ">"),
    (
        "passed to the bridge: top reasons (frames/s)",
        "pass_reasons",
        lambda v: ", ".join(f"{r['reason']} {_si(r['frames_per_s'])}" for r in v[:3]) or "-",
        "<",
    ),
)


def rates_text(doc, interval):
    """The `stats --watch` view of one interval (control/cli/watch.py): per bridge a table of its
    ports and their total; xdp/s and tc/s are what the fast path forwarded, bridge/s the rest."""
    when = time.strftime("%H:%M:%S", time.localtime(doc["time"]))
    lines = [
        f"xdpbr stats --watch  every {interval:g}s  {when}  per second over the last {doc['interval_s']:.2f}s"
    ]
    if not doc["bridges"]:
        return "\n".join([*lines, "no attached bridge"])
    for b in doc["bridges"]:
        where = f" netns {b['netns']}" if b["netns"] else ""
        rows = [*b["ports"], b["total"]]
        cells = [[c[0] for c in RATE_COLUMNS]] + [
            [fmt(r[key]) for _, key, fmt, _ in RATE_COLUMNS] for r in rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(RATE_COLUMNS))]
        lines.append(f"bridge {b['bridge']}{where}")
        for row in cells:
            text = "  ".join(
                v.ljust(w) if c[3] == "<" else v.rjust(w)
                for v, w, c in zip(row, widths, RATE_COLUMNS, strict=True)
            )
            lines.append("  " + text.rstrip())
    if len(doc["bridges"]) > 1:
        t = doc["total"]
        lines.append(
            f"all bridges: {_si(t['frames_per_s'])} frames/s, {_si(t['bits_per_s'])} bits/s, "
            f"fast path {RATE_COLUMNS[7][2](t['fast_path_share'])}"
        )
    lines.append("xdp/s, tc/s: forwarded by the fast path; bridge/s: passed to the Linux bridge")
    return "\n".join(lines)
