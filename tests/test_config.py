"""/etc/xdpbr/xdpbr.toml: every error names file, line and key; the daemon follows the file
(attach, ignored ports, fdb_max_learned, SIGHUP), and `xdpbr detach` holds across restarts."""

import os
import shutil
import signal
import subprocess
import textwrap

import pytest
from xdpbr.control import config
from xdpbr.control.config import ConfigError, load
from xdpbr.control.datapath import state
from xdpbr.loader import bridge_limits, pins
from xdpbr.loader.errors import XdpbrError
from xdpbr.loader.layouts import RELOAD_FAILED, RELOAD_OK

from tests.helpers import ROOT, WAIT_S, wait_for, xdpbr

GOOD = """\
[daemon]
metrics = "9435"
on_stop = "keep"

[[bridge]]
name = "br0"
mode = "auto"
ignore_ports = ["eth9"]
fdb_max_learned = 100
"""


def write(tmp_path, text):
    path = tmp_path / "xdpbr.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_good_file_loads(tmp_path):
    cfg = load(write(tmp_path, GOOD))
    assert cfg.metrics == "9435" and cfg.on_stop == "keep"
    (bridge,) = cfg.bridges
    assert (bridge.name, bridge.netns, bridge.mode, bridge.ignore_ports, bridge.fdb_max_learned) == (
        "br0",
        None,
        "auto",
        ("eth9",),
        100,
    )


@pytest.mark.parametrize(
    "text, where, message",
    [
        ('[daemon]\nmetrics = "9435\n', ":2", "syntax"),  # tomllib's own line
        ("[daemon]\nmetrcs = 1\n", ":2: daemon.metrcs: unknown key; did you mean 'metrics'?", None),
        ("[daemon]\non_stop = 'halt'\n", ":2: daemon.on_stop: 'halt' is not one of keep, detach", None),
        ("[daemon]\nmetrics = 'localhost'\n", ":2: daemon.metrics: 'localhost': expected [ADDR:]PORT", None),
        ("[daemon]\nmetrics = 9435\n", ":2: daemon.metrics: expected a string, got int", None),
        ("[broker]\ngroup = 'no-such-group-x'\n", ":2: broker.group: no group 'no-such-group-x'", None),
        ("[[bridge]]\nmode = 'xdp'\n", ":1: bridge: missing key 'name'", None),
        (
            "[[bridge]]\nname = 'br0'\n\n[[bridge]]\nname = 'br1'\nmode = 'fast'\n",
            ":6: bridge[1].mode: 'fast' is not one of auto, bridge, xdp, tc, xdp+tc",
            None,
        ),
        ("[[bridge]]\nname = 'a/b'\n", ":2: bridge[0].name: 'a/b' is not an interface name", None),
        (
            "[[bridge]]\nname = 'br0'\nignore_ports = 'eth0'\n",
            ":3: bridge[0].ignore_ports: expected a list",
            None,
        ),
        (
            "[[bridge]]\nname = 'br0'\nfdb_max_learned = -1\n",
            ":3: bridge[0].fdb_max_learned: -1: expected",
            None,
        ),
        (
            "[[bridge]]\nname = 'br0'\n[[bridge]]\nname = 'br0'\n",
            ":4: bridge[1].name: br0 is configured twice (first at line 2)",
            None,
        ),
        (
            "[[bridge]]\n  name = 'br0'\n  netfilter = 'off'\n",
            ":3: bridge[0].netfilter: 'off' is not one of respect, bypass",
            None,
        ),
        ("bridges = []\n", ":1: bridges: unknown key; did you mean 'bridge'?", None),
    ],
)
def test_every_error_names_file_line_and_key(tmp_path, text, where, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    text_of_error = str(err.value)
    assert text_of_error.startswith(path + where), text_of_error
    assert "\n" not in text_of_error
    if message == "syntax":
        assert "TOML syntax: Illegal character" in text_of_error


def test_a_missing_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(
        ConfigError, match="cannot read .*: No such file or directory; create .* or pass --config"
    ):
        load(str(tmp_path / "nope.toml"))


def test_the_systemd_unit_passes_systemd_analyze(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    with open(os.path.join(ROOT, "systemd", "xdpbr.service")) as f:
        unit = f.read()
    # verify checks that ExecStart's program exists: point it at this checkout's CLI, as
    # `make install-service` does with its /usr/local/sbin/xdpbr link
    cli = os.path.join(ROOT, ".venv", "bin", "xdpbr")
    (tmp_path / "xdpbr.service").write_text(unit.replace("/usr/local/sbin/xdpbr", cli))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "xdpbr.service")], capture_output=True, text=True
    )
    problems = [line for line in res.stderr.splitlines() if "xdpbr.service" in line]
    assert res.returncode == 0 and problems == [], res.stderr


def test_the_example_configuration_loads():
    assert load(os.path.join(ROOT, "systemd", "xdpbr.toml.example")).bridges == ()


@pytest.mark.root
def test_the_daemon_follows_its_configuration(two_containers, daemon, tmp_path):
    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)
    path = write(
        tmp_path,
        f"""\
        [[bridge]]
        name = "{lab.bridge}"
        netns = "{lab.switch}"
        ignore_ports = ["{lab.c2.port}"]
        fdb_max_learned = 500
        """,
    )
    d = daemon("--config", path)

    def ports():
        try:
            return {p["port"]: p for b in state.show(lab.bridge, lab.switch) for p in b["ports"]}
        except XdpbrError:
            return {}  # not (completely) attached yet

    assert wait_for(lambda: ports().get(lab.c2.port), timeout=20), "not attached"
    assert ports()[lab.c2.port]["mode"] == "bridge" and ports()[lab.c1.port]["mode"] == "tc"
    assert bridge_limits.fdb_learned(lab.bridge, lab.switch)[1] == 500

    # a bad reload keeps the running configuration and says why (systemd's ExecReload)
    good = open(path).read()
    with open(path, "w") as f:
        f.write(good.replace("fdb_max_learned", "fdb_max_learnd"))
    before = d.record()
    res = xdpbr("daemon", "--reload")
    assert res.returncode == 1, res
    error = f"{path}:5: bridge[0].fdb_max_learnd: unknown key; did you mean 'fdb_max_learned'?"
    assert res.stderr.startswith(f"xdpbr: reload failed, keeping the running configuration: {error}")
    assert res.stderr.count("\n") == 1 and "known keys: name, netns," in res.stderr, res.stderr
    rec = d.record()
    assert (rec.reloads_failed, rec.reloads_ok) == (before.reloads_failed + 1, before.reloads_ok)
    assert rec.reload_result == RELOAD_FAILED and rec.reload_message.decode().startswith(error)
    assert rec.reload_generation > before.loop_generation
    assert bridge_limits.fdb_learned(lab.bridge, lab.switch)[1] == 500
    assert ports()[lab.c2.port]["mode"] == "bridge"
    # a good one applies: the port is no longer left alone, the limit changes
    with open(path, "w") as f:
        f.write(good.replace(f'ignore_ports = ["{lab.c2.port}"]', "ignore_ports = []").replace("500", "0"))
    res = xdpbr("daemon", "--reload")
    assert res.returncode == 0, res
    assert res.stdout == f"xdpbr daemon (pid {d.proc.pid}): reloaded {path} (1 bridges)\n"
    rec = d.record()
    assert (rec.reloads_ok, rec.reload_result) == (before.reloads_ok + 1, RELOAD_OK)
    assert bridge_limits.fdb_learned(lab.bridge, lab.switch)[1] == 0  # applied before the result
    assert wait_for(lambda: ports().get(lab.c2.port, {}).get("mode") == "tc", timeout=WAIT_S)
    shown = state.show(lab.bridge, lab.switch)[0]["daemon"]
    assert (shown["running"], shown["pid"], shown["reloads_failed"]) == (True, d.proc.pid, rec.reloads_failed)
    assert shown["last_reload"]["result"] == "ok"
    assert "Traceback" not in d.stop()


@pytest.mark.root
def test_an_operator_detach_holds_across_daemon_restarts(two_containers, daemon, tmp_path):
    lab = two_containers
    path = write(tmp_path, f'[[bridge]]\nname = "{lab.bridge}"\nnetns = "{lab.switch}"\n')
    d = daemon("--config", path)
    attached = lambda: os.path.isdir(pins.pin_dir(lab.bridge, lab.switch))  # noqa: E731
    assert wait_for(attached, timeout=20)
    assert xdpbr("-n", lab.switch, "detach", lab.bridge).returncode == 0
    assert config.held_by_operator(f"{lab.bridge}@{lab.switch}")
    d.stop(signal.SIGKILL)
    restarted = daemon("--config", path)
    assert restarted.settled() and restarted.settled(), "two scans: configured bridges are attached in each"
    assert not attached(), "the daemon re-attached a bridge the operator detached"
    assert xdpbr("-n", lab.switch, "attach", lab.bridge).returncode == 0
    assert not config.held_by_operator(f"{lab.bridge}@{lab.switch}")


@pytest.mark.root
@pytest.mark.parametrize("on_stop, attached_after", [("keep", True), ("detach", False)])
def test_a_stopping_daemon_keeps_or_detaches_as_configured(
    two_containers, daemon, tmp_path, on_stop, attached_after
):
    lab = two_containers
    path = write(
        tmp_path,
        f'[daemon]\non_stop = "{on_stop}"\n\n[[bridge]]\nname = "{lab.bridge}"\nnetns = "{lab.switch}"\n',
    )
    d = daemon("--config", path)
    attached = lambda: os.path.isdir(pins.pin_dir(lab.bridge, lab.switch))  # noqa: E731
    assert wait_for(attached, timeout=20)
    assert wait_for(lambda: d.record().bridges == 1 and d.record().bridges_failed == 0, timeout=WAIT_S)
    log = d.stop()  # SIGTERM
    assert attached() == attached_after, log
    assert not config.held_by_operator(f"{lab.bridge}@{lab.switch}")  # a restart attaches it again


@pytest.mark.root
def test_under_systemd_the_daemon_notifies_and_logs_with_levels(tmp_path):
    import socket
    import sys

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    notify.bind(path)
    notify.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=path, JOURNAL_STREAM="8:1234")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xdpbr.control.cli", "daemon", "--config", write(tmp_path, "[daemon]\n")],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = notify.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=0 bridges attached, 0 failed"), ready
        proc.terminate()
        while (message := notify.recv(4096)).startswith(b"STATUS="):  # sent once a second
            pass
        assert message == b"STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    lines = proc.stderr.read().splitlines()
    assert lines and all(line.startswith(("<6>", "<4>", "<3>", "<7>")) for line in lines), lines


@pytest.mark.root
def test_a_reload_without_a_configuration_file_keeps_the_daemon_running(daemon):
    d = daemon()  # no --config, and the test instance has no /etc/xdpbr/xdpbr-<instance>.toml
    rec = d.reload()
    assert rec.reload_result == RELOAD_OK
    assert rec.reload_message == b"reloaded no configuration file (0 bridges)"
    assert d.proc.poll() is None, f"the daemon exited on SIGHUP: {d.stop()}"


@pytest.mark.root
def test_a_reload_tells_systemd_reloading_then_ready_with_a_status(daemon, tmp_path):
    path = write(tmp_path, "[daemon]\n")
    d = daemon("--config", path, listen=True)
    assert d.messages[-1][0] == "READY=1" and d.messages[-1][1].startswith("STATUS=0 bridges attached")
    seen = len(d.messages)
    rec = d.reload()
    assert rec.reload_result == RELOAD_OK and rec.reloads_ok >= 1

    def ready_again(messages):
        return any("READY=1" in m for m in messages[seen:])

    after = [m for m in d.notices(ready_again)[seen:] if not m[0].startswith("STATUS=")]
    reloading, ready = after[:2]
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC="), after
    assert ready[0] == "READY=1" and ready[1].startswith("STATUS=0 bridges attached, 0 failed"), after
    assert "reload failed" not in ready[1]
    # a bad file: the reload fails, the daemon keeps running and says so in its STATUS
    with open(path, "w") as f:
        f.write("[daemon]\non_stop = 'halt'\n")
    res = xdpbr("daemon", "--reload")
    assert res.returncode == 1 and "on_stop: 'halt' is not one of keep, detach" in res.stderr, res
    rec = d.record()
    assert rec.reload_result == RELOAD_FAILED and rec.reloads_failed >= 1
    seen = len(d.messages)
    status = d.notices(lambda messages: any(m[-1].startswith("STATUS=") for m in messages[seen:]))[-1][-1]
    assert status.endswith("; the last reload failed, running the previous configuration"), status
    assert d.proc.poll() is None


@pytest.mark.root
def test_daemon_reload_without_a_running_daemon_says_so():
    res = xdpbr("daemon", "--reload")
    assert res.returncode == 1
    assert res.stderr.startswith("xdpbr: no xdpbr daemon of this instance is running"), res.stderr


@pytest.mark.root
def test_under_systemd_daemon_reload_signals_an_older_daemon_that_keeps_no_record(tmp_path):
    """An upgrade: the unit's running daemon predates the record, so ExecReload's `daemon
    --reload` sends SIGHUP to systemd's $MAINPID and cannot wait for a result."""
    import sys

    marker = tmp_path / "hup"
    older = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys\n"
            f"signal.signal(signal.SIGHUP, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "signal.pause()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert older.stdout.readline() == "ready\n"
        env = dict(os.environ, MAINPID=str(older.pid))
        res = subprocess.run(
            [sys.executable, "-m", "xdpbr.control.cli", "daemon", "--reload"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert (
            res.stdout
            == f"xdpbr daemon (pid {older.pid}) keeps no record: sent SIGHUP; its log has the result\n"
        )
        assert older.wait(10) == 0 and marker.exists()
    finally:
        if older.poll() is None:
            older.kill()


PATTERNS = """\
[[bridge]]
name = "vmbr0"
netns = "tenant1"
mode = "xdp"

[[bridge]]
name = "vmbr*"
netns = "tenant*"
mode = "tc"

[[bridge]]
name = "vmbr*"
netns = "*"

[[bridge]]
name = "br[0-9]"
"""


def test_patterns_name_bridges_and_namespaces_and_the_first_entry_wins(tmp_path):
    cfg = load(write(tmp_path, PATTERNS))
    assert [bc.entry for bc in cfg.bridges] == [
        "bridge[0] vmbr0@tenant1",
        "bridge[1] vmbr*@tenant*",
        "bridge[2] vmbr*@*",
        "bridge[3] br[0-9]",
    ]
    assert [bc.patterned for bc in cfg.bridges] == [False, True, True, True]
    # the first matching entry in file order gives the options, bound to the bridge
    first = cfg.match("vmbr0", "tenant1")
    assert (first.name, first.netns, first.mode, first.entry) == (
        "vmbr0",
        "tenant1",
        "xdp",
        "bridge[0] vmbr0@tenant1",
    )
    second = cfg.match("vmbr7", "tenant1")
    assert (second.label, second.mode, second.entry, second.patterned) == (
        "vmbr7@tenant1",
        "tc",
        "bridge[1] vmbr*@tenant*",
        True,
    )
    assert cfg.match("vmbr7", "other").entry == "bridge[2] vmbr*@*"
    # netns absent: the daemon's own namespace only; a netns pattern ("*" too): named ones only
    assert cfg.match("br1", None).entry == "bridge[3] br[0-9]"
    assert cfg.match("br1", "tenant1") is None and cfg.match("vmbr0", None) is None
    assert cfg.match("br10", None) is None and cfg.match("xvmbr0", "tenant1") is None
    assert cfg.namespaces(["tenant1", "other", "x"]) == {None, "tenant1", "other", "x"}
    only_named = load(write(tmp_path, '[[bridge]]\nname = "*"\nnetns = "t*"\n'))
    assert only_named.namespaces(["t1", "u1"]) == {"t1"}


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "[[bridge]]\nname = 'vmbr*'\n\n[[bridge]]\nname = 'vmbr0'\n",
            ":5: bridge[1].name: vmbr0 is matched by bridge[0] vmbr* (line 2) first, so this entry would "
            "never apply; put it before the pattern",
        ),
        (
            "[[bridge]]\nname = '*'\nnetns = 't*'\n[[bridge]]\nname = 'br0'\nnetns = 't1'\n",
            ":5: bridge[1].name: br0@t1 is matched by bridge[0] *@t* (line 2) first",
        ),
        (
            "[[bridge]]\nname = 'vmbr*'\n[[bridge]]\nname = 'vmbr*'\n",
            ":4: bridge[1].name: vmbr* is configured twice",
        ),
        (
            "[[bridge]]\nname = ' vmbr*'\n",
            ":2: bridge[0].name: ' vmbr*' is not an interface name or a pattern",
        ),
        (
            "[[bridge]]\nname = 'br*'\nnetns = 'a/*'\n",
            ":3: bridge[0].netns: 'a/*' is not a namespace name or pattern",
        ),
    ],
)
def test_a_pattern_error_names_file_line_and_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(path + where), str(err.value)


def test_a_literal_entry_before_a_pattern_and_long_patterns_load(tmp_path):
    cfg = load(write(tmp_path, "[[bridge]]\nname = 'vmbr0'\n[[bridge]]\nname = 'vmbr[0-9][0-9][0-9]*'\n"))
    assert cfg.match("vmbr0", None).index == 0 and cfg.match("vmbr100", None).index == 1


def test_a_detach_marker_holds_only_the_bridge_it_was_written_for(tmp_path, monkeypatch):
    """The marker remembers the bridge's ifindex and its namespace's inode; another bridge under
    the name, or a namespace made again, or one gone, removes it (they piled up before)."""
    from xdpbr.loader import instance

    monkeypatch.setattr(instance, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(config, "bridge_identity", lambda label: (7, 4026530000))
    config.hold("vmbr0@t1", True)
    assert config.held_by_operator("vmbr0@t1") and config.held_labels() == ["vmbr0@t1"]
    assert config.held_marker("vmbr0@t1") == {"ifindex": 7, "netns_inode": 4026530000}
    assert config.check_hold("vmbr0@t1", 7, 4026530000) == (True, None)
    assert config.check_hold("vmbr0@t1", 9, 4026530000) == (
        False,
        "the bridge was made again (ifindex 7, now 9)",
    )
    assert not config.held_by_operator("vmbr0@t1")
    for now, why in (
        ((None, 4026530000), "the bridge is gone"),
        ((7, None), "its network namespace is gone"),
        ((7, 4026539999), "its network namespace was made again"),
    ):
        config.hold("vmbr0@t1", True)
        assert config.check_hold("vmbr0@t1", *now) == (False, why)
        assert config.held_marker("vmbr0@t1") is None
    # an older xdpbr's marker (a line of text) holds the bridge there now, and remembers it
    (tmp_path / "detached" / "br0").write_text("detached with `xdpbr detach`\n")
    assert config.check_hold("br0", 3, 1) == (True, None)
    assert config.held_marker("br0") == {"ifindex": 3, "netns_inode": 1}
    assert config.check_hold("br0", 4, 2) == (False, "the bridge was made again (ifindex 3, now 4)")
