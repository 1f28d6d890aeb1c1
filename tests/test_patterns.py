"""Bridges by pattern: a daemon attaches the bridges its configuration's patterns match as they
appear (also in a namespace made after it started) within their compile time + 1 s, forgets
those that go, leaves alone a bridge `xdpbr detach` holds until that bridge is made again, and
`show` names the entry that attached each bridge and what is left alone.

The namespace pattern is this test's own lab prefix, never "*": other tests' namespaces, and a
production xdpbr's, live on this host."""

import json
import os
import subprocess
import time

import pytest
from xdpbr.control import config
from xdpbr.control.datapath import state
from xdpbr.control.datapath.session import Session
from xdpbr.loader import pins
from xdpbr.loader.errors import XdpbrError
from xdpbr.loader.layouts import CONTROL_ATTACH

from tests.helpers import WAIT_S, wait_for, xdpbr

SLACK_S = 1.0  # what the daemon may add to a bridge's compile: the scan's 0.5 s and the rest of attach


def shown(bridge, netns):
    """The bridge's `show` row once its attach is complete and the daemon's view written, else None."""
    try:
        row = state.show(bridge, netns)[0]
    except (XdpbrError, OSError, IndexError):
        return None
    return row if row["config_entry"] else None


def attach_record(bridge, netns):
    """(compile, attach) seconds as the attach recorded them; (0, 0) before it finished."""
    with Session(bridge, netns) as s:
        s.open_pins()
        rec = s.control(CONTROL_ATTACH)
        return rec.compile_ns / 1e9, rec.attach_ns / 1e9


def attach_done(bridge, netns):
    if not os.path.isdir(pins.pin_dir(bridge, netns)):
        return False
    try:
        return attach_record(bridge, netns)[1] > 0
    except (XdpbrError, OSError):
        return False  # pins still being made


def appeared(create, bridge, netns, timeout=20):
    """Run create(), then wait until the daemon attached `bridge`: (seconds from the start of
    create() until its attach was done, compile seconds, the show row). The row comes once the
    daemon also adopted it (its listeners, a resync) and wrote the entry for `show`."""
    started = time.monotonic()
    create()
    assert wait_for(lambda: attach_done(bridge, netns), timeout=timeout, step=0.005), (
        f"{bridge}@{netns} was not attached within {timeout} s"
    )
    took = time.monotonic() - started
    row = wait_for(lambda: shown(bridge, netns), timeout=WAIT_S, step=0.005)
    adopted = time.monotonic() - started
    assert row, f"{bridge}@{netns} was attached but `show` names no entry"
    compile_s, attach_s = attach_record(bridge, netns)
    print(
        f"{bridge}@{netns}: attached {took:.2f} s after it appeared (shown with its entry after "
        f"{adopted:.2f} s); compile {compile_s:.2f} s, attach {attach_s:.2f} s"
    )
    return took, compile_s, row


def ip(netns, *argv):
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)


@pytest.mark.root
def test_bridges_by_pattern_come_and_go_with_the_daemon(daemon, tmp_path):
    from testbed.lab import Lab

    with Lab(prefix="xdpbr-t-pat") as lab:
        path = tmp_path / "xdpbr.toml"
        path.write_text(
            f'[[bridge]]\nname = "vmbr*"\nnetns = "{lab.id}-*"\nmode = "xdp"\n\n'
            f'[[bridge]]\nname = "*"\nnetns = "{lab.id}-*"\nmode = "bridge"\n'
        )
        entry = f"bridge[0] vmbr*@{lab.id}-*"
        # a marker of a namespace deleted long ago: the daemon's first scan removes it
        stale = f"br0@{lab.id}-gone"
        config.hold(stale, True)
        d = daemon("--config", str(path))
        assert not config.held_by_operator(stale), "a marker outlived its namespace"
        try:
            # a namespace and a bridge made after the daemon started
            took, compile_s, row = appeared(lambda: lab.make_bridge("vmbr0"), "vmbr0", f"{lab.id}-sw")
            sw = lab.switch
            assert took <= compile_s + SLACK_S, (took, compile_s)
            assert (row["config_entry"], row["mode"]) == (entry, "xdp")
            c1 = lab.container("c1")
            lab.wait_forwarding()
            modes = lambda: {p["port"]: p["mode"] for p in state.show("vmbr0", sw)[0]["ports"]}  # noqa: E731
            assert wait_for(lambda: modes() == {c1.port: "xdp"}, timeout=WAIT_S), modes()

            # another bridge in a namespace already looked at; the second entry gives other0 its
            # options (the first entry wins for vmbr*)
            took, compile_s, row = appeared(
                lambda: ip(sw, "link", "add", "vmbr1", "type", "bridge"), "vmbr1", sw
            )
            assert took <= compile_s + SLACK_S, (took, compile_s)
            _, _, other = appeared(lambda: ip(sw, "link", "add", "other0", "type", "bridge"), "other0", sw)
            assert (other["config_entry"], other["mode"]) == (f"bridge[1] *@{lab.id}-*", "bridge")
            # two at once: compiled one after the other, within the loop, whose other bridges keep
            # their heartbeat within the grace period meanwhile
            both = "vmbr2", "vmbr3"
            started = time.monotonic()
            for name in both:
                ip(sw, "link", "add", name, "type", "bridge")
            assert wait_for(lambda: all(shown(name, sw) for name in both), timeout=20)
            took = time.monotonic() - started
            compiles = [attach_record(name, sw)[0] for name in both]
            print(f"vmbr2 and vmbr3 at once: both attached {took:.2f} s later; compiles {compiles}")
            assert took <= sum(compiles) + 2 * SLACK_S, (took, compiles)
            first = state.show("vmbr0", sw)[0]
            assert first["fast_path_active"] and first["heartbeat_age_s"] < first["grace_s"], first

            # `xdpbr detach` holds that very bridge: the daemon leaves it alone, and says why
            res = xdpbr("-n", sw, "detach", "vmbr1")
            assert res.returncode == 0, res.stderr
            d.settled(), d.settled()
            assert not os.path.isdir(pins.pin_dir("vmbr1", sw)), (
                "the daemon re-attached a bridge the operator detached"
            )
            status = state.show("vmbr0", sw)[0]["daemon"]
            (alone,) = [a for a in status["left_alone"] if a["bridge"] == f"vmbr1@{sw}"]
            assert alone["entry"] == entry and "xdpbr detach" in alone["reason"], alone
            shown_json = json.loads(xdpbr("-j", "show").stdout)
            assert any(a["bridge"] == f"vmbr1@{sw}" for a in shown_json[0]["daemon"]["left_alone"])

            # ... until the bridge is made again under its name (as Proxmox does at a VM start)
            ip(sw, "link", "del", "vmbr1")
            took, compile_s, row = appeared(
                lambda: ip(sw, "link", "add", "vmbr1", "type", "bridge"), "vmbr1", sw
            )
            assert not config.held_by_operator(f"vmbr1@{sw}"), "the marker outlived its bridge"
            assert took <= compile_s + SLACK_S, (took, compile_s)
            d.settled()
            assert state.show("vmbr0", sw)[0]["daemon"]["left_alone"] == []

            # a restarted daemon still names the entry that attached each bridge
            first_log = d.stop()
            d = daemon("--config", str(path))
            assert {r["bridge"]: r["config_entry"] for r in state.show(netns=sw)}["vmbr0"] == entry

            # a bridge that goes is forgotten: its pins are removed, and so is its entry
            ip(sw, "link", "del", "vmbr0")
            assert wait_for(lambda: not os.path.isdir(pins.pin_dir("vmbr0", sw)), timeout=WAIT_S), "pins kept"
            assert wait_for(
                lambda: f"vmbr0@{sw}" not in config.load_view().get("attached", {}), timeout=WAIT_S
            )
            assert {(r["bridge"], r["config_entry"]) for r in state.show(netns=sw)} == {
                ("vmbr1", entry),
                ("vmbr2", entry),
                ("vmbr3", entry),
                ("other0", f"bridge[1] *@{lab.id}-*"),
            }
            # its former port keeps no program of xdpbr's
            for cmd, mark in (
                (["ip", "-d", "link", "show", c1.port], "prog/xdp"),
                (["tc", "filter", "show", "dev", c1.port, "ingress"], "xdpbr"),
            ):
                out = subprocess.run([cmd[0], "-n", sw, *cmd[1:]], capture_output=True, text=True).stdout
                assert mark not in out, out
        finally:
            log = d.stop()
        log = first_log + log
    assert "Traceback" not in log, log
    assert f"vmbr1@{sw}: left alone ({entry}): detached with `xdpbr detach`" in log, log
    assert f"vmbr1@{sw}: `xdpbr detach` no longer holds it: the bridge " in log, log  # gone or made again
    assert f"vmbr0@{sw}: the bridge is gone; forgetting it and removing its pins" in log, log
    assert f"{stale}: `xdpbr detach` no longer holds it: its network namespace is gone" in log, log
