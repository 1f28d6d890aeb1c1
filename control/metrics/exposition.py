"""The Prometheus text format (version 0.0.4), written fast enough for 1,000 ports a scrape,
and the HTTP endpoint that serves it.

prometheus_client's generate_latest() validates and escapes every label name of every sample
and goes through float for every value: 277 ms for the 20,000 samples of 1,000 ports, against
84 ms for this writer (medians of `xdpbr bench metrics`, recorded in its JSON). This writer
takes the same families (any prometheus_client collector), escapes only label values, and
writes integers as integers (exact, where floats round above 2**53).
The tests check that Prometheus' parser reads the same samples from both writers and that
promtool accepts the output.
"""

import http
import itertools
import math
import socket
import sys
from urllib.parse import urlsplit

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from ..connections import RequestLoop

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# OpenMetrics-only samples generate_latest() moves into a gauge family of their own.
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
# OpenMetrics types spelled the 0.0.4 way: (suffix of the family name, type written).
_TYPES = {
    "counter": ("_total", "counter"),
    "info": ("_info", "gauge"),
    "stateset": ("", "gauge"),
    "gaugehistogram": ("", "histogram"),
    "unknown": ("", "untyped"),
}


def _escape(value):
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value):
    if type(value) is int:
        return str(value)
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def _help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class RowFamily(Metric):
    """A counter or gauge family kept as rows of label values.

    add() appends a tuple where prometheus_client's add_metric() builds a dict and a Sample
    (~1.5 µs; 1,000 ports make 20,000 of them), and render() formats the rows directly.
    Everything else (generate_latest, get_sample_value, the tests) sees ordinary samples."""

    def __init__(self, name, documentation, typ, labels):
        super().__init__(name, documentation, typ)
        self.label_names = tuple(labels)
        self.sample_name = name + ("_total" if typ == "counter" else "")
        self.rows = []  # (label values, value)

    def add(self, values, value):
        self.rows.append((values, value))

    @property
    def samples(self):
        return [
            Sample(self.sample_name, dict(zip(self.label_names, v, strict=True)), x) for v, x in self.rows
        ]

    @samples.setter
    def samples(self, _):  # Metric.__init__ assigns []: the rows are the samples
        pass


def _rows(family):
    """Sample lines of a RowFamily: one str.format per row."""
    if not family.rows:
        return []
    labels = ",".join(f'{key}="{{}}"' for key in family.label_names)
    line = f"{family.sample_name}{{{{{labels}}}}} {{}}\n".format
    distinct = set(itertools.chain.from_iterable(values for values, _ in family.rows))
    escaped = {v: _escape(v) for v in distinct if _escape(v) != v}
    if escaped:
        return [line(*(escaped.get(v, v) for v in values), _number(value)) for values, value in family.rows]
    return [line(*values, value if type(value) is int else _number(value)) for values, value in family.rows]


def render(registry):
    """The exposition of every family the registry's collectors yield, as bytes."""
    out = []
    append = out.append
    for family in registry.collect():
        suffix, kind = _TYPES.get(family.type, ("", family.type))
        name = family.name + suffix
        append(f"# HELP {name} {_help(family.documentation)}\n# TYPE {name} {kind}\n")
        if isinstance(family, RowFamily):
            out.extend(_rows(family))
            continue
        moved = {family.name + s: [] for s in _OM_SUFFIXES}
        label_cache = {}  # a family's samples share label names: escape each value once
        for sample in family.samples:
            labels = sample.labels
            if labels:
                parts = []
                for key, value in labels.items():
                    part = label_cache.get((key, value))
                    if part is None:
                        part = label_cache[(key, value)] = f'{key}="{_escape(value)}"'
                    parts.append(part)
                line = f"{sample.name}{{{','.join(parts)}}} {_number(sample.value)}"
            else:
                line = f"{sample.name} {_number(sample.value)}"
            if sample.timestamp is not None:
                line += f" {int(float(sample.timestamp) * 1000)}"
            (moved[sample.name] if sample.name in moved else out).append(line + "\n")
        for om_name, lines in sorted(moved.items()):
            if lines:
                append(f"# HELP {om_name} {_help(family.documentation)}\n# TYPE {om_name} gauge\n")
                out.extend(lines)
    return "".join(out).encode()


# The endpoint runs in the root daemon and any local user can connect to it: connections are
# served from one thread (control/connections.py), each bounded in time and size.
MAX_HEADER = 8192  # request line and headers; Prometheus sends a few hundred bytes
REQUEST_DEADLINE_S = 5.0  # a scraper sends its request at once: idle and slow clients are cut here
WRITE_DEADLINE_S = 10.0  # for the response (1,000 ports: ~2 MB); a client reading slower is cut
MAX_CONNECTIONS = 256  # one more cuts the oldest still sending its request


def _response(status, body, content_type="text/plain; charset=utf-8", head=False, extra=""):
    return (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + (b"" if head else body)


def _error(status, text, **kwargs):
    return _response(status, f"xdpbr: {text}\n".encode(), **kwargs)


class _Http:
    """GET (or HEAD) /metrics or /: the protocol of connections.RequestLoop, one request per
    connection (Connection: close). Scrapes run one at a time, in the loop's thread."""

    too_long = _error(431, f"request headers over {MAX_HEADER} bytes")
    timed_out = _error(408, f"no whole request within {REQUEST_DEADLINE_S:g} s")
    busy = _error(503, "too many connections at once")

    def __init__(self, registry):
        self.registry = registry

    @staticmethod
    def admit(sock):
        return None, None  # anyone may scrape, as before

    @staticmethod
    def end(data):
        """Where the headers end (a blank line; bare LFs accepted, like http.server)."""
        found = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
        return min(found, default=None)

    def answer(self, _context, request):
        parts = request.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _error(400, "malformed request line"), []
        method, target, _ = parts
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return _error(405, "only GET", extra="Allow: GET, HEAD\r\n"), []
        if urlsplit(target).path not in ("/", "/metrics"):
            return _error(404, "try /metrics", head=head), []
        try:
            body = render(self.registry)
        except Exception as exc:  # a scrape that fails answers 500 and the server goes on
            print(f"xdpbr: metrics scrape failed: {exc}", file=sys.stderr)
            return _error(500, "scrape failed", head=head), []
        return _response(200, body, CONTENT_TYPE, head=head), []


def start_server(addr, port, registry):
    """Serve the registry on addr:port from one daemon thread; returns the RequestLoop."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    listener = socket.create_server((addr, port), family=family, backlog=128)
    return RequestLoop(
        listener,
        _Http(registry),
        name="metrics",
        max_connections=MAX_CONNECTIONS,
        max_request=MAX_HEADER,
        deadline_s=REQUEST_DEADLINE_S,
        write_deadline_s=WRITE_DEADLINE_S,
    )
