"""loader/layouts.py mirrors bpf/xdpbr_maps.h and bpf/xdpbr_reasons.h (and testbed/ mirrors
bpf/bench.h): sizes, offsets, map layouts, constants and reason names are checked against the
compiled C, not trusted."""

import ctypes
import os
import re
import secrets

import pytest
from xdpbr.loader import bpfsys, layouts, pins
from xdpbr.loader.compile import BPF_DIR, bcc_compile, compile_fastpath

from testbed import bounceloop, trafficgen

STRUCTS = {
    "xdpbr_port": layouts.Port,
    "xdpbr_vlan_key": layouts.VlanKey,
    "xdpbr_fdb_key": layouts.FdbKey,
    "xdpbr_fdb_entry": layouts.FdbEntry,
    "xdpbr_bridge": layouts.Bridge,
    "xdpbr_meta": layouts.Meta,
    "xdpbr_ifname": layouts.Ifname,
    "xdpbr_control": layouts.Control,
    "xdpbr_counter": layouts.Counter,
    "xdpbr_xsk_counter": layouts.XskCounter,
    "xdpbr_redirect_key": layouts.RedirectKey,
    "xdpbr_learn_key": layouts.LearnKey,
    "xdpbr_daemon": layouts.DaemonRecord,
    # bpf/bench.h: the benchmark's generator and closed loop
    "gen_config": trafficgen.GenConfig,
    "bounce_config": bounceloop.BounceConfig,
    "bounce_counts": bounceloop.BounceCounts,
    "bounce_mac": bounceloop.BounceMac,
}


def _header(name):
    with open(os.path.join(BPF_DIR, name)) as f:
        return f.read()


def _defines(text):
    return {m[0]: m[1] for m in re.findall(r"#define ((?:XDPBR|BOUNCE)_\w+) \(?(?:1 << )?(\d+)\)?", text)}


def test_reason_names_match_the_c_enum():
    text = _header("xdpbr_reasons.h")
    start = text.index("enum xdpbr_reason {")
    body = text[start : text.index("XDPBR_NR_REASONS_USED,", start)]
    pairs = re.findall(r"\b(FORWARD|PASS_\w+) = (\d+),", body)
    assert [int(v) for _, v in pairs] == list(range(len(pairs))), "reasons must be numbered densely"
    names = [n.removeprefix("PASS_").lower() for n, _ in pairs]
    assert tuple(names) == layouts.REASONS
    assert int(re.search(r"#define XDPBR_NR_REASONS (\d+)", text)[1]) == layouts.NR_REASONS
    assert len(layouts.REASONS) <= layouts.NR_REASONS


def test_constants_match_the_c_defines():
    d = _defines(_header("xdpbr_maps.h"))
    assert int(d["XDPBR_LAYOUT_VERSION"]) == layouts.LAYOUT_VERSION
    assert int(d["XDPBR_MAX_PORTS"]) == layouts.MAX_PORTS
    assert int(d["XDPBR_FDB_SIZE"]) == layouts.FDB_SIZE
    assert int(d["XDPBR_DIRECT_IFINDEX"]) == layouts.DIRECT_IFINDEX
    assert int(d["XDPBR_GEN_CONTROL"]) == layouts.GEN_CONTROL
    assert int(d["XDPBR_CLOCK_HEARTBEAT"]) == layouts.CLOCK_HEARTBEAT
    assert int(d["XDPBR_CLOCK_NOW"]) == layouts.CLOCK_NOW
    assert int(d["XDPBR_CONTROL_ATTACH"]) == layouts.CONTROL_ATTACH
    assert int(d["XDPBR_CONTROL_DAEMON"]) == layouts.CONTROL_DAEMON
    for i, result in enumerate(layouts.RELOAD_RESULTS):
        assert int(d[f"XDPBR_RELOAD_{result.upper()}"]) == i
    assert (layouts.RELOAD_NONE, layouts.RELOAD_OK, layouts.RELOAD_FAILED) == (0, 1, 2)
    for i, mode in enumerate(layouts.MODES):
        assert int(d[f"XDPBR_MODE_{mode.upper().replace('+', '_')}"]) == i
    assert 1 << int(d["XDPBR_PORT_FORWARDING"]) == layouts.PORT_FORWARDING
    assert 1 << int(d["XDPBR_PORT_ISOLATED"]) == layouts.PORT_ISOLATED
    assert 1 << int(d["XDPBR_PORT_HAIRPIN"]) == layouts.PORT_HAIRPIN
    assert 1 << int(d["XDPBR_PORT_XDP_EGRESS"]) == layouts.PORT_XDP_EGRESS
    assert 1 << int(d["XDPBR_PORT_PEER_REDIRECT"]) == layouts.PORT_PEER_REDIRECT
    assert 1 << int(d["XDPBR_FDB_LOCAL"]) == layouts.FDB_LOCAL
    assert 1 << int(d["XDPBR_FDB_STATIC"]) == layouts.FDB_STATIC
    assert 1 << int(d["XDPBR_VLAN_UNTAGGED"]) == layouts.VLAN_UNTAGGED
    assert 1 << int(d["XDPBR_BRIDGE_NETFILTER_BLOCK"]) == layouts.BRIDGE_NETFILTER_BLOCK
    assert 1 << int(d["XDPBR_BRIDGE_FDB_FULL"]) == layouts.BRIDGE_FDB_FULL
    assert int(_defines(_header("bench.h"))["BOUNCE_MAX_DESTS"]) == bounceloop.MAX_DESTINATIONS


@pytest.fixture(scope="module")
def pin_dir():
    directory = f"{pins.BPFFS}/xdpbr-test-layout-{secrets.token_hex(3)}"
    yield directory
    pins.remove_dir(directory)


@pytest.mark.root
def test_every_pinned_map_has_the_mirrored_layout(pin_dir):
    compiled = compile_fastpath(pin_dir)
    compiled.close()
    with pins.PinnedMaps(pin_dir) as maps:  # PinnedMaps.open checks type, key, value, capacity
        assert set(maps.fds) == set(layouts.map_specs())


@pytest.mark.root
def test_field_offsets_and_sizes_match_the_compiled_structs(pin_dir):
    from bcc import BPF

    probes = []
    for cname, cls in STRUCTS.items():
        probes.append((f"sizeof {cname}", f"sizeof(struct {cname})", ctypes.sizeof(cls)))
        for field, *_ in cls._fields_:
            probes.append(
                (f"{cname}.{field}", f"offsetof(struct {cname}, {field})", getattr(cls, field).offset)
            )
    lines = "\n".join(
        f"\ti = {i}; v = {expr}; layout_probe.update(&i, &v);" for i, (_, expr, _) in enumerate(probes)
    )
    source = f"""
#include "xdpbr_maps.h"
#include "bench.h"
BPF_ARRAY(layout_probe, u64, {len(probes)});
int probe(struct xdp_md *ctx) {{
	u32 i; u64 v;
{lines}
	return XDP_PASS;
}}
"""
    b = bcc_compile("the layout probe", text=source, cflags=[f'-DXDPBR_PIN_DIR="{pin_dir}"'])
    try:
        fn = b.load_func(b"probe", BPF.XDP)
        bpfsys.prog_test_run(fn.fd, bytes(64))
        table = b[b"layout_probe"]
        found = {label: table[ctypes.c_int(i)].value for i, (label, _, _) in enumerate(probes)}
    finally:
        b.cleanup()
    want = {label: value for label, _, value in probes}
    assert found == want


@pytest.mark.root
def test_the_daemon_record_is_created_with_its_layout_and_replaces_another(monkeypatch):
    """The daemon's record is no bcc map: bpf(2) creates it from layouts.DAEMON_SPEC, beside the
    bridges' directories, and it is never listed as a bridge; a pin of another layout (another
    xdpbr's) is not read, and the daemon replaces it."""
    from xdpbr.loader import instance

    from tests.helpers import remove_instance_state

    monkeypatch.setenv(instance.ENV, f"test-record-{secrets.token_hex(3)}")
    try:
        assert pins.DaemonRecordPin.open() is None and pins.read_daemon_record() is None
        os.makedirs(instance.bpf_root())
        other = bpfsys.map_create("array", 4, 8, 1, "xdpbr_daemon")  # another layout
        bpfsys.obj_pin(other, instance.daemon_record_pin())
        os.close(other)
        assert pins.DaemonRecordPin.open() is None, "a record of another layout must not be read"
        with pins.DaemonRecordPin.open(create=True) as pin:
            spec = layouts.DAEMON_SPEC
            pins.check_layout(pin.fd, spec, instance.daemon_record_pin())
            record = layouts.DaemonRecord(pid=os.getpid(), pid_start=pins.process_start(os.getpid()))
            record.loop_generation, record.reload_message = 7, b"reloaded"
            pin.write(record)
        found, running = pins.read_daemon_record()
        assert (found.loop_generation, found.reload_message, running) == (7, b"reloaded", True)
        assert pins.attached_bridges() == []
    finally:
        remove_instance_state()
