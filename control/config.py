"""/etc/xdpbr/xdpbr[-INSTANCE].toml: what the daemon accelerates and how it runs.

    [daemon]
    metrics = "127.0.0.1:9435"   # optional: serve Prometheus metrics ([ADDR:]PORT)
    on_stop = "keep"             # keep: the fast path runs on after the daemon stops
                                 # detach: the configured bridges are detached at stop

    [broker]
    group = "kvm"                # group allowed on /run/xdpbr/BRIDGE.sock (AF_XDP endpoints)

    [[bridge]]
    name = "br0"
    netns = "tenant1"            # optional: the bridge's network namespace
    mode = "auto"                # auto | xdp | tc | xdp+tc | bridge
    xdp_mode = "any"             # any | native | generic
    netfilter = "respect"        # respect | bypass
    ignore_ports = ["eth0"]      # ports left alone (mode bridge)
    fdb_max_learned = 0          # the bridge's own limit on learned entries, 0 = unlimited
    max_ports = 1024             # optional: port slots xdpbr's maps hold (8-4096)
    fdb_size = 16384             # optional: entries of xdpbr's FDB mirror (256-1048576)

Every error names the file, the line and the key. tomllib reports lines for syntax errors
only, so the lines of keys are found by reading the file (`_KeyLines`).
"""

import dataclasses
import difflib
import grp
import os
import re
import tomllib

from ..loader import instance
from ..loader.bridge_id import BridgeId
from ..loader.errors import XdpbrError
from ..loader.layouts import FDB_SIZE_RANGE, MAX_PORTS_RANGE, REQUESTED_MODES, XDP_MODE_REQUESTS
from .connections import parse_listen
from .model import NETFILTER_CHOICES


def held_dir():
    """`xdpbr detach` holds a bridge here until `xdpbr attach`: the daemon does not re-attach
    it, also after a restart or a reboot."""
    return instance.held_dir()


ON_STOP = ("keep", "detach")
IFNAMSIZ = 16


class ConfigError(XdpbrError):
    pass


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    name: str
    netns: str | None = None
    mode: str = "auto"
    xdp_mode: str = "any"
    netfilter: str = "respect"
    ignore_ports: tuple = ()
    fdb_max_learned: int | None = None  # None: leave the bridge's setting alone
    max_ports: int | None = None  # None: the attachment's, or the default
    fdb_size: int | None = None

    @property
    def label(self):
        return BridgeId(self.name, self.netns).label


@dataclasses.dataclass(frozen=True)
class Config:
    path: str | None = None
    metrics: str | None = None
    on_stop: str = "keep"
    broker_group: str | None = None
    bridges: tuple = ()


class _KeyLines:
    """Line numbers of `key = ...` under each table: {(table, index, key): line}."""

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
    KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")

    def __init__(self, text):
        self.lines = {}
        self.tables = {}
        table, index, counts = "", 0, {}
        for number, line in enumerate(text.splitlines(), 1):
            header = self.HEADER.match(line)
            if header:
                table = header.group(2)
                if header.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = 0
                self.tables.setdefault((table, index), number)
                continue
            key = self.KEY.match(line)
            if key:
                self.lines.setdefault((table, index, key.group(1).strip('"')), number)

    def of(self, table, index, key=None):
        if key is None:
            return self.tables.get((table, index), 1)
        return self.lines.get((table, index, key), self.tables.get((table, index), 1))


class _Reader:
    def __init__(self, path, text):
        self.path, self.where = path, _KeyLines(text)

    def fail(self, table, index, key, message, fix=None):
        name = f"{table}.{key}" if key and table else (key or table)
        if table == "bridge" and key:
            name = f"bridge[{index}].{key}"
        line = self.where.of(table, index, key)
        raise ConfigError(f"{self.path}:{line}: {name}: {message}", fix=fix)

    def table(self, data, table, index, allowed):
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(table, index, key, f"unknown key; {hint}known keys: {', '.join(allowed)}")

    def string(self, data, table, index, key, choices=None, default=None):
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, str):
            self.fail(table, index, key, f"expected a string, got {type(value).__name__}")
        if choices and value not in choices:
            self.fail(table, index, key, f"{value!r} is not one of {', '.join(choices)}")
        return value


def _check_ifname(reader, table, index, key, value):
    if not value or len(value) >= IFNAMSIZ or "/" in value or ":" in value or value.strip() != value:
        reader.fail(
            table, index, key, f"{value!r} is not an interface name (1-15 characters, no '/', ':' or spaces)"
        )


def load(path):
    """Read and validate the configuration; raises ConfigError naming file, line and key."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", fix=f"create {path} or pass --config FILE"
        ) from None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", str(exc))
        if not where:
            raise ConfigError(f"{path}: {exc}") from None
        line, column, message = where.group(1), where.group(2), str(exc)[: where.start()]
        raise ConfigError(f"{path}:{line}: TOML syntax: {message} (column {column})") from None
    r = _Reader(path, text)
    r.table(data, "", 0, ("daemon", "broker", "bridge"))
    for name, kind in (("daemon", dict), ("broker", dict), ("bridge", list)):
        if name in data and not isinstance(data[name], kind):
            what = "a table [daemon]" if kind is dict else "tables [[bridge]]"
            r.fail(name, 0, None, f"expected {what}")
    daemon = data.get("daemon", {})
    r.table(daemon, "daemon", 0, ("metrics", "on_stop"))
    metrics = r.string(daemon, "daemon", 0, "metrics")
    if metrics is not None:
        try:
            parse_listen(metrics)
        except XdpbrError:
            r.fail("daemon", 0, "metrics", f'{metrics!r}: expected [ADDR:]PORT, for example "9435"')
    on_stop = r.string(daemon, "daemon", 0, "on_stop", ON_STOP, "keep")
    broker = data.get("broker", {})
    r.table(broker, "broker", 0, ("group",))
    group = r.string(broker, "broker", 0, "group")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            r.fail(
                "broker", 0, "group", f"no group {group!r} on this host", fix="groupadd it, or name another"
            )
    bridges, seen = [], {}
    for i, b in enumerate(data.get("bridge", [])):
        if not isinstance(b, dict):
            r.fail("bridge", i, None, "expected a table [[bridge]]")
        keys = (
            "name",
            "netns",
            "mode",
            "xdp_mode",
            "netfilter",
            "ignore_ports",
            "fdb_max_learned",
            "max_ports",
            "fdb_size",
        )
        r.table(b, "bridge", i, keys)
        name = r.string(b, "bridge", i, "name")
        if name is None:
            r.fail("bridge", i, None, "missing key 'name'")
        _check_ifname(r, "bridge", i, "name", name)
        netns = r.string(b, "bridge", i, "netns") or None
        if netns is not None and ("/" in netns or netns in (".", "..") or "@" in netns):
            r.fail(
                "bridge",
                i,
                "netns",
                f"{netns!r} is not a namespace name",
                fix="name one from `ip netns list`",
            )
        label = BridgeId(name, netns).label
        if label in seen:
            r.fail("bridge", i, "name", f"{label} is configured twice (first at line {seen[label]})")
        seen[label] = r.where.of("bridge", i, "name")
        ignore = b.get("ignore_ports", [])
        if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
            r.fail("bridge", i, "ignore_ports", "expected a list of interface names")
        for port in ignore:
            _check_ifname(r, "bridge", i, "ignore_ports", port)
        limit = b.get("fdb_max_learned")
        if limit is not None and (type(limit) is not int or not 0 <= limit < 2**32):
            r.fail("bridge", i, "fdb_max_learned", f"{limit!r}: expected a whole number, 0 for no limit")
        sizes = {}
        for key, (lo, hi) in (("max_ports", MAX_PORTS_RANGE), ("fdb_size", FDB_SIZE_RANGE)):
            value = b.get(key)
            if value is not None and (type(value) is not int or not lo <= value <= hi):
                r.fail("bridge", i, key, f"{value!r}: expected a whole number from {lo} to {hi}")
            sizes[key] = value
        bridges.append(
            BridgeConfig(
                name=name,
                netns=netns,
                mode=r.string(b, "bridge", i, "mode", REQUESTED_MODES, "auto"),
                xdp_mode=r.string(b, "bridge", i, "xdp_mode", XDP_MODE_REQUESTS, "any"),
                netfilter=r.string(b, "bridge", i, "netfilter", NETFILTER_CHOICES, "respect"),
                ignore_ports=tuple(ignore),
                fdb_max_learned=limit,
                **sizes,
            )
        )
    return Config(path=path, metrics=metrics, on_stop=on_stop, broker_group=group, bridges=tuple(bridges))


def load_default():
    """The instance's configuration (/etc/xdpbr/xdpbr[-INSTANCE].toml), or an empty one when
    there is no file."""
    path = instance.config_path()
    if not os.path.exists(path):
        return Config()
    return load(path)


def held_by_operator(label):
    return os.path.exists(BridgeId.parse(label).held_marker)


def hold(label, held):
    """Remember (or forget) that an operator detached bridge `label` ('br0' or 'br0@netns')."""
    path = BridgeId.parse(label).held_marker
    if held:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("detached with `xdpbr detach`; `xdpbr attach` gives it back to the daemon\n")
    elif os.path.exists(path):
        os.unlink(path)
