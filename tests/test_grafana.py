"""The dashboard: the committed JSON is what grafana/dashboard.py builds, and every query in it
is valid and returns data from a real Prometheus (Debian's) scraping a real exporter while
traffic flows."""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from xdpbr.control.datapath import attachment
from xdpbr.grafana import dashboard

from tests.helpers import ROOT, wait_for

DASHBOARD = os.path.join(ROOT, "grafana", "xdpbr.json")


def test_the_committed_dashboard_is_what_the_builder_makes():
    with open(DASHBOARD) as f:
        assert f.read() == dashboard.render(), "run: python -m xdpbr.grafana.dashboard > grafana/xdpbr.json"


def test_the_dashboard_has_bridge_and_port_variables():
    with open(DASHBOARD) as f:
        board = json.load(f)
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"bridge", "port"} <= names


def _panels():
    with open(DASHBOARD) as f:
        return json.load(f)["panels"]


def test_every_panel_has_a_title_a_unit_and_a_description():
    """What a reader needs without a screenshot: what the panel is, in what unit, and how to read it."""
    missing = [
        (p.get("id"), field)
        for p in _panels()
        for field, value in (
            ("title", p.get("title")),
            ("unit", p.get("fieldConfig", {}).get("defaults", {}).get("unit")),
            ("description", p.get("description")),
        )
        if not (isinstance(value, str) and value.strip())
    ]
    assert missing == []


def test_a_panel_shows_the_fast_path_share_of_each_port():
    share = [
        p
        for p in _panels()
        if p["fieldConfig"]["defaults"]["unit"] == "percentunit"
        and any(
            "xdpbr_fast_path_packets_total" in t["expr"]
            and "xdpbr_received_packets_total" in t["expr"]
            and re.search(r"by \([^)]*\bport\b", t["expr"])
            for t in p["targets"]
        )
    ]
    assert share, "no panel divides fast-path frames by received frames per port"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


class Prometheus:
    def __init__(self, target):
        self.dir = tempfile.TemporaryDirectory(prefix="xdpbr-prom-")
        self.port = _free_port()
        config = os.path.join(self.dir.name, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                f"scrape_configs: [{{job_name: xdpbr, static_configs: [{{targets: ['{target}']}}]}}]\n"
            )
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir.name}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def query(self, expr):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return _get(url)
        except OSError as exc:
            return {"status": "unreachable", "error": str(exc)}

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


@pytest.mark.root
def test_every_dashboard_query_returns_data_from_a_real_prometheus(two_containers):
    lab = two_containers
    attachment.attach(lab.bridge, lab.switch, mode="xdp")
    metrics_port = _free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "xdpbr.control.cli", "daemon", "--metrics", str(metrics_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prom = Prometheus(f"127.0.0.1:{metrics_port}")
    try:
        assert wait_for(lambda: prom.query("up").get("data", {}).get("result"), timeout=20), (
            "Prometheus did not start"
        )
        deadline = time.monotonic() + 12
        i = 0
        while time.monotonic() < deadline:  # traffic and FDB events while Prometheus scrapes
            lab.c1.ping(lab.c2.ip, count=5)
            lab.c1.run("ping", "-c1", "-b", "-W", "1", "10.200.0.255", check=False)
            mac = f"02:00:00:00:01:{i % 256:02x}"
            lab.in_switch("bridge", "fdb", "add", mac, "dev", lab.c1.port, "master", "static")
            lab.in_switch("bridge", "fdb", "del", mac, "dev", lab.c1.port, "master")
            i += 1
        assert prom.query('up{job="xdpbr"}')["data"]["result"][0]["value"][1] == "1"
        with open(DASHBOARD) as f:
            board = json.load(f)
        failures = []
        for expr in dashboard.queries(board):
            concrete = expr.replace("$__rate_interval", "10s").replace("$bridge", ".*").replace("$port", ".*")
            if concrete.startswith("label_values("):
                metric = concrete[len("label_values(") :].rsplit(",", 1)[0]
                concrete = f"count({metric})"
            answer = prom.query(concrete)
            if answer.get("status") != "success" or not answer["data"]["result"]:
                failures.append(f"{expr}: {answer.get('error') or 'no data'}")
        assert failures == []
    finally:
        prom.close()
        daemon.terminate()
        daemon.wait(10)
