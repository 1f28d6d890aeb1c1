"""Prometheus metrics, read from the pinned maps at scrape time.

A custom collector (no polling thread): each scrape opens every attached bridge's pins, sums
the per-CPU counters and reads the control-plane counters the attach and the daemon leave in
bpffs, so it keeps working while the daemon restarts and bridges come and go. A bridge that
cannot be read is skipped and counted in xdpbr_scrape_errors_total; the scrape goes on.

Labels: bridge (`br0`, or `br0@NETNS` for a bridge in another namespace), port, attach,
reason; info metrics add mode, xdp_mode, prog_id. Never a MAC address, never a CPU.
"""

import time
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ...loader import pins, tracepoints
from ...loader.bridge_id import BridgeId
from ...loader.errors import XdpbrError
from ...loader.layouts import (
    ATTACH_POINTS,
    CONTROL_ATTACH,
    CONTROL_DAEMON,
    RELOAD_FAILED,
    Control,
)
from ...loader.netns import interface_names
from ..connections import parse_listen
from ..datapath import state
from ..datapath import tc_store as tcstore
from ..datapath.session import Session
from ..endpoints import lifecycle as endpoints
from ..netfilter import store as nfstore
from .exposition import RowFamily, render, start_server


@dataclass
class BridgeReading:
    """Everything one scrape reports about one bridge."""

    label: str
    fdb_entries: int
    fdb_capacity: int
    fast_path_active: bool
    heartbeat_age_s: float
    attach: Control
    daemon: Control
    counters: list = field(default_factory=list)  # (port, attach, reason, packets, bytes)
    redirect_errors: dict = field(default_factory=dict)  # port -> errors
    ports: list = field(default_factory=list)  # dicts: port, mode, why, xdp_mode, prog ids
    holds: dict = field(default_factory=dict)  # port -> the netfilter hold that keeps it on the bridge
    tc_policies: dict = field(default_factory=dict)  # port -> {"egress": text, "ingress": text}


# One sample per bridge each: (family type, name, help, value from a BridgeReading).
BRIDGE_METRICS = [
    (GaugeMetricFamily, "xdpbr_fdb_entries", "Entries in the FDB mirror.", lambda r: r.fdb_entries),
    (
        GaugeMetricFamily,
        "xdpbr_fdb_capacity_entries",
        "Capacity of the FDB mirror.",
        lambda r: r.fdb_capacity,
    ),
    (
        CounterMetricFamily,
        "xdpbr_fdb_events",
        "FDB events the daemon applied to the mirror.",
        lambda r: r.daemon.fdb_events,
    ),
    (
        GaugeMetricFamily,
        "xdpbr_fast_path_active",
        "1 while the daemon heartbeat is within the grace period.",
        lambda r: int(r.fast_path_active),
    ),
    (
        GaugeMetricFamily,
        "xdpbr_heartbeat_age_seconds",
        "Seconds since the last control-plane heartbeat.",
        lambda r: r.heartbeat_age_s,
    ),
    (
        GaugeMetricFamily,
        "xdpbr_compile_seconds",
        "Duration of the last compile of the fast path.",
        lambda r: r.attach.compile_ns / 1e9,
    ),
    (
        GaugeMetricFamily,
        "xdpbr_attach_seconds",
        "Duration of the last attach, compile included.",
        lambda r: r.attach.attach_ns / 1e9,
    ),
    (
        CounterMetricFamily,
        "xdpbr_resyncs",
        "Full FDB and port resyncs by the daemon.",
        lambda r: r.daemon.resyncs,
    ),
    (
        CounterMetricFamily,
        "xdpbr_control_errors",
        "Failed daemon resyncs, reconciles, aging refreshes and event readers (restarted).",
        lambda r: r.daemon.errors,
    ),
]


def bridge_label(bridge, netns):
    return BridgeId(bridge, netns).label


class PinnedMapReader:
    """Reads attached bridges from bpffs (bpf(2)) and their port names from netlink."""

    def __init__(self, bridge=None, netns=None):
        self.bridge, self.netns = bridge, netns
        self.redirect_errors = {}

    def bridges(self):
        """Yields a BridgeReading, or an XdpbrError, per attached bridge."""

        self.redirect_errors = tracepoints.read_redirect_errors()  # host-wide: read once per scrape
        for name, ns in state.targets(self.bridge, self.netns):
            try:
                yield self._read(name, ns)
            except (XdpbrError, OSError) as exc:
                yield exc

    def daemon(self):
        """(DaemonRecord, running) of the instance's daemon, or None when none has run here."""
        return pins.read_daemon_record()

    def endpoints(self):
        """(bridge label, endpoint record, counters or None) of every endpoint (`xdpbr endpoint`);
        call after bridges(), whose scrape read the redirect errors."""

        for rec in endpoints.records(self.bridge, self.netns):
            try:
                counters = endpoints.counters(rec)
            except (XdpbrError, OSError):
                counters = None  # deleted meanwhile
            if counters is not None:
                counters["redirect_errors"] = sum(
                    n for (map_id, _), n in self.redirect_errors.items() if map_id == counters["xskmap_id"]
                )
            yield bridge_label(rec["bridge"], rec["netns"]), rec, counters

    def _read(self, name, ns):

        with Session(name, ns) as s:
            s.open_pins()
            ports = s.ports()
            names = interface_names(ns, ports)  # redirect errors come by ifindex
            age, active = s.heartbeat_age()
            controls = [s.control(CONTROL_ATTACH), s.control(CONTROL_DAEMON)]
            fdb_entries, fdb_capacity = s.fdb_fill()
            reading = BridgeReading(
                label=bridge_label(name, ns),
                fdb_entries=fdb_entries,
                fdb_capacity=fdb_capacity,
                fast_path_active=active,
                heartbeat_age_s=age,
                attach=controls[0],
                daemon=controls[1],
            )
            reading.ports = state.port_rows(s, ns, ports, names)
            devmap_id = s.map_id("xdpbr_devmap")
            port_of = {ifindex: names.get(ifindex, f"if{ifindex}") for ifindex in ports}
            for p in reading.ports:
                if p["mode"] != "bridge":
                    reading.redirect_errors[p["port"]] = 0
            for (map_id, ifindex), errors in self.redirect_errors.items():
                if map_id in (devmap_id, 0) and ifindex in port_of:
                    port = port_of[ifindex]
                    reading.redirect_errors[port] = reading.redirect_errors.get(port, 0) + errors
            reading.counters = state.counter_rows(s, reading.ports)
            saved = nfstore.load(name, ns) or {"bridge_hold": None, "ports": {}}
            for p in reading.ports:
                hold = saved["bridge_hold"] or saved["ports"].get(p["port"])
                if hold:
                    reading.holds[p["port"]] = hold
            reading.tc_policies = tcstore.load(name, ns)
            return reading


class XdpbrCollector(Collector):
    def __init__(self, reader=None):
        self.reader = reader or PinnedMapReader()
        self.scrape_errors = 0

    def describe(self):
        return []  # families depend on what is attached: collected at scrape time only

    def collect(self):
        start = time.perf_counter()
        fast = {
            unit: RowFamily(
                f"xdpbr_fast_path_{unit}",
                f"{unit.capitalize()} forwarded port to port by the fast path.",
                "counter",
                ["bridge", "port", "attach"],
            )
            for unit in ("packets", "bytes")
        }
        passed = {
            unit: RowFamily(
                f"xdpbr_passed_{unit}",
                f"{unit.capitalize()} handed to the bridge (or, in xdp+tc, from XDP on to TC), by reason.",
                "counter",
                ["bridge", "port", "attach", "reason"],
            )
            for unit in ("packets", "bytes")
        }
        received = {
            unit: RowFamily(
                f"xdpbr_received_{unit}",
                f"{unit.capitalize()} that entered the fast path on a port (its first attach point).",
                "counter",
                ["bridge", "port"],
            )
            for unit in ("packets", "bytes")
        }
        port_info = InfoMetricFamily(
            "xdpbr_port", "Mode of each bridge port and why.", labels=["bridge", "port"]
        )
        hold_info = InfoMetricFamily(
            "xdpbr_port_netfilter_hold",
            "The netfilter rule (or policy) that keeps a port on the Linux bridge.",
            labels=["bridge", "port"],
        )
        tc_info = InfoMetricFamily(
            "xdpbr_port_tc_policy",
            "Another tool's tc policy on a port (a shaping qdisc, filters, TCX programs): egress, no "
            "redirect into it skips it; ingress, the port's frames go to the bridge.",
            labels=["bridge", "port", "direction"],
        )
        prog_info = InfoMetricFamily(
            "xdpbr_program", "xdpbr program attached to a port.", labels=["bridge", "port", "attach"]
        )
        redirect_errors = CounterMetricFamily(
            "xdpbr_redirect_errors",
            "Frames the fast path redirected that the kernel then failed to deliver (xdp tracepoints).",
            labels=["bridge", "port"],
        )
        sync_lag = SummaryMetricFamily(
            "xdpbr_fdb_sync_lag_seconds",
            "Time from the bridge learning a MAC (or, for entries added by hand, from the daemon "
            "receiving the event) to the fast path having it.",
            labels=["bridge"],
        )
        per_bridge = [
            (kind(name, help_text, labels=["bridge"]), value)
            for kind, name, help_text, value in BRIDGE_METRICS
        ]
        for reading in self.reader.bridges():
            if isinstance(reading, Exception):
                self.scrape_errors += 1
                continue
            b = reading.label
            # one pass over the biggest part of the scrape: rows appended, no Sample built
            fast_packets, fast_bytes = fast["packets"].rows.append, fast["bytes"].rows.append
            passed_packets, passed_bytes = passed["packets"].rows.append, passed["bytes"].rows.append
            per_attach = {}
            for port, attach, reason, packets, nbytes in reading.counters:
                if reason == "forward":
                    fast_packets(((b, port, attach), packets))
                    fast_bytes(((b, port, attach), nbytes))
                else:
                    passed_packets(((b, port, attach, reason), packets))
                    passed_bytes(((b, port, attach, reason), nbytes))
                sums = per_attach.get((port, attach))
                if sums is None:
                    per_attach[(port, attach)] = [packets, nbytes]
                else:
                    sums[0] += packets
                    sums[1] += nbytes
            for p in reading.ports:
                # every frame meets the port's first attach point once (xdp+tc: XDP)
                first = "xdp" if p["mode"] in ("xdp", "xdp+tc") else "tc"
                totals = per_attach.get((p["port"], first), (0, 0))
                if p["mode"] != "bridge":
                    received["packets"].add((b, p["port"]), totals[0])
                    received["bytes"].add((b, p["port"]), totals[1])
                port_info.add_metric(
                    [b, p["port"]], {"mode": p["mode"], "xdp_mode": p["xdp_mode"], "reason": p["why"]}
                )
                hold = reading.holds.get(p["port"])
                if hold:
                    where = {
                        k: str(hold[k] if hold[k] is not None else "") for k in ("family", "table", "chain")
                    }
                    hold_info.add_metric([b, p["port"]], where | {"position": str(hold["position"] or "")})
                for direction, text in sorted((reading.tc_policies.get(p["port"]) or {}).items()):
                    if text:
                        tc_info.add_metric([b, p["port"], direction], {"policy": text})
                for attach in ATTACH_POINTS:
                    if p[f"{attach}_prog_id"]:
                        prog_info.add_metric([b, p["port"], attach], {"prog_id": str(p[f"{attach}_prog_id"])})
            for port, lost in sorted(reading.redirect_errors.items()):
                redirect_errors.add_metric([b, port], lost)
            sync_lag.add_metric([b], reading.daemon.fdb_events, reading.daemon.sync_lag_ns_sum / 1e9)
            for family, value in per_bridge:
                family.add_metric([b], value(reading))
        yield from fast.values()
        yield from passed.values()
        yield from received.values()
        yield from (port_info, hold_info, tc_info, prog_info, redirect_errors, sync_lag)
        if hasattr(self.reader, "endpoints"):
            yield from _endpoint_families(self.reader)
        if hasattr(self.reader, "daemon"):
            try:
                found = self.reader.daemon()
            except (XdpbrError, OSError):
                found = None
                self.scrape_errors += 1
            if found:
                yield from _daemon_families(*found)
        yield from (family for family, _ in per_bridge)
        yield CounterMetricFamily(
            "xdpbr_scrape_errors", "Bridges that could not be read during a scrape.", value=self.scrape_errors
        )
        yield GaugeMetricFamily(
            "xdpbr_scrape_duration_seconds", "Time this scrape took.", value=time.perf_counter() - start
        )


def _endpoint_families(reader):
    """AF_XDP and TAP endpoints: path as info, frames to their sockets (counted in BPF by the
    endpoint's XDP program), frames that found no socket, redirect errors. Frames from the
    sockets enter the bridge at port <name>-p: xdpbr_received_packets_total{port="<name>-p"}.
    Socket-level drops (XDP_STATISTICS) need the socket, which only its consumer holds."""
    info = InfoMetricFamily(
        "xdpbr_endpoint", "VM endpoint: its path (afxdp/tap) and why.", labels=["bridge", "endpoint"]
    )
    to_socket = {
        unit: CounterMetricFamily(
            f"xdpbr_endpoint_to_socket_{unit}",
            f"{unit.capitalize()} the endpoint's XDP program handed to an AF_XDP socket.",
            labels=["bridge", "endpoint"],
        )
        for unit in ("packets", "bytes")
    }
    no_socket = CounterMetricFamily(
        "xdpbr_endpoint_no_socket_packets",
        "Frames for the endpoint that found no socket on their queue (its VMM is not running).",
        labels=["bridge", "endpoint"],
    )
    errors = CounterMetricFamily(
        "xdpbr_endpoint_redirect_errors",
        "Frames the kernel failed to put into the endpoint's sockets (ring full, no fill buffer).",
        labels=["bridge", "endpoint"],
    )
    for b, rec, counters in reader.endpoints():
        info.add_metric([b, rec["name"]], {"path": rec.get("path", ""), "reason": rec.get("why", "")})
        if counters:
            to_socket["packets"].add_metric([b, rec["name"]], counters["to_socket"][0])
            to_socket["bytes"].add_metric([b, rec["name"]], counters["to_socket"][1])
            no_socket.add_metric([b, rec["name"]], counters["no_socket"][0])
            errors.add_metric([b, rec["name"]], counters["redirect_errors"])

    unreadable = CounterMetricFamily(
        "xdpbr_endpoint_record_errors",
        "Endpoint records skipped because they could not be read (corrupt, half written, foreign).",
        value=endpoints.unreadable_records,
    )
    return [info, *to_socket.values(), no_socket, errors, unreadable]


def _daemon_families(rec, running):
    """The instance's daemon, from its record (struct xdpbr_daemon): whether it runs, its loop,
    when it last scanned, checked rules and reconciled (Unix time, converted from the record's
    CLOCK_MONOTONIC), and its reloads."""
    now_mono, now_unix = time.monotonic_ns(), time.time()

    def unix(ns):
        return now_unix - (now_mono - ns) / 1e9 if ns else 0.0

    gauges = [
        ("xdpbr_daemon_running", "1 while this instance's daemon runs.", int(running)),
        (
            "xdpbr_daemon_loop_generation",
            "Turns of the daemon's loop (counted on across restarts).",
            rec.loop_generation,
        ),
        ("xdpbr_daemon_bridges", "Bridges the daemon holds.", rec.bridges if running else 0),
        (
            "xdpbr_daemon_bridges_failed",
            "Bridges the daemon holds that are unhealthy (no heartbeat).",
            rec.bridges_failed if running else 0,
        ),
        (
            "xdpbr_daemon_start_timestamp_seconds",
            "When the running daemon started (0: none runs).",
            unix(rec.started_ns) if running else 0.0,
        ),
        (
            "xdpbr_daemon_last_scan_timestamp_seconds",
            "When the daemon last scanned the pins (twice a second while it runs).",
            unix(rec.scanned_ns),
        ),
        (
            "xdpbr_daemon_last_rules_check_timestamp_seconds",
            "When the daemon last checked the netfilter rules.",
            unix(rec.rules_checked_ns),
        ),
        (
            "xdpbr_daemon_last_reconcile_timestamp_seconds",
            "When the daemon last brought a bridge in line with the kernel (resync or port changes).",
            unix(rec.reconciled_ns),
        ),
        (
            "xdpbr_daemon_last_reload_successful",
            "0 when the last configuration reload failed (the daemon kept the previous one), else 1.",
            int(rec.reload_result != RELOAD_FAILED),
        ),
        (
            "xdpbr_daemon_last_reload_timestamp_seconds",
            "When the last configuration reload finished (0: none yet).",
            unix(rec.reload_finished_ns),
        ),
    ]
    families = [GaugeMetricFamily(name, help_text, value=value) for name, help_text, value in gauges]
    reloads = CounterMetricFamily(
        "xdpbr_daemon_reloads", "Configuration reloads (SIGHUP), by result.", labels=["result"]
    )
    reloads.add_metric(["ok"], rec.reloads_ok)
    reloads.add_metric(["failed"], rec.reloads_failed)
    return [*families, reloads]


def registry(reader=None, with_process=False):
    from prometheus_client import CollectorRegistry, ProcessCollector

    reg = CollectorRegistry()
    reg.register(XdpbrCollector(reader))
    if with_process:
        ProcessCollector(registry=reg)
    return reg


def exposition(bridge=None, netns=None):
    """The text exposition once (`xdpbr metrics`)."""
    return render(registry(PinnedMapReader(bridge, netns))).decode()


def serve(spec):
    addr, port = parse_listen(spec)
    try:
        start_server(addr, port, registry(with_process=True))
    except OSError as exc:
        raise XdpbrError(f"cannot serve metrics on {addr}:{port}", errno=exc.errno) from None
    return addr, port
