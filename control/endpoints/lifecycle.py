"""`xdpbr endpoint`: what a VMM binds to, on a bridge, with AF_XDP or a TAP.

AF_XDP endpoint NAME (how QEMU's af-xdp netdev is used with a veth today):
  NAME       the VMM side of a veth pair, running bpf/afxdp.c: every frame goes to the AF_XDP
             socket of its rx queue in the endpoint's XSKMAP
  NAME-p     the bridge side, a port of BRIDGE (accelerated like any port)
  pins       /sys/fs/bpf/xdpbr-endpoints[-INSTANCE]/<bridge>[@netns]/<NAME>/{xsks,prog}: the XSKMAP
             (QEMU >= 10.1 `map-path=`) and the program, so both outlive this command
TAP endpoint NAME: a persistent TAP with vnet_hdr, owned by --owner/--group, a port of BRIDGE.
`--mac` becomes a static FDB entry on the bridge port, so the first frame needs no flood.
An endpoint that cannot get AF_XDP falls back to a TAP and `show` says why. Records live in
/run/xdpbr[-INSTANCE]/endpoints/<bridge>[@netns]/<NAME>.json until `del`.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile

from ...loader import bpfsys, ethtool, instance, packets, tap
from ...loader.afxdp import XskRedirect, new_socket, read_xsk_stats
from ...loader.bridge_id import BridgeId
from ...loader.errors import NotFound, Unsupported, UsageError, XdpbrError
from ...loader.journal import Journal
from ...loader.links import Rtnl
from ...loader.netns import check_exists, entered, existing_index, interface_index

log = logging.getLogger("xdpbr.endpoints")
MAX_NAME = 13  # IFNAMSIZ - 1, minus the bridge side's "-p"
MAX_QUEUES = 64  # the XSKMAP's size


def label(bridge, netns):
    return BridgeId(bridge, netns).label


def record_root():
    return instance.endpoint_record_root()


def _record_path(bridge, netns, name):
    return os.path.join(BridgeId(bridge, netns).record_dir, f"{name}.json")


def _pin_dir(bridge, netns, name):
    return os.path.join(BridgeId(bridge, netns).endpoint_pin_dir, name)


def check_name(name):
    if not name or len(name) > MAX_NAME or any(c in name for c in "/:@. ") or name in (".", ".."):
        raise UsageError(f"endpoint name {name!r}: 1-{MAX_NAME} characters, no '/', ':', '@', '.' or spaces")


def check_guest_mac(mac):
    """A guest's MAC is one unicast station: six octets, the group bit clear, not all zero (the
    kernel would take a multicast one as an FDB entry and forward group traffic to one VM)."""
    try:
        octets = packets.mac(mac)
    except ValueError:
        raise UsageError(f"--mac {mac!r}: expected six hex bytes like 52:54:00:12:34:56") from None
    if octets[0] & 1 or not any(octets):
        raise UsageError(f"--mac {mac}: a guest's MAC must be unicast and not zero, like 52:54:00:12:34:56")


def _enslave(rtnl, netns, ifname, br):
    """`ip link set IFNAME master BRIDGE up` (br: the bridge's BridgeInfo)."""
    rtnl.set_master(existing_index(netns, ifname), ifname, br)


def _delete_link(rtnl, netns, ifname):
    rtnl.delete_link(existing_index(netns, ifname), ifname)


def afxdp_unavailable():
    """Why this host cannot give an endpoint AF_XDP, or None."""

    try:
        new_socket().close()
    except Unsupported as exc:
        return str(exc)
    return None


def add(bridge, netns, name, *, path="afxdp", mac=None, queues=1, owner=0, group=0):
    """Create the endpoint; everything is rolled back if a step fails."""
    check_name(name)
    check_exists(netns)
    if mac:
        check_guest_mac(mac)
    if not 1 <= queues <= MAX_QUEUES:
        raise UsageError(f"--queues {queues}: expected 1 to {MAX_QUEUES}")
    with Rtnl(netns) as rtnl:  # one RTNL socket for the whole command
        return _add(rtnl, bridge, netns, name, path, mac, queues, owner, group)


def _add(rtnl, bridge, netns, name, path, mac, queues, owner, group):
    br = rtnl.bridge(bridge)  # or why it is none
    if os.path.exists(_record_path(bridge, netns, name)):
        raise XdpbrError(
            f"endpoint {name} already exists on {label(bridge, netns)}",
            fix=f"delete it first with `xdpbr endpoint del {bridge} {name}`",
        )
    for ifname in (name, f"{name}-p"):
        if interface_index(netns, ifname) is not None:
            raise XdpbrError(f"interface {ifname} already exists", fix="pick another endpoint name")
    why = None
    if path == "afxdp":
        why = afxdp_unavailable()
        if why:
            path = "tap"
    journal = Journal()
    try:
        if path == "afxdp":
            port = _add_afxdp(rtnl, br, netns, name, queues, journal)
        else:
            port = _add_tap(rtnl, br, netns, name, queues, owner, group, journal)
        if mac:
            rtnl.fdb_add_static(existing_index(netns, port), mac)
        record = {
            "bridge": bridge,
            "netns": netns,
            "name": name,
            "path": path,
            "why": why or "requested",
            "ifname": name,
            "port": port,
            "mac": mac,
            "queues": queues,
            "owner": owner,
            "group": group,
            "pins": _pin_dir(bridge, netns, name) if path == "afxdp" else None,
        }
        _write_record(_record_path(bridge, netns, name), record)
        return record
    except BaseException:
        journal.rollback()
        raise


def _add_afxdp(rtnl, br, netns, name, queues, journal):

    port = f"{name}-p"
    q = {"num_tx_queues": queues, "num_rx_queues": queues}
    rtnl.add_veth(name, port, **q)
    journal.push(_delete_link, rtnl, netns, name)
    # A frame the fast path or the bridge sends into the port may still carry a partial
    # checksum (a container's veth offloads it); veth hands it on as is, and XDP on the other
    # side turns it into an xdp_frame whose checksum nobody completes (docs/kernel-notes.md,
    # "Checksums"), so the consumer would get a wrong one. With checksumming off on the port,
    # the kernel completes the checksum (and segments GSO frames) on transmit, as a NIC would
    # before the wire.
    with entered(netns):
        ethtool.switch(port, ethtool.TX_CHECKSUM, False)  # `ethtool -K PORT tx off`
    _enslave(rtnl, netns, port, br)
    index = existing_index(netns, name)
    rtnl.set_up(index, name)
    redirect = XskRedirect()
    try:
        rtnl.attach_xdp(index, name, redirect.prog.fd, "native")
        journal.push(rtnl.detach_xdp, index, "native")
        pin_dir = _pin_dir(br.name, netns, name)
        os.makedirs(pin_dir, exist_ok=True)
        journal.push(_remove_pins, pin_dir)
        bpfsys.obj_pin(redirect.map_fd, os.path.join(pin_dir, "xsks"))
        bpfsys.obj_pin(redirect.stats_fd, os.path.join(pin_dir, "stats"))
        bpfsys.obj_pin(redirect.prog.fd, os.path.join(pin_dir, "prog"))
    finally:
        redirect.close()  # the attached program and the pins keep both alive
    return port


def _add_tap(rtnl, br, netns, name, queues, owner, group, journal):
    tap.create_persistent(name, netns, queues=queues, owner=owner, group=group)
    journal.push(_delete_link, rtnl, netns, name)
    _enslave(rtnl, netns, name, br)
    return name


def _remove_pins(pin_dir):
    if os.path.isdir(pin_dir):
        shutil.rmtree(pin_dir)
    parent = os.path.dirname(pin_dir)  # the bridge's directory goes with its last endpoint
    if os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)


def forget_namespace(netns):
    """Records, pins and broker socket of every endpoint on bridges in `netns`, which is being
    deleted (its devices, and so the endpoints' interfaces, go with it)."""
    for root in (record_root(), instance.endpoint_pin_root()):
        if not os.path.isdir(root):
            continue
        for lab in os.listdir(root):
            if BridgeId.parse(lab).netns != netns:
                continue
            shutil.rmtree(os.path.join(root, lab))  # records, or endpoints' pin directories
    run_dir = instance.run_dir()
    if os.path.isdir(run_dir):
        for entry in os.listdir(run_dir):
            if entry.endswith(".sock") and BridgeId.parse(entry[: -len(".sock")]).netns == netns:
                os.unlink(os.path.join(run_dir, entry))


def _write_record(path, record):
    """Write atomically (a reader sees the old record or the new one, never half of one), 0600:
    records name owners and groups, and only root reads them."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


RECORD_KEYS = {"bridge", "netns", "name", "path", "ifname", "port", "queues", "owner", "group", "pins"}
unreadable_records = 0  # records skipped since this process started (xdpbr_endpoint_record_errors_total)


def _read_record(path):
    """The record at `path`, or None (logged and counted) when it is unreadable or incomplete:
    one bad file must not break the broker, `endpoint show` or a scrape."""
    global unreadable_records
    try:
        with open(path) as f:
            record = json.load(f)
        if isinstance(record, dict) and RECORD_KEYS <= record.keys():
            return record
        why = "not an endpoint record"
    except (OSError, ValueError, RecursionError) as exc:
        why = str(exc)
    unreadable_records += 1
    log.warning("skipping endpoint record %s: %s", path, why)
    return None


def records(bridge=None, netns=None):
    out = []
    root = record_root()
    if not os.path.isdir(root):
        return out
    for lab in sorted(os.listdir(root)):
        if bridge and lab != label(bridge, netns):
            continue
        for entry in sorted(os.listdir(os.path.join(root, lab))):
            if entry.startswith(".") or not entry.endswith(".json"):
                continue  # a record being written
            record = _read_record(os.path.join(root, lab, entry))
            if record is not None:
                out.append(record)
    return out


def counters(rec):
    """Frames handed to the endpoint's sockets and frames that found none, and the XSKMAP's id
    (redirect errors are counted by it); None for a TAP endpoint or one without pins."""

    if (
        rec["path"] != "afxdp"
        or not rec.get("pins")
        or not os.path.exists(os.path.join(rec["pins"], "stats"))
    ):
        return None
    stats_fd = bpfsys.obj_get(os.path.join(rec["pins"], "stats"))
    xsks_fd = bpfsys.obj_get(os.path.join(rec["pins"], "xsks"))
    try:
        return read_xsk_stats(stats_fd) | {"xskmap_id": bpfsys.map_info(xsks_fd).id}
    finally:
        os.close(stats_fd)
        os.close(xsks_fd)


def show(bridge=None, netns=None):
    """Endpoints with their path (afxdp/tap), why, and whether their interface exists. (Which
    XSKMAP slots hold a socket cannot be read from userspace; the broker knows what it handed.)"""
    return [
        dict(rec, present=interface_index(rec["netns"], rec["ifname"]) is not None)
        for rec in records(bridge, netns)
    ]


def delete(bridge, netns, name):
    check_name(name)
    rec = find(bridge, netns, name)
    path = _record_path(bridge, netns, name)
    if interface_index(netns, rec["ifname"]) is not None:
        with Rtnl(netns) as rtnl:
            _delete_link(rtnl, netns, rec["ifname"])  # a veth takes its peer with it
    if rec.get("pins"):
        _remove_pins(rec["pins"])
    os.unlink(path)
    if not os.listdir(os.path.dirname(path)):
        os.rmdir(os.path.dirname(path))


def find(bridge, netns, name):
    """The record of endpoint `name`; without `bridge`, the one of that name in `netns` (an
    endpoint's name is its interface's, so it is unique in its namespace)."""
    found = [
        r for r in records(bridge, netns) if r["name"] == name and (r.get("netns") or None) == (netns or None)
    ]
    if not found:
        where = f" on {label(bridge, netns)}" if bridge else ""
        show = f"xdpbr endpoint show {bridge}" if bridge else "xdpbr endpoint show"
        raise NotFound(f"no endpoint {name}{where}", fix=f"see `{show}`")
    return found[0]
