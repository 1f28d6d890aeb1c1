"""Builds grafana/xdpbr.json: `python -m grafana.dashboard > grafana/xdpbr.json`.

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
        [(f"sum by (port) (rate(xdpbr_fast_path_bytes_total{{{SEL}}}[{RATE}]))", "{{port}}")],
    ),
    (
        "Redirect errors (frames lost after the fast path)",
        "pps",
        [(f"sum by (port) (rate(xdpbr_redirect_errors_total{{{SEL}}}[{RATE}]))", "{{port}}")],
    ),
    (
        "FDB mirror usage",
        "percentunit",
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
        [('xdpbr_fast_path_active{bridge=~"$bridge"}', "{{bridge}}")],
    ),
    (
        "Port modes",
        "short",
        [(f"xdpbr_port_info{{{SEL}}}", "{{port}}: {{mode}} ({{reason}})")],
    ),
]


def panel(index, title, unit, targets):
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
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
