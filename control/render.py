"""Text or JSON from the dicts a command returns: one source for both outputs."""

import json
import sys


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
        nf = b["netfilter"] + (" (blocked: rules could see frames)" if b["netfilter_blocked"] else "")
        head = (
            f"bridge {b['bridge']}{where}: fast path {state}; mode {b['mode']}, xdp-mode {b['xdp_mode']}, "
            f"netfilter {nf}; heartbeat {b['heartbeat_age_s']:.1f}s ago (grace {b['grace_s']:g}s); "
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
        blocks.append(head + ("\n" + _indent(table) if table else ""))
    return "\n".join(blocks)


def _indent(text):
    return "\n".join("    " + line for line in text.splitlines())


def stats_text(rows):
    return _table(rows, ["bridge", "port", "attach", "reason", "packets", "bytes"])


def fdb_text(rows):
    return _table(rows, ["mac", "vlan", "port", "flags", "fast_path_used_s_ago"])


def ports_text(rows):
    return _table(rows, ["port", "mode", "why", "xdp_mode"])


def endpoints_text(rows):
    return _table(rows, ["bridge", "name", "path", "why", "port", "mac", "queues", "present"])
