"""A compiled fast path (with the test-only egress map) driven through BPF_PROG_TEST_RUN.

Ports are real veth interfaces in a private namespace (the ingress ifindex must exist in the
caller's namespace), so the test enters that namespace around every run.
"""

import secrets
import subprocess

from xdpbr.control.datapath.session import Session
from xdpbr.loader import bpfsys, pins
from xdpbr.loader.compile import compile_fastpath
from xdpbr.loader.layouts import (
    ATTACH_POINTS,
    FDB_LOCAL,
    FDB_STATIC,
    MODE_INDEX,
    PORT_FORWARDING,
    PORT_XDP_EGRESS,
    REASON_INDEX,
    U32,
    U64,
    Bridge,
    Counter,
    FdbEntry,
    FdbKey,
    Port,
    mac_bytes,
    stats_index,
)
from xdpbr.loader.netns import entered

XDP_PASS, XDP_REDIRECT = 2, 4
TC_ACT_UNSPEC, TC_ACT_REDIRECT = 0xFFFFFFFF, 7  # -1 as the test run returns it (u32): hand on (TCX_NEXT)
BRIDGE_MAC = "02:b0:00:00:00:01"


class Datapath:
    def __init__(self):
        tag = secrets.token_hex(3)
        self.netns = f"xdpbr-t-dp-{tag}"
        self.pin_dir = f"{pins.BPFFS}/xdpbr-test-{tag}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.ifindex = {}
        # p4's ifindex is above XDPBR_DIRECT_IFINDEX: its slot is found through the hash
        for name, index in (("p1", None), ("p2", None), ("p3", None), ("p4", 70000)):
            extra = ["index", str(index)] if index else []
            subprocess.run(
                ["ip", "-n", self.netns, "link", "add", name, *extra, "type", "veth", "peer", f"{name}x"],
                check=True,
            )
            subprocess.run(["ip", "-n", self.netns, "link", "set", name, "up"], check=True)
            out = subprocess.run(
                ["ip", "-n", self.netns, "-o", "link", "show", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            self.ifindex[name] = int(out.split(":")[0])
        self.compiled = compile_fastpath(self.pin_dir, test=True)
        self.fd = {
            name: self.compiled.map_fd(name)
            for name in (
                "xdpbr_ports",
                "xdpbr_port_index",
                "xdpbr_port_direct",
                "xdpbr_fdb",
                "xdpbr_bridge",
                "xdpbr_vlans",
                "xdpbr_stats",
                "xdpbr_devmap",
                "xdpbr_test_egress",
                "xdpbr_generation",
                "xdpbr_clock",
            )
        }
        self.ncpu = bpfsys.possible_cpus()
        self.session = Session.over_pins(self.pin_dir, self.netns)  # the maps' one typed API
        self.vlans = {}

    def close(self):
        self.session.close()
        self.compiled.close()
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        pins.remove_dir(self.pin_dir)

    # --- state --------------------------------------------------------------------------
    def reset(self, *, vlan_filtering=False):
        for key in bpfsys.map_keys(self.fd["xdpbr_fdb"], FdbKey):
            bpfsys.map_delete(self.fd["xdpbr_fdb"], key)
        for ifindex in self.ifindex.values():
            self.session.write_vlans(ifindex, {})
        self.vlans = {}
        self.bump_generation()
        br = Bridge(
            hz=250,
            grace_jiffies=3600 * 250,
            ifindex=999,
            vlan_filtering=int(vlan_filtering),
        )
        br.mac[:] = mac_bytes(BRIDGE_MAC)
        self.session.write_bridge(br)
        self.heartbeat()
        self.slots = {}
        for slot, name in enumerate(("p1", "p2", "p3", "p4"), start=1):
            self.port(name, slot=slot)
        self.set_egress(0)

    def heartbeat(self):
        """What the daemon does: the clock program stamps the kernel's jiffies."""
        bpfsys.prog_test_run(self.compiled.clock.fd, bytes(14))

    def stale_heartbeat(self):
        bpfsys.map_update(self.fd["xdpbr_clock"], U32(0), U64(1))
        self.bridge(grace_jiffies=1)

    def bridge(self, **fields):
        br = self.session.bridge_state()
        for k, v in fields.items():
            setattr(br, k, v)
        self.session.write_bridge(br)

    def port(
        self,
        name,
        *,
        slot=None,
        mode="xdp+tc",
        flags=PORT_FORWARDING | PORT_XDP_EGRESS,
        mtu=1500,
        pvid=0,
        devmap=True,
    ):
        ifindex = self.ifindex[name]
        slot = slot or self.slots[name]
        self.slots[name] = slot
        entry = Port(ifindex=ifindex, mtu=mtu, pvid=pvid, mode=MODE_INDEX[mode], flags=flags)
        self.session.write_port(slot, entry)
        self.session.write_port_index(ifindex, slot)
        self.session.write_egress(slot, ifindex if devmap else None)

    def remove_port(self, name):
        self.session.write_port_index(self.ifindex[name], 0)
        self.session.write_port(self.slots[name], Port())

    def vlan(self, name, vid, untagged=False):
        vlans = self.vlans.setdefault(name, {})
        vlans[vid] = untagged
        self.session.write_vlans(self.ifindex[name], vlans)

    def fdb(self, mac, port, vid=0, local=False, static=False):
        key = FdbKey(vid=vid)
        key.mac[:] = mac_bytes(mac)
        ifindex = self.ifindex.get(port, port) if isinstance(port, str) else port
        slot = self.slots.get(port, 0) if isinstance(port, str) else 0
        flags = (FDB_LOCAL if local else 0) | (FDB_STATIC if static else 0)
        bpfsys.map_update(self.fd["xdpbr_fdb"], key, FdbEntry(ifindex=ifindex, flags=flags, slot=slot))
        self.bump_generation()

    def bump_generation(self):
        """What the control plane does after changing the FDB mirror (FdbMirror.sync)."""
        count = U32()
        bpfsys.map_lookup(self.fd["xdpbr_generation"], U32(0), count)
        bpfsys.map_update(self.fd["xdpbr_generation"], U32(0), U32(count.value + 1))

    def fdb_entry(self, mac, vid=0):
        key = FdbKey(vid=vid)
        key.mac[:] = mac_bytes(mac)
        value = FdbEntry()
        return value if bpfsys.map_lookup(self.fd["xdpbr_fdb"], key, value) else None

    def set_egress(self, value):
        bpfsys.map_update(self.fd["xdpbr_test_egress"], U32(0), U32(value))

    def egress(self):
        value = U32()
        bpfsys.map_lookup(self.fd["xdpbr_test_egress"], U32(0), value)
        return value.value

    def counter(self, port, attach, reason):
        slot = self.slots[port] if port else 0
        values = (Counter * self.ncpu)()
        idx = stats_index(slot, ATTACH_POINTS.index(attach), REASON_INDEX[reason])
        bpfsys.map_lookup(self.fd["xdpbr_stats"], U32(idx), values)
        return sum(c.packets for c in values)

    # --- runs ---------------------------------------------------------------------------
    def run_xdp(self, frame, ingress="p1"):
        ctx = bpfsys.XdpMd(data=0, data_end=len(frame), ingress_ifindex=self.ifindex[ingress])
        with entered(self.netns):
            retval, out, _ = bpfsys.prog_test_run(self.compiled.xdp.fd, frame, ctx=ctx)
        return retval, out

    def run_tc(self, frame, ingress="p1", gso_size=0):
        ctx = bpfsys.SkBuff(ifindex=self.ifindex[ingress], gso_size=gso_size, gso_segs=1 if gso_size else 0)
        with entered(self.netns):
            retval, out, _ = bpfsys.prog_test_run(self.compiled.tc.fd, frame, ctx=ctx)
        return retval, out
