"""The netfilter readers against real rules loaded in a throwaway namespace.

Rules go in with iptables-legacy, ip6tables-legacy, arptables-legacy and nft run inside the
namespace (`ip netns exec`); the readers run in this process after setns. The host's own rules
are never touched.
"""

import errno
import os
import shutil
import subprocess
import time

import pytest
from xdpbr.control.netfilter import policy as nfpolicy
from xdpbr.control.netfilter import rules as nfrules
from xdpbr.control.netfilter import snapshot as nfsnapshot
from xdpbr.control.netfilter import store as nfstore
from xdpbr.control.netfilter.poll import RulesPoll
from xdpbr.loader import events, instance, nftables, xtables
from xdpbr.loader.links import Rtnl
from xdpbr.loader.netns import KeptFiles, entered

from tests import nf_fixtures

pytestmark = pytest.mark.root

TOOLS = ("iptables-legacy", "ip6tables-legacy", "arptables-legacy", "nft")


@pytest.fixture
def ns():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make setup installs iptables, arptables, nftables)")
    name = f"xdpbr-nf-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run(ns, *argv, stdin=None):
    out = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(argv)} failed: {out.stderr.strip()}"
    return out.stdout


def test_a_fresh_namespace_has_no_legacy_tables_and_reading_creates_none(ns):
    with entered(ns):
        assert [xtables.read_family(f) for f in ("ip", "ip6", "arp")] == [[], [], []]
        assert [xtables.table_names(f) for f in ("ip", "ip6", "arp")] == [[], [], []]


def test_iptables_legacy_chains_jumps_physdev_and_policy(ns):
    run(ns, "iptables-legacy", "-P", "FORWARD", "DROP")
    run(ns, "iptables-legacy", "-N", "vm")
    run(ns, "iptables-legacy", "-N", "empty")
    physdev = ["-m", "physdev", "--physdev-in", "vnet3", "--physdev-is-bridged"]
    run(ns, "iptables-legacy", "-A", "FORWARD", *physdev, "-j", "vm")
    run(ns, "iptables-legacy", "-A", "FORWARD", "-i", "br0", "!", "-o", "eth+", "-j", "ACCEPT")
    run(ns, "iptables-legacy", "-A", "FORWARD", "-m", "physdev", "!", "--physdev-out", "vnet4", "-g", "vm")
    run(ns, "iptables-legacy", "-A", "vm", "-s", "10.0.0.1", "-j", "RETURN")
    run(ns, "iptables-legacy", "-A", "vm", "-j", "DROP")
    with entered(ns):
        (t,) = xtables.read_family("ip")
    assert t.name == "filter"
    assert [(c.name, c.hook, c.policy) for c in t.chains] == [
        ("INPUT", "INPUT", "ACCEPT"), ("FORWARD", "FORWARD", "DROP"), ("OUTPUT", "OUTPUT", "ACCEPT"),
        ("empty", None, None), ("vm", None, None),
    ]  # fmt: skip
    fwd, vm = t.chain("FORWARD").rules, t.chain("vm").rules
    assert [(r.position, r.target, r.target_kind) for r in fwd] == [
        (1, "vm", "jump"), (2, "ACCEPT", "verdict"), (3, "vm", "goto")]  # fmt: skip
    p = fwd[0].matches[0].physdev
    assert (p.physindev.name, p.physoutdev, p.bitmask, p.invert) == ("vnet3", None, 0x05, 0)
    assert (
        fwd[0].text("ip", "FORWARD") == "-A FORWARD -m physdev --physdev-in vnet3 --physdev-is-bridged -j vm"
    )
    assert fwd[1].text("ip", "FORWARD") == "-A FORWARD -i br0 ! -o eth+ -j ACCEPT"
    assert (fwd[1].iin.matches("br0"), fwd[1].iout.matches("eth7"), fwd[1].iout.matches("br0")) == (
        True,
        False,
        True,
    )
    q = fwd[2].matches[0].physdev
    assert (q.physoutdev.name, q.physoutdev.invert, q.bitmask, q.invert) == ("vnet4", True, 0x02, 0x02)
    assert [(r.target, r.conditions) for r in vm] == [("RETURN", True), ("DROP", False)]
    assert t.chain("empty").rules == ()


def test_digest_ignores_counters_and_follows_rules(ns):
    run(ns, "iptables-legacy", "-A", "FORWARD", "-j", "ACCEPT")
    with entered(ns):
        before, fp = xtables.read_table("ip", "filter").digest, xtables.fingerprint("ip")
        run(ns, "iptables-legacy", "-Z")
        run(ns, "iptables-legacy", "-A", "INPUT", "-j", "ACCEPT")
        run(ns, "iptables-legacy", "-D", "INPUT", "1")
        assert xtables.read_table("ip", "filter").digest == before and xtables.fingerprint("ip") == fp
        run(ns, "iptables-legacy", "-I", "FORWARD", "-j", "DROP")
        assert xtables.read_table("ip", "filter").digest != before and xtables.fingerprint("ip") != fp


def test_counters_do_not_change_the_digest_under_traffic(ns):
    run(ns, "iptables-legacy", "-A", "OUTPUT", "-j", "ACCEPT")
    run(ns, "ip", "link", "set", "lo", "up")
    with entered(ns):
        before = xtables.read_table("ip", "filter").digest
        run(ns, "ping", "-c", "2", "-i", "0.2", "127.0.0.1")
        t = xtables.read_table("ip", "filter")
    assert t.digest == before


def test_ip6tables_and_arptables_legacy(ns):
    run(ns, "ip6tables-legacy", "-A", "FORWARD", "-d", "2001:db8::1", "-p", "udp", "-j", "DROP")
    run(
        ns,
        "ip6tables-legacy",
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-i",
        "br0",
        "-j",
        "MARK",
        "--set-mark",
        "1",
    )
    run(ns, "arptables-legacy", "-A", "FORWARD", "-i", "vnet3", "-j", "DROP")
    run(ns, "arptables-legacy", "-A", "FORWARD", "-o", "vnet4", "-j", "ACCEPT")
    with entered(ns):
        six = {t.name: t for t in xtables.read_family("ip6")}
        (arp,) = xtables.read_family("arp")
    (drop,) = six["filter"].chain("FORWARD").rules
    assert (drop.target, drop.conditions, drop.iin.wildcard) == ("DROP", True, True)
    (mark,) = six["mangle"].chain("PREROUTING").rules
    assert (mark.target, mark.target_kind, mark.iin.name) == ("MARK", "target", "br0")
    assert [c.name for c in arp.chains] == ["INPUT", "OUTPUT", "FORWARD"]
    rules = arp.chain("FORWARD").rules
    assert [(r.iin.name, r.iout.name, r.target, r.conditions) for r in rules] == [
        ("vnet3", "", "DROP", False), ("", "vnet4", "ACCEPT", False)]  # fmt: skip


def test_ebtables_absence_is_reported_not_queried():
    present, why = xtables.ebtables_status()
    assert isinstance(present, bool) and why


def test_nft_reader_gives_structure_text_handles_and_devices(ns):
    run(ns, "ip", "link", "add", "vnet3", "type", "veth", "peer", "name", "vnet3p")
    run(ns, "nft", "-f", "-", stdin="""
table bridge f {
  chain fw {
    type filter hook forward priority 0; policy accept;
    iifname "vnet3" ether saddr != 52:54:00:00:00:01 counter drop
  }
}
table netdev n {
  chain ing {
    type filter hook ingress device "vnet3" priority 0; policy accept;
    counter
  }
}
""")  # fmt: skip
    run(ns, "iptables-nft", "-A", "FORWARD", "-m", "physdev", "--physdev-in", "vnet3", "-j", "DROP")
    with entered(ns):
        rs = nftables.read_ruleset()
    rules = [i["rule"] for i in rs.items if "rule" in i]
    fw = next(r for r in rules if r["chain"] == "fw")
    assert (
        rs.texts[("bridge", "f", "fw", fw["handle"])]
        == 'iifname "vnet3" ether saddr != 52:54:00:00:00:01 counter drop'
    )
    assert rs.devices[("netdev", "n", "ing")] == ("vnet3",)
    xt = next(r for r in rules if r["family"] == "ip")
    assert {"xt": {"type": "match", "name": "physdev"}} in xt["expr"]


def test_nft_missing_is_a_one_line_reason(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(nftables.NftUnavailable, match="nft is not installed"):
        nftables.read_ruleset()


def test_snapshot_and_decision_follow_the_bridge_option(ns):
    # br_netfilter's sysctls are per namespace: off here, so only the bridge's own option calls
    for name in ("iptables", "ip6tables", "arptables"):
        run(ns, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{name}=0")
    run(ns, "ip", "link", "add", "br0", "type", "bridge", "nf_call_iptables", "1")
    run(ns, "iptables-legacy", "-A", "FORWARD", "-m", "physdev", "--physdev-in", "vnet3", "-j", "DROP")
    run(ns, "iptables-legacy", "-A", "FORWARD", "-i", "br9", "-j", "DROP")
    run(ns, "ip6tables-legacy", "-A", "FORWARD", "-j", "DROP")  # ip6 is not called: no hold
    with Rtnl(ns) as rtnl:
        options = rtnl.bridge_nf_options("br0")
    assert options == {"nf_call_iptables": True, "nf_call_ip6tables": False, "nf_call_arptables": False}
    snap = nfsnapshot.read(ns)
    assert snap.sysctls == {"iptables": False, "ip6tables": False, "arptables": False,
                            "filter-vlan-tagged": False, "pass-vlan-input-dev": False}  # fmt: skip
    assert {("legacy", "ip", "filter"), ("legacy", "ip6", "filter"), ("nft",)} <= set(snap.digests)
    d = nfsnapshot.decide(snap, "br0", ["vnet3", "vnet4"], options)
    assert d.held() == ["vnet3"] and d.bridge_hold is None
    assert d.ports["vnet3"].rule == "-A FORWARD -m physdev --physdev-in vnet3 -j DROP"
    before = nfsnapshot.fingerprint(ns)
    assert nfsnapshot.fingerprint(ns) == before
    run(ns, "iptables-legacy", "-D", "FORWARD", "1")
    assert nfsnapshot.fingerprint(ns) != before
    d = nfsnapshot.decide(nfsnapshot.read(ns), "br0", ["vnet3", "vnet4"], options)
    assert d.held() == []


def test_fingerprint_with_its_previous_answer_notices_a_same_size_replacement(ns):
    # the daemon's poll passes its last answer to skip walking the entries: a rule replaced by
    # one of the same size (only the entries change, not GET_INFO) must still move it
    run(ns, "iptables-legacy", "-A", "FORWARD", "-s", "10.0.0.1", "-j", "ACCEPT")
    run(ns, "ip", "link", "set", "lo", "up")
    run(ns, "iptables-legacy", "-A", "OUTPUT", "-j", "ACCEPT")
    with entered(ns):
        first = xtables.fingerprint("ip")
        run(ns, "ping", "-c", "2", "-i", "0.2", "127.0.0.1")  # counters move, rules do not
        again = xtables.fingerprint("ip", first)
        # equal, and its counters found where the previous answer had them (no new walk)
        assert again == first and again["filter"].counters is first["filter"].counters
        run(ns, "iptables-legacy", "-R", "FORWARD", "1", "-s", "10.0.0.2", "-j", "ACCEPT")
        replaced = xtables.fingerprint("ip", again)
        assert len(replaced["filter"].masked) == len(first["filter"].masked)
        assert replaced != first and replaced == xtables.fingerprint("ip")
    before = nfsnapshot.fingerprint(ns)
    run(ns, "iptables-legacy", "-R", "FORWARD", "1", "-s", "10.0.0.3", "-j", "ACCEPT")
    assert nfsnapshot.fingerprint(ns, before) != before


def test_a_poll_through_kept_files_sees_what_a_fresh_read_sees(ns):
    # the daemon keeps the names files, the sysctls and a raw socket open in each namespace;
    # read from its own namespace they must still answer for the one they were opened in
    run(ns, "iptables-legacy", "-A", "FORWARD", "-s", "10.0.0.1", "-j", "ACCEPT")
    kept = KeptFiles(ns)
    try:
        first = nfsnapshot.fingerprint(ns, None, kept)
        assert first == nfsnapshot.fingerprint(ns) and first["ip"]["filter"].counters
        run(ns, "iptables-legacy", "-R", "FORWARD", "1", "-s", "10.0.0.2", "-j", "ACCEPT")
        replaced = nfsnapshot.fingerprint(ns, first, kept)
        assert replaced != first and replaced == nfsnapshot.fingerprint(ns)
        run(ns, "ip6tables-legacy", "-A", "FORWARD", "-j", "DROP")  # a table that was not there
        added = nfsnapshot.fingerprint(ns, replaced, kept)
        assert added["ip6"] != replaced["ip6"] and added == nfsnapshot.fingerprint(ns)
        if os.path.exists("/proc/sys/net/bridge"):
            was = added["iptables"]
            run(ns, "sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={0 if was else 1}")
            flipped = nfsnapshot.fingerprint(ns, added, kept)
            assert flipped["iptables"] is not was and flipped == nfsnapshot.fingerprint(ns)
        assert set(kept.files) and set(kept.sockets)
    finally:
        kept.close()
    assert not kept.files and not kept.sockets


def test_the_poll_reads_only_after_a_change_and_retries_a_failed_read(ns, monkeypatch):
    poll = RulesPoll(ns)
    try:
        assert poll.read_if_changed() is not None  # the first poll reads
        assert poll.read_if_changed() is None  # nothing changed
        run(ns, "iptables-legacy", "-A", "FORWARD", "-s", "10.0.0.9", "-j", "DROP")

        def refused(netns=None):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(nfsnapshot, "read", refused)
        with pytest.raises(OSError):
            poll.read_if_changed()
        monkeypatch.undo()
        snap = poll.read_if_changed()  # due again: the failed read did not mark it clean
        texts = [r.text for t in snap.tables for c in t.chains.values() for r in c.rules]
        assert "-A FORWARD (address/protocol conditions) -j DROP" in texts, texts
        poll.mark_changed()  # nftables said so
        assert poll.read_if_changed() is not None and poll.read_if_changed() is None
    finally:
        poll.close()


def test_the_decision_store_writes_only_a_changed_decision(monkeypatch, tmp_path):
    monkeypatch.setattr(instance, "run_dir", lambda: str(tmp_path))
    decision = nfpolicy.decide("br0", ["vnet1"], nfpolicy.Calls.combine({}, {}), (), ())
    nfstore.save("br0", None, decision)
    [path] = list((tmp_path / "netfilter").iterdir())
    first = path.stat().st_ino
    nfstore.save("br0", None, decision)  # the same: nothing written
    assert path.stat().st_ino == first
    nfstore.save("br0", None, None)  # bypass: a new file, renamed into place
    assert path.stat().st_ino != first and nfstore.load("br0", None) is None
    nfstore.forget("br0", None)
    assert not path.exists()


def test_chain_devices_come_from_the_kernel_wildcards_included(ns):
    run(ns, "ip", "link", "add", "vnet3", "type", "veth", "peer", "name", "vnet3p")
    run(ns, "nft", "add", "table", "netdev", "n")
    run(
        ns,
        "nft",
        "add",
        "chain",
        "netdev",
        "n",
        "exact",
        "{ type filter hook ingress device vnet3 priority 0; }",
    )
    try:
        nf_fixtures.add_wildcard_chain(ns, "w", "wild", "vnet")
    except OSError as exc:
        pytest.skip(
            f"this kernel refuses a netdev chain on a device prefix (NFTA_DEVICE_PREFIX, Linux 6.16): {exc}"
        )
    with entered(ns):
        assert nftables.chain_devices() == {
            ("netdev", "n", "exact"): ("ingress", ("vnet3",)),
            ("netdev", "w", "wild"): ("ingress", ("vnet*",)),
        }
        rs = nftables.read_ruleset()
    assert rs.devices[("netdev", "n", "exact")] == ("vnet3",)
    listed = {(c["family"], c["table"], c["name"]) for i in rs.items if (c := i.get("chain"))}
    if ("netdev", "w", "wild") not in listed:  # nft 1.0.6 drops the chain without a word
        assert rs.unlisted == {("netdev", "w", "wild"): ("ingress", ("vnet*",))}
    d = nfpolicy.decide("br0", ["vnet3", "vnet9", "tap1"], nfpolicy.Calls(), nfrules.from_nft(rs))
    assert d.held() == ["vnet3", "vnet9"] and d.bridge_hold is None


def test_an_nft_that_hangs_on_a_wildcard_chain_holds_every_bridge_and_is_not_run_again(ns, monkeypatch):
    try:
        nf_fixtures.add_wildcard_chain(ns, "w", "wild", "vnet")
    except OSError as exc:
        pytest.skip(
            f"this kernel refuses a netdev chain on a device prefix (NFTA_DEVICE_PREFIX, Linux 6.16): {exc}"
        )
    run(ns, "timeout", "5", "nft", "add", "rule", "netdev", "w", "wild", "udp", "dport", "7100", "drop")
    with entered(ns):
        listed = subprocess.run(["timeout", "3", "nft", "-j", "list", "ruleset"], capture_output=True)
    if listed.returncode == 0:
        pytest.skip("this nft lists a chain bound to a wildcard device")
    monkeypatch.setattr(nftables, "NFT_TIMEOUT_S", 2)
    monkeypatch.setattr(nftables, "_hangs_on_wildcards", set())
    for took in (2.0, 0.5):  # the first read waits for the timeout, the second does not run nft
        started = time.monotonic()
        snap = nfsnapshot.read(ns)
        assert time.monotonic() - started < took + 1.0
        (reason,) = [why for family, source, why in snap.unreadable if source == "nft"]
        assert "wildcard device" in reason
    d = nfsnapshot.decide(snap, "br0", ["tap1"], {})
    assert d.bridge_hold is not None and "wildcard device" in d.bridge_hold.reason


def test_named_sets_and_maps_are_read_with_their_elements(ns):
    run(ns, "ip", "link", "add", "vnet3", "type", "veth", "peer", "name", "vnet3p")
    run(ns, "nft", "-f", "-", stdin="""
table bridge f {
  set ports { type ifname; flags interval; elements = { "vnet3", "eth*" }; }
  map vmap-iif { type iface_index : verdict; elements = { "vnet3" : jump vm3 }; }
  chain vm3 { ether saddr != 52:54:00:00:00:03 drop; }
  chain fw {
    type filter hook forward priority 0; policy accept;
    iif vmap @vmap-iif
    oifname @ports counter
  }
}
""")  # fmt: skip
    with entered(ns):
        tables = nfrules.from_nft(nftables.read_ruleset())
    d = nfpolicy.decide("br0", ["vnet3", "vnet4", "eth1"], nfpolicy.Calls(), tables)
    assert d.held() == ["vnet3"] and d.ports["vnet3"].chain == "vm3"
    d = nfpolicy.decide("br0", ["vnet3", "vnet4", "eth1"], nfpolicy.Calls(), tables, counters="hold")
    assert d.held() == ["eth1", "vnet3"]


def test_a_set_element_added_or_removed_marks_the_rules_changed(ns):
    """The daemon's nftables reader (NFNLGRP_NFTABLES) hears NFT_MSG_NEWSETELEM and
    NFT_MSG_DELSETELEM like rule changes: the poll reads the rules again and sees the element."""
    run(ns, "ip", "link", "add", "vnet3", "type", "veth", "peer", "name", "vnet3p")
    run(ns, "nft", "-f", "-", stdin="""
table bridge f {
  set blocked { type ifname; }
  chain fw { type filter hook forward priority 0; policy accept; iifname @blocked drop; }
}
""")  # fmt: skip
    poll = RulesPoll(ns)
    reader = events.start("nft", ns, lambda msgs, received_ns: poll.mark_changed())
    try:
        assert not reader.failed

        def held():
            snap = poll.read_if_changed()
            return None if snap is None else nfsnapshot.decide(snap, "br0", ["vnet3", "vnet4"], {}).held()

        assert held() == []
        assert held() is None  # nothing changed, nothing read
        run(ns, "nft", "add", "element", "bridge", "f", "blocked", "{ vnet3 }")
        deadline = time.monotonic() + 5
        while not poll.changed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held() == ["vnet3"]
        run(ns, "nft", "delete", "element", "bridge", "f", "blocked", "{ vnet3 }")
        deadline = time.monotonic() + 5
        while not poll.changed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held() == []
    finally:
        reader.stop()
        reader.join(5)
        poll.close()


def test_a_notification_during_a_read_leaves_the_rules_due(ns, monkeypatch):
    poll = RulesPoll(ns)
    real = nfsnapshot.read

    def racing(netns=None):
        snap = real(netns)
        poll.mark_changed()  # nftables changed while the read ran: it may have missed it
        return snap

    try:
        monkeypatch.setattr(nfsnapshot, "read", racing)
        assert poll.read_if_changed() is not None and poll.changed
        monkeypatch.setattr(nfsnapshot, "read", real)
        assert poll.read_if_changed() is not None and not poll.changed
        assert poll.read_if_changed() is None
    finally:
        poll.close()


def test_vlan_sysctls_are_read_and_polled(ns):
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-pass-vlan-input-dev"):
        pytest.skip("br_netfilter is not loaded: no bridge-nf-* sysctls")
    before = nfsnapshot.fingerprint(ns)
    for name in nfsnapshot.VLAN_SYSCTLS:
        run(ns, "sysctl", "-qw", f"net.bridge.bridge-nf-{name}=1")
    snap = nfsnapshot.read(ns)
    assert snap.sysctls["filter-vlan-tagged"] and snap.sysctls["pass-vlan-input-dev"]
    assert nfsnapshot.fingerprint(ns) != before
    assert nfpolicy.Calls.combine(snap.sysctls, {}).vlan_indev


def test_legacy_notrack_targets_are_decoded(ns):
    run(ns, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-j", "CT", "--notrack")
    run(ns, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-j", "NOTRACK")
    run(ns, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-j", "CT", "--zone", "5")
    with entered(ns):
        (raw,) = xtables.read_family("ip")
    assert [(r.target, r.notrack) for r in raw.chain("PREROUTING").rules] == [
        ("CT", True), ("CT", True), ("CT", False)]  # fmt: skip


def test_chain_devices_that_cannot_be_read_hold_every_bridge(ns, monkeypatch):
    # without the kernel's device lists a chain on a wildcard device (which nft 1.0.6 does not
    # list) would go unseen
    def refused():
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(nftables, "chain_devices", refused)
    snap = nfsnapshot.read(ns)
    (reason,) = [why for family, source, why in snap.unreadable if source == "nft"]
    assert reason.startswith("cannot read the chains' devices over netlink")
    assert nfsnapshot.decide(snap, "br0", ["vnet3"], {}).bridge_hold.reason == reason
