"""Read the nftables ruleset of the current network namespace through `nft`.

`nft -j list ruleset` gives the structure (families, chains, hooks, policies, each rule's
expressions and handle, named sets and maps with their elements); `nft -a list ruleset` gives
each rule as an admin wrote it, keyed by handle. The devices a netdev/inet ingress or egress
chain is bound to come from the kernel itself (`NFT_MSG_GETCHAIN` over netlink): nft 1.0.6's
JSON omits them, and a chain bound to a wildcard (`devices = { "vnet*" }`, Linux 6.16 and
later, `NFTA_DEVICE_PREFIX`) it does not list at all, or, once the chain has a rule, never
finishes listing (see `read_ruleset`); the text is the fallback when netlink fails. Callers
enter the bridge's namespace with `loader.netns.entered()`: the child process and the socket
belong to the calling thread's namespace.

Limits: iptables-nft stores xt matches such as `physdev` as `xt` expressions whose arguments
`nft -j` does not print, so they reach the walk as unknown conditions (conservative). Reading
NFTA_MATCH_INFO over netlink (NFT_MSG_GETRULE) would lift that; see the module's callers.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess

from . import rtnl

NFT_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """`items` are the JSON objects under "nftables" (tables, chains, rules, sets...), `texts`
    maps (family, table, chain, handle) to the rule's nft text without its counter values, and
    `devices` maps (family, table, chain) to the devices a hooked chain is bound to: names, a
    prefix written `vnet*` as nft writes it. `devices_error` says why the kernel's device lists
    could not be read (then `devices` is what the text showed). `unlisted` maps chains the
    kernel has but nft did not list (an nft too old for their wildcard devices drops them
    silently) to (hook, devices)."""

    items: tuple
    texts: dict
    devices: dict
    digest: str  # sha256 of the ruleset (devices included) without counter values
    devices_error: str = ""
    unlisted: dict = dataclasses.field(default_factory=dict)


class NftUnavailable(Exception):
    """`nft` cannot be run or answered an error: str() is the one-line reason for `show`."""


class _Timeout(NftUnavailable):
    pass


def _run(argv):
    if shutil.which(argv[0]) is None:
        raise NftUnavailable("cannot read nftables: nft is not installed (apt-get install nftables)")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=NFT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _Timeout(
            f"cannot read nftables: {' '.join(argv)} did not finish in {NFT_TIMEOUT_S} s"
        ) from None
    except OSError as exc:
        raise NftUnavailable(f"cannot read nftables: {' '.join(argv)} failed ({exc})") from None
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["no error text"])[-1]
        raise NftUnavailable(f"cannot read nftables: {' '.join(argv)}: {err}")
    return out.stdout


_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")
_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_DEVICES = re.compile(r"\bdevices? = \{([^}]*)\}|\bdevice \"?([^\";\s]+)\"?")


def parse_text(text):
    """(texts, devices) from `nft -a list ruleset` output."""
    texts, devices = {}, {}
    family = table = chain = None
    for line in text.splitlines():
        if m := _TABLE.match(line):
            family, table, chain = m.group(1), m.group(2), None
            continue
        if m := _CHAIN.match(line):
            chain = m.group(1)
            continue
        if line.strip() == "}" and chain is not None and line.startswith("\t}"):
            chain = None
            continue
        if chain is None:
            continue
        if " hook " in line and line.strip().startswith("type "):
            if m := _DEVICES.search(line):
                raw = m.group(1) if m.group(1) is not None else m.group(2)
                names = [d.strip().strip('"') for d in raw.split(",") if d.strip()]
                devices[(family, table, chain)] = tuple(names)
            continue
        if m := _HANDLE.search(line):
            body = _COUNTER.sub("counter", line[: m.start()]).strip()
            texts[(family, table, chain, int(m.group(1)))] = body
    return texts, devices


def _strip_counters(obj):
    if isinstance(obj, dict):
        return {k: (None if k == "counter" else _strip_counters(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_counters(v) for v in obj]
    return obj


# nft binaries (path, size, mtime) seen to hang on a chain bound to a wildcard device: nft
# 1.0.6 (libnftnl 1.2.4) loops forever listing such a chain once it has a rule, so while such
# chains exist, that nft is not run again (each run would cost NFT_TIMEOUT_S)
_hangs_on_wildcards = set()


def _nft_identity():
    path = shutil.which("nft")
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return (path, st.st_size, st.st_mtime_ns) if st else (path, 0, 0)


def read_ruleset():
    """The ruleset of this namespace; raises NftUnavailable with a one-line reason."""
    error, hooked = "", None
    try:
        hooked = chain_devices()
    except (OSError, ValueError) as exc:
        error = f"cannot read the chains' devices over netlink ({exc})"
    wildcard = hooked and any(d.endswith("*") for _hook, devices in hooked.values() for d in devices)
    identity = _nft_identity()
    if wildcard and identity in _hangs_on_wildcards:
        raise NftUnavailable(_HANG_REASON)
    try:
        raw = _run(["nft", "-j", "list", "ruleset"])
    except _Timeout:
        if not wildcard:
            raise
        _hangs_on_wildcards.add(identity)
        raise NftUnavailable(_HANG_REASON) from None
    try:
        items = json.loads(raw or "{}").get("nftables", [])
    except ValueError as exc:
        raise NftUnavailable(f"cannot read nftables: nft -j printed invalid JSON ({exc})") from None
    items = [i for i in items if "metainfo" not in i]
    texts, devices = parse_text(_run(["nft", "-a", "list", "ruleset"]))
    unlisted = {}
    if hooked is not None:
        devices = {key: devs for key, (_hook, devs) in hooked.items()}
        listed = {(c["family"], c["table"], c["name"]) for i in items if (c := i.get("chain"))}
        unlisted = {key: value for key, value in hooked.items() if key not in listed}
    digest = hashlib.sha256(
        json.dumps(
            [_strip_counters(items), sorted(map(list, devices.items())), sorted(map(list, unlisted.items()))],
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return Ruleset(tuple(items), texts, devices, digest, error, unlisted)


_HANG_REASON = (
    "cannot read nftables: this nft does not finish listing a chain bound to a wildcard device "
    "(nft 1.0.6 cannot read NFTA_DEVICE_PREFIX; a newer nftables can)"
)


# ---- hook devices over netlink ---------------------------------------------------------------

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 3, 4
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 3, 4
NFTA_HOOK_HOOKNUM, NFTA_HOOK_DEV, NFTA_HOOK_DEVS = 1, 3, 4
NFTA_DEVICE_NAME, NFTA_DEVICE_PREFIX = 1, 2
NLM_F_DUMP_INTR = 0x10
NFPROTO_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
# hook numbers of the chains that carry devices: NF_NETDEV_INGRESS/EGRESS, NF_INET_INGRESS
DEVICE_HOOKS = {("netdev", 0): "ingress", ("netdev", 1): "egress", ("inet", 5): "ingress"}
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, 0 here)
DUMP_TRIES = 5


def _each_attr(data, start, end):
    """(type, payload) of every attribute in data[start:end], repeats kept (a device list
    repeats NFTA_DEVICE_NAME)."""
    pos = start
    while pos + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4 or pos + size > end:
            return
        yield kind & rtnl.NLA_TYPE_MASK, bytes(data[pos + 4 : pos + size])
        pos += (size + 3) & ~3


def device_pattern(kind, payload):
    """One hook device as the kernel reports it: a name, or a prefix written `name*`.
    NFTA_DEVICE_PREFIX is a prefix; so is an NFTA_DEVICE_NAME without its NUL (Linux 6.16
    before NFTA_DEVICE_PREFIX existed sent wildcards that way)."""
    name = payload.split(b"\0", 1)[0].decode(errors="replace")
    if kind == NFTA_DEVICE_PREFIX or (kind == NFTA_DEVICE_NAME and not payload.endswith(b"\0")):
        return name + "*"
    return name


def parse_chain(body):
    """(family, table, chain, hook, devices or None) of one NFT_MSG_NEWCHAIN payload (nfgenmsg
    and attributes); devices is None for a chain without a device list (not a netdev hook)."""
    family = NFPROTO_NAMES.get(body[0], str(body[0]))
    top = dict(_each_attr(body, _NFGENMSG.size, len(body)))
    table = top.get(NFTA_CHAIN_TABLE, b"").split(b"\0", 1)[0].decode(errors="replace")
    chain = top.get(NFTA_CHAIN_NAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    hook = top.get(NFTA_CHAIN_HOOK)
    if hook is None:
        return family, table, chain, None, None
    number = dict(_each_attr(hook, 0, len(hook))).get(NFTA_HOOK_HOOKNUM, b"")
    number = struct.unpack(">I", number)[0] if len(number) == 4 else None
    hook_name = DEVICE_HOOKS.get((family, number), str(number))
    devices, listed = [], False
    for kind, payload in _each_attr(hook, 0, len(hook)):
        if kind == NFTA_HOOK_DEVS:
            listed = True
            devices.extend(device_pattern(k, p) for k, p in _each_attr(payload, 0, len(payload))
                           if k in (NFTA_DEVICE_NAME, NFTA_DEVICE_PREFIX))  # fmt: skip
    if not listed:  # kernels before NFTA_HOOK_DEVS: one NFTA_HOOK_DEV
        for kind, payload in _each_attr(hook, 0, len(hook)):
            if kind == NFTA_HOOK_DEV:
                listed = True
                devices.append(device_pattern(NFTA_DEVICE_NAME, payload + b"\0"))
    return family, table, chain, hook_name, tuple(devices) if listed else None


def chain_devices():
    """{(family, table, chain): (hook, devices)} of every base chain bound to devices in this
    namespace, from one NFT_MSG_GETCHAIN dump; raises OSError when the kernel refuses it. A
    dump that a ruleset change interrupted (NLM_F_DUMP_INTR) is taken again."""
    request = rtnl.HEADER.pack(
        rtnl.HEADER.size + _NFGENMSG.size,
        NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN,
        rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP,
        1,
        0,
    ) + _NFGENMSG.pack(0, 0, 0)
    for _ in range(DUMP_TRIES):
        out, interrupted = {}, False
        with rtnl.open_socket(protocol=rtnl.NETLINK_NETFILTER) as sock:
            sock.send(request)
            done = False
            while not done:
                buf = sock.recv(1 << 20)
                pos = 0
                while pos + rtnl.HEADER.size <= len(buf):
                    length, kind, flags, _seq, _pid = rtnl.HEADER.unpack_from(buf, pos)
                    if length < rtnl.HEADER.size or pos + length > len(buf):
                        raise ValueError("a truncated netlink message")
                    body = buf[pos + rtnl.HEADER.size : pos + length]
                    pos += (length + 3) & ~3
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if kind == rtnl.NLMSG_DONE:
                        done = True
                        break
                    if kind == rtnl.NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", body)
                        if code:
                            raise OSError(-code, f"NFT_MSG_GETCHAIN refused: {os.strerror(-code)}")
                        continue
                    if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN and len(body) >= _NFGENMSG.size:
                        family, table, chain, hook, devices = parse_chain(body)
                        if devices is not None:
                            out[(family, table, chain)] = (hook, devices)
        if not interrupted:
            return out
    raise OSError(0, f"the chains changed during {DUMP_TRIES} dumps in a row")
