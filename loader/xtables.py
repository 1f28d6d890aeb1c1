"""Read legacy ip_tables, ip6_tables and arp_tables through their getsockopt interface.

The same calls iptables-legacy-save makes (`IPT_SO_GET_INFO`, then `IPT_SO_GET_ENTRIES` into a
buffer of the announced size) on a raw socket of the current network namespace: callers enter a
namespace with `loader.netns.entered()`. Only tables listed in
/proc/thread-self/net/{ip,ip6,arp}_tables_names are queried, because a query for a table that is
not there makes the kernel instantiate it (its module's template) in this namespace.

The layouts below mirror <linux/netfilter_ipv4/ip_tables.h>, <linux/netfilter_ipv6/ip6_tables.h>,
<linux/netfilter_arp/arp_tables.h>, <linux/netfilter/x_tables.h> and xt_physdev.h on x86_64
(the entries' u64 counters make every entry 8-byte aligned).

A parsed table is a plain `Table` (chains in kernel order, each with its rules, targets resolved
to chain names); `control/netfilter/rules.py` turns it into what the per-port decision walks.
It is over 400 lines on purpose: one kernel interface (getsockopt on three table families
sharing the x_tables layouts) belongs in one place, as bpf(2) does in bpfsys.py.
"""

import ctypes
import ctypes.util
import dataclasses
import functools
import gzip
import hashlib
import os
import re
import socket
import struct

from .errors import XdpbrError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

SOL_IP, SOL_IPV6 = 0, 41
IFNAMSIZ = 16
XT_TABLE_MAXNAMELEN = 32
# Standard-target verdicts as the kernel stores them: -NF_<V> - 1; XT_RETURN is -NF_REPEAT - 1.
VERDICTS = {-1: "DROP", -2: "ACCEPT", -4: "QUEUE", -5: "RETURN"}


@dataclasses.dataclass(frozen=True)
class _Family:
    """Where one legacy family differs: socket level, option numbers, hook count, layouts."""

    name: str  # "ip" | "ip6" | "arp", as nftables names the family
    sock: int  # address family of the raw socket the calls go through
    level: int
    get_info: int
    get_entries: int
    hooks: tuple  # chain names by hook number
    names_file: str
    entry_size: int  # sizeof(struct ipt_entry) and friends
    offsets_at: int  # offset of target_offset/next_offset (two u16) in the entry
    counters_at: int  # offset of struct xt_counters (two u64) in the entry
    ifaces_at: int  # offset of iniface[16], outiface[16], iniface_mask[16], outiface_mask[16]
    flags_at: int  # offset of the u8 flags (u16 invflags for arp follows at +1 or +2)
    goto_flag: int  # IPT_F_GOTO / IP6T_F_GOTO; arp has none
    tool: str


INET_HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
FAMILIES = {
    # struct ipt_ip: src dst smsk dmsk (16) ifaces (64) proto u16, flags u8, invflags u8 = 84
    "ip": _Family("ip", socket.AF_INET, SOL_IP, 64, 65, INET_HOOKS, "ip_tables_names",
                  112, 88, 96, 16, 82, 0x02, "iptables-legacy"),
    # struct ip6t_ip6: 4 in6_addr (64) ifaces (64) proto u16, tos u8, flags u8, invflags u8 → 136
    "ip6": _Family("ip6", socket.AF_INET6, SOL_IPV6, 64, 65, INET_HOOKS, "ip6_tables_names",
                   168, 140, 152, 64, 131, 0x04, "ip6tables-legacy"),
    # struct arpt_arp: addresses (16) hln (2) devaddrs (64) op/hrd/pro (12) ifaces (64) at 94,
    # flags u8 at 158, invflags u16 at 160 → 164; ARPT_BASE_CTL is 96
    "arp": _Family("arp", socket.AF_INET, SOL_IP, 96, 97, ("INPUT", "OUTPUT", "FORWARD"),
                   "arp_tables_names", 192, 164, 176, 94, 158, 0, "arptables-legacy"),
}  # fmt: skip
# invflags bits for the interfaces: IPT_INV_VIA_IN/OUT, IP6T_INV_VIA_IN/OUT, ARPT_INV_VIA_IN/OUT
INV_VIA_IN, INV_VIA_OUT = 0x01, 0x02

# struct xt_ct_target_info(_v1): __u16 flags first, at every revision; XT_CT_NOTRACK
XT_CT_NOTRACK = 0x1

# xt_physdev_info bits (<linux/netfilter/xt_physdev.h>)
PHYSDEV_IN, PHYSDEV_OUT, PHYSDEV_BRIDGED, PHYSDEV_ISIN, PHYSDEV_ISOUT = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclasses.dataclass(frozen=True)
class Iface:
    """An interface pattern as the kernel compares it: name bytes under a mask (`eth+` masks
    only the prefix); `invert` is `! -i`. An empty pattern matches every device."""

    name: str
    mask: bytes
    invert: bool = False

    def matches(self, dev):
        """The kernel's ifname_compare: a missing device compares as an all-zero name."""
        raw = dev.encode().ljust(IFNAMSIZ, b"\0")[:IFNAMSIZ]
        pat = self.name.encode().ljust(IFNAMSIZ, b"\0")[:IFNAMSIZ]
        hit = not any((a ^ b) & m for a, b, m in zip(raw, pat, self.mask, strict=True))
        return hit != self.invert

    @property
    def wildcard(self):
        return not any(self.mask)

    def text(self, flag):
        wild = 0 < sum(1 for m in self.mask if m) <= len(self.name) and not self.name.endswith("+")
        shown = self.name + ("+" if wild else "")
        return f"{'! ' if self.invert else ''}{flag} {shown}"


@dataclasses.dataclass(frozen=True)
class Physdev:
    """Decoded xt_physdev_info: which options are given (`bitmask`) and which are negated."""

    physindev: Iface | None
    physoutdev: Iface | None
    bitmask: int
    invert: int

    def text(self):
        parts = ["-m physdev"]
        for bit, opt, dev in (
            (PHYSDEV_IN, "--physdev-in", self.physindev),
            (PHYSDEV_OUT, "--physdev-out", self.physoutdev),
            (PHYSDEV_ISIN, "--physdev-is-in", None),
            (PHYSDEV_ISOUT, "--physdev-is-out", None),
            (PHYSDEV_BRIDGED, "--physdev-is-bridged", None),
        ):
            if self.bitmask & bit:
                neg = "! " if self.invert & bit else ""
                name = dataclasses.replace(dev, invert=False).text("").strip() if dev else ""
                parts.append(f"{neg}{opt} {name}".rstrip())
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Match:
    name: str
    revision: int
    physdev: Physdev | None = None  # decoded for `physdev` only; other matches are opaque


@dataclasses.dataclass(frozen=True)
class Rule:
    """One entry. `target` is a verdict (ACCEPT, DROP, QUEUE, RETURN), a chain name (with `goto`
    for -g), or a named target (DNAT, REJECT, LOG, ...); `conditions` says whether the entry
    also tests addresses, protocol or fragments (opaque to the walk)."""

    position: int  # 1-based within its chain, as `iptables -L --line-numbers` counts
    iin: Iface
    iout: Iface
    matches: tuple
    target: str
    target_kind: str  # "verdict" | "jump" | "goto" | "target"
    conditions: bool
    notrack: bool = False  # the target is NOTRACK or CT --notrack (it only skips conntrack)

    def text(self, family, chain):
        """The rule as iptables-legacy-save prints it, minus addresses and match arguments."""
        parts = [f"-A {chain}"]
        if not self.iin.wildcard or self.iin.invert:
            parts.append(self.iin.text("-i"))
        if not self.iout.wildcard or self.iout.invert:
            parts.append(self.iout.text("-o"))
        if self.conditions:
            parts.append("(address/protocol conditions)")
        for m in self.matches:
            parts.append(m.physdev.text() if m.physdev else f"-m {m.name}")
        parts.append(f"{'-g' if self.target_kind == 'goto' else '-j'} {self.target}")
        if self.notrack and self.target == "CT":
            parts.append("--notrack")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None  # the built-in chain's hook name, None for a user chain
    policy: str | None  # the built-in chain's policy verdict
    rules: tuple


@dataclasses.dataclass(frozen=True)
class Table:
    family: str
    name: str
    chains: tuple
    digest: str  # sha256 of the entries with counters zeroed: equal digests, equal rules

    def chain(self, name):
        return next((c for c in self.chains if c.name == name), None)


def table_names(family, kept=None):
    """Names of the tables loaded in this namespace (none when the family's module is absent);
    with `kept` (netns.KeptFiles), in that one's namespace, through its kept file."""
    path = f"/proc/thread-self/net/{FAMILIES[family].names_file}"
    if kept is not None:
        text = kept.read(path) or ""
    else:
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _getsockopt(fd, fam, opt, buf, what):
    size = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(fd, fam.level, opt, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise XdpbrError(f"cannot read {fam.tool} table {what}", errno=err,
                         fix="run as root (CAP_NET_ADMIN) in the bridge's namespace")  # fmt: skip
    return size.value


def read_raw(family, name, kept=None):
    """(valid_hooks, hook_entry, underflow, entries blob) of one loaded table; with `kept`
    (netns.KeptFiles), in that one's namespace, through its kept socket."""
    fam = FAMILIES[family]
    if kept is not None:
        return _read_raw(fam, name, kept.socket(fam.sock, socket.SOCK_RAW, socket.IPPROTO_RAW))
    with socket.socket(fam.sock, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        return _read_raw(fam, name, s)


def _read_raw(fam, name, s):
    nhooks = len(fam.hooks)
    info_fmt = f"={XT_TABLE_MAXNAMELEN}sI{nhooks}I{nhooks}III"
    info = ctypes.create_string_buffer(name.encode(), struct.calcsize(info_fmt))
    _getsockopt(s.fileno(), fam, fam.get_info, info, name)
    fields = struct.unpack(info_fmt, info.raw)
    valid, hook_entry = fields[1], fields[2 : 2 + nhooks]
    underflow, size = fields[2 + nhooks : 2 + 2 * nhooks], fields[-1]
    # struct ipt_get_entries: name[32], u32 size, then entries aligned to 8
    head = 40
    # one bytearray the kernel writes into: a 5,000-rule table is ~2.5 MB, copied once
    buf = bytearray(head + size)
    struct.pack_into(f"={XT_TABLE_MAXNAMELEN}sI", buf, 0, name.encode(), size)
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    # a table replaced between the two calls answers EAGAIN: the caller reads again
    _getsockopt(s.fileno(), fam, fam.get_entries, cbuf, name)
    del cbuf
    return valid, hook_entry, underflow, bytes(memoryview(buf)[head:])


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _iface(fam, raw, off, which, invflags):
    name = _cstr(raw[off + which * IFNAMSIZ : off + (which + 1) * IFNAMSIZ])
    mask = bytes(raw[off + (2 + which) * IFNAMSIZ : off + (3 + which) * IFNAMSIZ])
    return Iface(name, mask, bool(invflags & (INV_VIA_IN if which == 0 else INV_VIA_OUT)))


def _physdev(data):
    if len(data) < 66:
        return None
    names = [data[i * IFNAMSIZ : (i + 1) * IFNAMSIZ] for i in range(4)]
    invert, bitmask = data[64], data[65]
    iin = Iface(_cstr(names[0]), bytes(names[1]), bool(invert & PHYSDEV_IN))
    iout = Iface(_cstr(names[2]), bytes(names[3]), bool(invert & PHYSDEV_OUT))
    return Physdev(
        iin if bitmask & PHYSDEV_IN else None, iout if bitmask & PHYSDEV_OUT else None, bitmask, invert
    )


def _xt_header(blob, off):
    """(size, name, revision) of an xt_entry_match / xt_entry_target."""
    size, name, rev = struct.unpack_from("=H29sB", blob, off)
    return size, _cstr(name), rev


def parse(family, name, valid, hook_entry, underflow, blob):
    """Split a table's entries into chains and resolve jumps to chain names."""
    fam = FAMILIES[family]
    entries = []  # (offset, entry fields)
    off = 0
    while off < len(blob):
        target_off, next_off = struct.unpack_from("=HH", blob, off + fam.offsets_at)
        if next_off < fam.entry_size or off + next_off > len(blob):
            raise XdpbrError(f"cannot parse {fam.tool} table {name}: bad entry at {off}",
                             fix="report this kernel's table layout as an xdpbr bug")  # fmt: skip
        entries.append((off, target_off, next_off))
        off += next_off
    hook_at = {hook_entry[h]: fam.hooks[h] for h in range(len(fam.hooks)) if valid & (1 << h)}
    policy_at = {underflow[h] for h in range(len(fam.hooks)) if valid & (1 << h)}
    # A built-in chain starts at its hook entry; a user chain right after an ERROR entry, which
    # carries its name. The table ends with an ERROR entry named "ERROR".
    starts, members, current = {}, {}, None
    for off, target_off, _next in entries:
        _size, tname, _rev = _xt_header(blob, off + target_off)
        if off in hook_at:
            current = hook_at[off]
            starts[off] = current
        elif tname == "ERROR":
            current = _cstr(blob[off + target_off + 32 : off + target_off + 64])
            starts[off + _next] = current
            continue
        members.setdefault(current, []).append((off, target_off, _next))
    out = []
    for cname, ents in members.items():
        builtin = cname in hook_at.values()
        rules = [_parse_entry(fam, blob, e, starts) for e in ents]
        policy = None
        if builtin and ents[-1][0] in policy_at:
            policy = rules.pop().target
        elif not builtin and rules and rules[-1].target == "RETURN" and _unconditional(rules[-1]):
            rules.pop()  # the RETURN that closes every user chain
        rules = [dataclasses.replace(r, position=i + 1) for i, r in enumerate(rules)]
        out.append(Chain(cname, cname if builtin else None, policy, tuple(rules)))
    return Table(family, name, tuple(out), _digest(fam, valid, hook_entry, underflow, blob, entries))


def _unconditional(rule):
    plain = not (rule.iin.invert or rule.iout.invert or rule.matches or rule.conditions)
    return plain and rule.iin.wildcard and rule.iout.wildcard


def _parse_entry(fam, blob, entry, starts):
    off, target_off, next_off = entry
    base = off + fam.ifaces_at
    flags = blob[off + fam.flags_at]
    invflags = (
        struct.unpack_from("=H", blob, off + 160)[0] if fam.name == "arp" else blob[off + fam.flags_at + 1]
    )
    iin, iout = _iface(fam, blob, base, 0, invflags), _iface(fam, blob, base, 1, invflags)
    # anything else in the ip/ip6/arp header part (addresses, protocol, arp fields) is a
    # condition the walk cannot evaluate; compare it against an all-zero header
    head = bytearray(blob[off : off + fam.offsets_at])
    head[base - off : base - off + 4 * IFNAMSIZ] = bytes(4 * IFNAMSIZ)
    if fam.name == "arp":
        head[158:162] = bytes(4)  # flags, invflags
    else:
        head[fam.flags_at] &= ~fam.goto_flag & 0xFF
        head[fam.flags_at + 1] &= ~(INV_VIA_IN | INV_VIA_OUT) & 0xFF
    nfcache = slice(fam.offsets_at - 4, fam.offsets_at) if fam.name != "arp" else slice(0, 0)
    head[nfcache] = bytes(nfcache.stop - nfcache.start)
    conditions = any(head)
    matches, m = [], off + fam.entry_size
    while m < off + target_off:
        size, mname, rev = _xt_header(blob, m)
        if size < 32:
            break
        data = blob[m + 32 : m + size]
        matches.append(Match(mname, rev, _physdev(data) if mname == "physdev" else None))
        m += size
    tsize, tname, _rev = _xt_header(blob, off + target_off)
    notrack = tname == "NOTRACK"
    if tname == "CT" and tsize >= 34:  # xt_CT ignores every other option with --notrack
        notrack = bool(struct.unpack_from("=H", blob, off + target_off + 32)[0] & XT_CT_NOTRACK)
    if tname == "":  # the standard target: a verdict or a jump to an offset
        (verdict,) = struct.unpack_from("=i", blob, off + target_off + 32)
        if verdict < 0:
            target, kind = VERDICTS.get(verdict, f"verdict {verdict}"), "verdict"
        elif verdict == off + next_off and verdict not in starts:
            target, kind = "", "verdict"  # a fall-through, as iptables writes for no -j
        else:
            target = starts.get(verdict) or f"offset {verdict}"
            kind = "goto" if flags & fam.goto_flag else "jump"
    else:
        target, kind = tname, "target"
    return Rule(0, iin, iout, tuple(matches), target, kind, conditions, notrack)


def _digest(fam, valid, hook_entry, underflow, blob, entries):
    """Entries with counters zeroed: traffic changes counters, not rules."""
    data = bytearray(blob)
    for off, _t, _n in entries:
        data[off + fam.counters_at : off + fam.counters_at + 16] = bytes(16)
    h = hashlib.sha256(struct.pack(f"=I{2 * len(hook_entry)}I", valid, *hook_entry, *underflow))
    h.update(data)
    return h.hexdigest()


def read_table(family, name):
    """One loaded table, parsed."""
    return parse(family, name, *read_raw(family, name))


def read_family(family):
    """Every loaded table of one family ("ip", "ip6", "arp") in this namespace."""
    return [read_table(family, name) for name in table_names(family)]


@dataclasses.dataclass(frozen=True)
class Print:
    """One table as a daemon's poll compares it: GET_INFO's answer, where the entries' counters
    are (byte offsets) and the entries with those counters zeroed. Equal prints, equal rules."""

    info: tuple  # (valid_hooks, hook_entry, underflow)
    counters: tuple
    masked: bytes
    # the entries as read, counters and all: while no rule counts a frame (most of them, most
    # of the time) the next read is equal to it, and one memcmp replaces the masking
    raw: bytes = dataclasses.field(default=b"", compare=False, repr=False)


def _counter_offsets(fam, blob):
    """Byte offsets of every entry's xt_counters; None for a blob that does not walk."""
    out, off, end, at = [], 0, len(blob), fam.offsets_at + 2
    unpack = struct.Struct("=H").unpack_from
    while off < end:
        (next_off,) = unpack(blob, off + at)
        if next_off < fam.entry_size or off + next_off > end:
            return None
        out.append(off + fam.counters_at)
        off += next_off
    return tuple(out)


def _masked(blob, counters):
    data, zero = bytearray(blob), bytes(16)
    for at in counters:
        data[at : at + 16] = zero
    return bytes(data)


def table_print(family, name, previous=None, kept=None):
    """The Print of one loaded table. `previous` (this table's last Print) saves walking the
    entries: its counter offsets are tried first. That is exact, not a heuristic: the
    next_offset fields lie outside the counters, so a blob equal to the previous one outside
    the previous counters walks through the same entries, and so has the same counters.
    `kept` (netns.KeptFiles): read in that one's namespace."""
    fam = FAMILIES[family]
    valid, hook_entry, underflow, blob = read_raw(family, name, kept)
    info = (valid, tuple(hook_entry), tuple(underflow))
    if previous is not None and previous.info == info and len(previous.masked) == len(blob):
        if blob == previous.raw:
            return previous
        masked = _masked(blob, previous.counters)
        if masked == previous.masked:
            return dataclasses.replace(previous, raw=blob)  # equal to previous: same rules
    counters = _counter_offsets(fam, blob)
    if counters is None:  # cannot be masked: never equal, so the caller reads it in full
        return Print(info, (), blob + os.urandom(16))
    return Print(info, counters, _masked(blob, counters), blob)


def fingerprint(family, previous=None, kept=None):
    """A cheap change detector for a daemon's poll, without building Rule objects:
    {table: Print} of the loaded tables; `previous` is the last answer for this namespace;
    `kept` (netns.KeptFiles) reads that one's namespace without entering it."""
    previous = previous or {}
    return {name: table_print(family, name, previous.get(name), kept) for name in table_names(family, kept)}


# the legacy ebtables tables: each its own module (ebtable_filter.ko...), loaded by the first
# ebtables-legacy command that names it; ebtables.ko alone holds no table
EBT_TABLES = ("ebtable_filter", "ebtable_nat", "ebtable_broute")
EBT_CONFIG = {"ebtable_filter": "BRIDGE_EBT_T_FILTER", "ebtable_nat": "BRIDGE_EBT_T_NAT",
              "ebtable_broute": "BRIDGE_EBT_BROUTE"}  # fmt: skip
SYS_MODULE = "/sys/module"
CONFIG_GZ = "/proc/config.gz"
MODULES_BUILTIN = "/lib/modules/{release}/modules.builtin"


@functools.cache
def _builtin_ebtables():
    """The legacy ebtables tables built into the running kernel (there without a module), or
    None when neither modules.builtin nor /proc/config.gz tells. Read once: the running
    kernel's build does not change, and reading /proc/config.gz costs ~1 ms, which a daemon's
    poll of every namespace would pay."""
    try:
        with open(MODULES_BUILTIN.format(release=os.uname().release)) as f:
            names = {os.path.basename(line.strip()).removesuffix(".ko") for line in f}
        return tuple(t for t in EBT_TABLES if t in names)
    except OSError:
        pass
    try:
        with gzip.open(CONFIG_GZ, "rt") as f:
            config = f.read()
    except OSError:
        return None
    return tuple(t for t in EBT_TABLES if re.search(rf"^CONFIG_{EBT_CONFIG[t]}=y$", config, re.M))


def ebtables_status():
    """(present, reason). Legacy ebtables has no tables_names file, and a query instantiates the
    table it names, so xdpbr does not query it: a table whose module is loaded, or that is built
    into the kernel, may hold rules xdpbr cannot read, and callers treat the bridge family's
    legacy rules as unknown. A table built as a module that is not loaded holds nothing (its
    first rule loads it, which the poll notices). Judged by the tables, not by the kernel's
    configuration: Debian builds them all as modules, and most hosts never load one."""
    builtin = _builtin_ebtables()
    if builtin:
        return (
            True,
            f"legacy ebtables is built into this kernel ({', '.join(builtin)}) and xdpbr cannot read it",
        )
    loaded = [t for t in EBT_TABLES if os.path.exists(f"{SYS_MODULE}/{t}")]
    if loaded:
        return True, f"legacy ebtables is loaded ({', '.join(loaded)}) and xdpbr cannot read it"
    if builtin is None and os.path.exists(f"{SYS_MODULE}/ebtables"):
        # neither modules.builtin nor the configuration says what is built in
        return True, "legacy ebtables is in this kernel and xdpbr cannot read it"
    return False, "no legacy ebtables table is loaded"
