"""Read the nftables ruleset of the current network namespace through `nft`.

`nft -j list ruleset` gives the structure (families, chains, hooks, policies, each rule's
expressions and handle); `nft -a list ruleset` gives each rule as an admin wrote it, keyed by
handle, and the devices a netdev/inet ingress or egress chain is bound to (nft 1.0.6's JSON
omits them). Callers enter the bridge's namespace with `loader.netns.entered()`: the child
process inherits the calling thread's namespace.

Limits: iptables-nft stores xt matches such as `physdev` as `xt` expressions whose arguments
`nft -j` does not print, so they reach the walk as unknown conditions (conservative). Reading
NFTA_MATCH_INFO over netlink (NFT_MSG_GETRULE) would lift that; see the module's callers.
"""

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess

NFT_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """`items` are the JSON objects under "nftables" (tables, chains, rules, sets...), `texts`
    maps (family, table, chain, handle) to the rule's nft text without its counter values, and
    `devices` maps (family, table, chain) to the devices a hooked chain is bound to."""

    items: tuple
    texts: dict
    devices: dict
    digest: str  # sha256 of the ruleset without counter values


class NftUnavailable(Exception):
    """`nft` cannot be run or answered an error: str() is the one-line reason for `show`."""


def _run(argv):
    if shutil.which(argv[0]) is None:
        raise NftUnavailable("cannot read nftables: nft is not installed (apt-get install nftables)")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=NFT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
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


def read_ruleset():
    """The ruleset of this namespace; raises NftUnavailable with a one-line reason."""
    raw = _run(["nft", "-j", "list", "ruleset"])
    try:
        items = json.loads(raw or "{}").get("nftables", [])
    except ValueError as exc:
        raise NftUnavailable(f"cannot read nftables: nft -j printed invalid JSON ({exc})") from None
    items = [i for i in items if "metainfo" not in i]
    texts, devices = parse_text(_run(["nft", "-a", "list", "ruleset"]))
    digest = hashlib.sha256(json.dumps(_strip_counters(items), sort_keys=True).encode()).hexdigest()
    return Ruleset(tuple(items), texts, devices, digest)
