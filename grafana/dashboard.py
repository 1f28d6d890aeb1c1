"""Builds grafana/xdpbr.json: `python -m xdpbr.grafana.dashboard > grafana/xdpbr.json`.

tests/test_grafana.py checks that the committed JSON is what this builds, and runs every query
in it against a real Prometheus scraping a real exporter.
"""

import json
import sys

SEL = 'bridge=~"$bridge",port=~"$port"'
RATE = "$__rate_interval"

PANELS = [
    (
        "Fast-path share per port",
        "percentunit",
        (
            "Share of the frames entering each port that the fast path (XDP or TC) forwarded; the rest went "
            "to the Linux bridge. 1 = all on the fast path."
        ),
        [
            (
                f"sum by (bridge, port) (rate(xdpbr_fast_path_packets_total{{{SEL}}}[{RATE}]))"
                f" / sum by (bridge, port) (rate(xdpbr_received_packets_total{{{SEL}}}[{RATE}]))",
                "{{bridge}} {{port}}",
            )
        ],
    ),
    (
        "Packets per second by path",
        "pps",
        (
            "Frames per second forwarded by the fast path, by attach point (xdp, tc), and frames passed to "
            "the Linux bridge."
        ),
        [
            (
                f"sum by (attach) (rate(xdpbr_fast_path_packets_total{{{SEL}}}[{RATE}]))",
                "fast path ({{attach}})",
            ),
            (
                f"sum(rate(xdpbr_received_packets_total{{{SEL}}}[{RATE}]))"
                f" - sum(rate(xdpbr_fast_path_packets_total{{{SEL}}}[{RATE}]))",
                "bridge (slow path)",
            ),
        ],
    ),
    (
        "Passed to the bridge, by reason",
        "pps",
        (
            "Frames per second the fast path handed to the Linux bridge, by attach point and reason (see "
            "README: Why a frame took the slow path)."
        ),
        [
            (
                f"sum by (attach, reason) (rate(xdpbr_passed_packets_total{{{SEL}}}[{RATE}]))",
                "{{attach}} {{reason}}",
            )
        ],
    ),
    (
        "Fast-path throughput",
        "Bps",
        "Bytes per second the fast path forwarded, per ingress port.",
        [(f"sum by (port) (rate(xdpbr_fast_path_bytes_total{{{SEL}}}[{RATE}]))", "{{port}}")],
    ),
    (
        "Redirect errors (frames lost after the fast path)",
        "pps",
        (
            "Frames the fast path redirected that the kernel then failed to deliver (xdp:xdp_redirect_err, "
            "xdp:xdp_devmap_xmit); should stay at 0."
        ),
        [(f"sum by (port) (rate(xdpbr_redirect_errors_total{{{SEL}}}[{RATE}]))", "{{port}}")],
    ),
    (
        "FDB mirror usage",
        "percentunit",
        (
            "Entries in the FDB mirror over its fixed capacity; at 1 new MACs stay on the bridge (reason "
            "fdb_full)."
        ),
        [
            (
                'xdpbr_fdb_entries{bridge=~"$bridge"} / xdpbr_fdb_capacity_entries{bridge=~"$bridge"}',
                "{{bridge}}",
            )
        ],
    ),
    (
        "FDB sync lag (mean)",
        "s",
        "Mean time from the bridge learning a MAC to the fast path having it.",
        [
            (
                f'rate(xdpbr_fdb_sync_lag_seconds_sum{{bridge=~"$bridge"}}[{RATE}])'
                f' / rate(xdpbr_fdb_sync_lag_seconds_count{{bridge=~"$bridge"}}[{RATE}])',
                "{{bridge}}",
            )
        ],
    ),
    (
        "Fast path active (daemon heartbeat)",
        "short",
        "1 while a daemon heartbeat is within the grace period; 0: every frame goes to the bridge.",
        [('xdpbr_fast_path_active{bridge=~"$bridge"}', "{{bridge}}")],
    ),
    (
        "Port modes",
        "short",
        "Each port's mode (xdp, tc, xdp+tc, bridge) and why it runs it; the value is always 1.",
        [(f"xdpbr_port_info{{{SEL}}}", "{{port}}: {{mode}} ({{reason}})")],
    ),
]


def panel(index, title, unit, description, targets):
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def variable(name, query):
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard():
    return {
        "uid": "xdpbr",
        "title": "xdpbr: bridge fast path",
        "tags": ["xdpbr", "xdp", "bridge"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
                variable("bridge", "label_values(xdpbr_port_info, bridge)"),
                variable("port", 'label_values(xdpbr_port_info{bridge=~"$bridge"}, port)'),
            ]
        },
        "panels": [panel(i, *spec) for i, spec in enumerate(PANELS)],
    }


def queries(board):
    """Every PromQL expression in a dashboard (panels and variables)."""
    out = [t["expr"] for p in board["panels"] for t in p["targets"]]
    out += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return out


def render():
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
