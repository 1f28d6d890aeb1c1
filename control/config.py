"""/etc/xdpbr/xdpbr[-INSTANCE].toml: what the daemon accelerates and how it runs.

    [daemon]
    metrics = "127.0.0.1:9435"   # optional: serve Prometheus metrics ([ADDR:]PORT)
    on_stop = "keep"             # keep: the fast path runs on after the daemon stops
                                 # detach: the configured bridges are detached at stop

    [broker]
    group = "kvm"                # group allowed on /run/xdpbr/BRIDGE.sock (AF_XDP endpoints)

    [[bridge]]
    name = "br0"                 # or a shell pattern: "vmbr*", "tap[0-9]*"
    netns = "tenant1"            # optional: the bridge's network namespace, or a pattern ("*":
                                 # every named namespace); absent: the daemon's own
    mode = "auto"                # auto | xdp | tc | xdp+tc | bridge
    xdp_mode = "any"             # any | native | generic
    netfilter = "respect"        # respect | bypass
    netfilter_counters = "ignore"  # ignore | hold: whether a rule that only counts holds ports
    ignore_ports = ["eth0"]      # ports left alone (mode bridge)
    fdb_max_learned = 0          # the bridge's own limit on learned entries, 0 = unlimited
    max_ports = 1024             # optional: port slots xdpbr's maps hold (8-4096)
    fdb_size = 16384             # optional: entries of xdpbr's FDB mirror (256-1048576)

A bridge takes its options from the first entry that matches it, in file order (`match`).
Every error names the file, the line and the key. tomllib reports lines for syntax errors
only, so the lines of keys are found by reading the file (`_KeyLines`).
"""

import dataclasses
import difflib
import fnmatch
import grp
import json
import os
import re
import time
import tomllib

from ..loader import bridge_watch, instance
from ..loader.bridge_id import BridgeId
from ..loader.errors import XdpbrError
from ..loader.layouts import FDB_SIZE_RANGE, MAX_PORTS_RANGE, REQUESTED_MODES, XDP_MODE_REQUESTS
from ..loader.netns import interface_index
from .connections import parse_listen
from .model import NETFILTER_CHOICES


def held_dir():
    """`xdpbr detach` holds a bridge here until `xdpbr attach`: the daemon does not re-attach
    it, also after a restart or a reboot."""
    return instance.held_dir()


ON_STOP = ("keep", "detach")
# `attach --netfilter-counters`: whether a rule that only counts frames holds what it sees
NETFILTER_COUNTERS = ("ignore", "hold")
IFNAMSIZ = 16
PATTERN_CHARS = "*?["  # a name or netns with one of these is a shell pattern (fnmatch)
PATTERN_MAX = 255


def is_pattern(text):
    return text is not None and any(c in text for c in PATTERN_CHARS)


class ConfigError(XdpbrError):
    pass


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    name: str
    netns: str | None = None
    mode: str = "auto"
    xdp_mode: str = "any"
    netfilter: str = "respect"
    netfilter_counters: str = "ignore"
    ignore_ports: tuple = ()
    fdb_max_learned: int | None = None  # None: leave the bridge's setting alone
    max_ports: int | None = None  # None: the attachment's, or the default
    fdb_size: int | None = None
    index: int = 0  # the entry's place among the [[bridge]] tables
    pattern: str = ""  # the entry's name[@netns] as written (name and netns of a bound one are a bridge's)

    @property
    def label(self):
        return BridgeId(self.name, self.netns).label

    @property
    def entry(self):
        """Which entry this is, for `show` and the log: "bridge[1] vmbr*" or "bridge[0] br0@tenant1"."""
        return f"bridge[{self.index}] {self.pattern or self.label}"

    @property
    def patterned(self):
        """Whether the entry names bridges by a pattern (also once bound to one of them)."""
        return is_pattern(self.pattern) if self.pattern else is_pattern(self.name) or is_pattern(self.netns)

    def matches(self, name, netns):
        """Whether bridge `name` in namespace `netns` (None: the daemon's own) is this entry's:
        an entry without netns matches only the daemon's namespace, one with a pattern only
        named namespaces."""
        if (self.netns is None) != (netns is None):
            return False
        return fnmatch.fnmatchcase(name, self.name) and (
            netns is None or fnmatch.fnmatchcase(netns, self.netns)
        )

    def bound(self, name, netns):
        """This entry's options for one bridge it matches."""
        return dataclasses.replace(self, name=name, netns=netns)


@dataclasses.dataclass(frozen=True)
class Config:
    path: str | None = None
    metrics: str | None = None
    on_stop: str = "keep"
    broker_group: str | None = None
    bridges: tuple = ()

    def match(self, name, netns):
        """The options of bridge `name` in `netns`: the first entry that matches it, bound to
        it (a BridgeConfig whose `entry` says which), or None when no entry does."""
        for bc in self.bridges:
            if bc.matches(name, netns):
                return bc.bound(name, netns)
        return None

    def namespaces(self, named):
        """Which namespaces an entry may match: None (the daemon's own) if an entry has no
        netns, and those of `named` (names `ip netns` knows) an entry's netns matches."""
        out = {None} if any(bc.netns is None for bc in self.bridges) else set()
        out.update(
            n for n in named if any(bc.netns and fnmatch.fnmatchcase(n, bc.netns) for bc in self.bridges)
        )
        return out


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


def _check_ifname(reader, table, index, key, value, patterns=False):
    limit = PATTERN_MAX if patterns and is_pattern(value) else IFNAMSIZ - 1
    if not value or len(value) > limit or "/" in value or ":" in value or value.strip() != value:
        what = "an interface name or a pattern" if patterns else "an interface name"
        reader.fail(table, index, key, f"{value!r} is not {what} (1-15 characters, no '/', ':' or spaces)")


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
            "netfilter_counters",
            "ignore_ports",
            "fdb_max_learned",
            "max_ports",
            "fdb_size",
        )
        r.table(b, "bridge", i, keys)
        name = r.string(b, "bridge", i, "name")
        if name is None:
            r.fail("bridge", i, None, "missing key 'name'")
        _check_ifname(r, "bridge", i, "name", name, patterns=True)
        netns = r.string(b, "bridge", i, "netns") or None
        if netns is not None and ("/" in netns or netns in (".", "..") or "@" in netns):
            r.fail(
                "bridge",
                i,
                "netns",
                f"{netns!r} is not a namespace name or pattern",
                fix='name one from `ip netns list`, or a shell pattern such as "tenant*"',
            )
        label = BridgeId(name, netns).label
        if label in seen:
            r.fail("bridge", i, "name", f"{label} is configured twice (first at line {seen[label]})")
        seen[label] = r.where.of("bridge", i, "name")
        if not is_pattern(name) and not is_pattern(netns):  # an entry no bridge could ever take
            first = next((bc for bc in bridges if bc.matches(name, netns)), None)
            if first:
                r.fail(
                    "bridge",
                    i,
                    "name",
                    f"{label} is matched by {first.entry} (line {seen[first.pattern]}) first, so "
                    "this entry would never apply",
                    fix="put it before the pattern",
                )
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
                netfilter_counters=r.string(
                    b, "bridge", i, "netfilter_counters", NETFILTER_COUNTERS, "ignore"
                ),
                ignore_ports=tuple(ignore),
                fdb_max_learned=limit,
                **sizes,
                index=i,
                pattern=label,
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
    """Remember (or forget) that an operator detached bridge `label` ('br0' or 'br0@netns'). The
    marker remembers which bridge that was (its ifindex and its namespace's inode), so that it
    holds neither a bridge made again under the same name nor one in a namespace made again."""
    path = BridgeId.parse(label).held_marker
    if held:
        _write_hold(path, *bridge_identity(label))
    elif os.path.exists(path):
        os.unlink(path)


HOLD_NOTE = "detached with `xdpbr detach`; `xdpbr attach` gives it back to the daemon"


def _write_hold(path, ifindex, netns_inode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {
        "note": HOLD_NOTE,
        "ifindex": ifindex,
        "netns_inode": netns_inode,
        "detached_at": int(time.time()),
    }
    with open(path, "w") as f:
        f.write(json.dumps(record) + "\n")


def bridge_identity(label):
    """(ifindex, namespace inode) of bridge `label` now, each None where it is missing."""
    bid = BridgeId.parse(label)
    inode = bridge_watch.namespace_inode(bid.netns)
    if inode is None:
        return None, None
    try:
        return interface_index(bid.netns, bid.name), inode
    except XdpbrError:  # the namespace went meanwhile
        return None, None


def held_labels():
    """Labels of the bridges `xdpbr detach` holds."""
    try:
        return sorted(os.listdir(held_dir()))
    except FileNotFoundError:
        return []


def held_marker(label):
    """What `xdpbr detach` remembered of bridge `label`: None without a marker, else
    {"ifindex", "netns_inode"}, None where unknown (a marker of an older xdpbr)."""
    try:
        with open(BridgeId.parse(label).held_marker) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    data = data if isinstance(data, dict) else {}
    return {"ifindex": data.get("ifindex"), "netns_inode": data.get("netns_inode")}


def check_hold(label, ifindex, netns_inode):
    """Whether `xdpbr detach` still holds bridge `label`, which now has `ifindex` (None: there is
    no such bridge) in the namespace of inode `netns_inode` (None: there is none). A marker
    outlives neither its bridge nor its namespace: one whose bridge or namespace is gone, or was
    made again (another ifindex or inode), is removed. Returns (held, why it was removed)."""
    marker = held_marker(label)
    if marker is None:
        return False, None
    named = BridgeId.parse(label).netns is not None  # the default namespace's inode depends on who asks
    why = None
    if named and netns_inode is None:
        why = "its network namespace is gone"
    elif ifindex is None:
        why = "the bridge is gone"
    elif named and marker["netns_inode"] not in (None, netns_inode):
        why = "its network namespace was made again"
    elif marker["ifindex"] not in (None, ifindex):
        why = f"the bridge was made again (ifindex {marker['ifindex']}, now {ifindex})"
    if why:
        hold(label, False)
        return False, why
    if marker["ifindex"] is None:  # an older xdpbr's marker: it holds this bridge from now on
        _write_hold(BridgeId.parse(label).held_marker, ifindex, netns_inode)
    return True, None


def _view_path():
    return os.path.join(instance.run_dir(), "daemon-config.json")


def save_view(view):
    """The daemon's view of its configuration, for `show`: {"pid", "config", "attached":
    {label: {"entry", "pins"}} (the entry that attached each bridge, and the inode of the pin
    directory it made), "left_alone": [{"bridge", "entry", "reason"}]}. Written atomically."""
    path = _view_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(view, f)
    os.rename(tmp, path)


def load_view():
    """What save_view wrote last, or {} (no daemon with a configuration ran here)."""
    try:
        with open(_view_path()) as f:
            view = json.load(f)
    except (OSError, ValueError):
        return {}
    return view if isinstance(view, dict) else {}
