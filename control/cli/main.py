"""`xdpbr`, the operator CLI: iproute2 style, `xdpbr [-j] [-n NETNS] OBJECT/COMMAND ...`.

Commands return dicts; render.py prints them as text or JSON. Errors are one line on stderr,
`xdpbr: ...`, exit 1 (2 for usage). Read-only commands (show, stats, fdb show) use pinned maps
only and never start the compiler.
The module is over 400 lines because the whole command grammar (argparse declarations, help
text for every option) lives here, in one place the README's usage block is checked against.
"""

import argparse
import logging
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from ...loader import instance
from ...loader.bridge_id import BridgeId
from ...loader.errors import UsageError, XdpbrError
from ...loader.layouts import (
    FDB_SIZE,
    FDB_SIZE_RANGE,
    MAX_PORTS,
    MAX_PORTS_RANGE,
    REQUESTED_MODES,
    XDP_MODE_REQUESTS,
)
from ...loader.netns import check_exists, enter_host, resolve
from .. import config
from ..daemon import service as daemon
from ..datapath import attachment, state
from ..endpoints import lifecycle as endpoints
from ..endpoints import qemu
from ..metrics import collector as metrics
from ..model import NETFILTER_CHOICES
from . import port_set, render, watch

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}; try `{self.prog} --help`")


def _number(kind, what, ok, expected):
    """argparse type: text that `kind` converts (else "is not `what`") to a value for which
    ok(value) holds (else `expected`)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: {expected}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _positive(kind):
    """argparse type: a number above zero (a negative grace would wrap to an endless one)."""
    return _number(kind, "a number", lambda v: v > 0 and math.isfinite(v), "must be above zero and finite")


MAX_ID = 2**32 - 2  # uid_t/gid_t; (uid_t)-1 means "none" to the kernel


def _int_in(lo, hi):
    """argparse type: an integer from lo to hi."""
    return _number(int, "an integer", lambda v: lo <= v <= hi, f"expected {lo} to {hi}")


def _seconds(parser, flag, default, help):
    """A duration option: seconds above zero."""
    parser.add_argument(flag, type=_positive(float), default=default, metavar="SECONDS", help=help)


def _on_bridge(subparsers, name, help, optional=False, **kwargs):
    """A command whose first argument names the bridge: `BRIDGE`, or `[BRIDGE]` (every
    attached one) where optional."""
    p = subparsers.add_parser(name, help=help, **kwargs)
    p.add_argument("bridge", nargs="?" if optional else None)
    return p


def _verbs(subparsers, name, help):
    """An object whose verbs are subcommands (iproute2 style: `xdpbr port set ...`)."""
    return subparsers.add_parser(name, help=help).add_subparsers(
        dest="verb", metavar="VERB", parser_class=_Parser
    )


def build_parser():
    p = _Parser(prog="xdpbr", description="XDP/TC shadow fast path for Linux bridges.")
    p.add_argument("-j", "--json", action="store_true", help="print JSON")
    p.add_argument("-n", "--netns", metavar="NETNS", help="the bridge lives in this network namespace")
    p.add_argument("-v", "--verbose", action="store_true", help="show library output and debug logs")
    p.add_argument(
        "--instance",
        metavar="NAME",
        help="which xdpbr on this host: its pins, run dir, config and state carry -NAME "
        "(default $XDPBR_INSTANCE, else the host's own)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = _on_bridge(sub, "attach", "accelerate a bridge (replaces xdpbr's programs atomically)")
    a.add_argument(
        "--mode", choices=REQUESTED_MODES, default="auto", help="mode for every port (default auto)"
    )
    a.add_argument(
        "--xdp-mode",
        choices=XDP_MODE_REQUESTS[1:],
        help="native or generic XDP (default: native, generic fallback)",
    )
    a.add_argument(
        "--netfilter",
        choices=NETFILTER_CHOICES,
        default="respect",
        help="respect: ports whose frames netfilter could see stay on the bridge (default)",
    )
    a.add_argument(
        "--netfilter-counters",
        choices=config.NETFILTER_COUNTERS,
        default="ignore",
        help="hold: a rule that only counts frames keeps the ports it sees on the bridge, for "
        "billing from counters (default ignore)",
    )
    _seconds(a, "--grace", 10.0, "how long the fast path runs without a daemon heartbeat (default 10)")
    for flag, sizes, default, what in (
        ("--max-ports", MAX_PORTS_RANGE, MAX_PORTS, "port slots the maps hold"),
        ("--fdb-size", FDB_SIZE_RANGE, FDB_SIZE, "FDB mirror entries"),
    ):  # the maps' sizes, compiled in (-D)
        a.add_argument(
            flag,
            type=_int_in(*sizes),
            metavar="N",
            help=f"{what} (default {default}, or what the attachment has)",
        )

    _on_bridge(sub, "detach", "remove xdpbr from a bridge")
    _on_bridge(sub, "show", "attached bridges, each port's mode and why", optional=True)

    psub = _verbs(sub, "port", "per-port settings")
    ps = _on_bridge(psub, "set", "xdpbr port set BRIDGE PORT mode MODE")
    ps.add_argument("port")
    ps.add_argument("key", choices=["mode"])
    ps.add_argument("mode", choices=REQUESTED_MODES)
    _on_bridge(psub, "show", "xdpbr port show [BRIDGE]", optional=True)

    _on_bridge(_verbs(sub, "fdb", "the FDB mirror"), "show", "xdpbr fdb show BRIDGE")

    st = _on_bridge(
        sub,
        "stats",
        "counters by port, attach point and reason; with --watch, rates per interval",
        optional=True,
    )
    st.add_argument(
        "--watch",
        action="store_true",
        help="frames/s and bits/s per port and in total, fast path (xdp, tc) and bridge with the top "
        "reasons, every --interval seconds (redrawn on a terminal; -j: one JSON object an interval)",
    )
    _seconds(st, "--interval", 1.0, "with --watch: seconds between prints")
    st.add_argument(
        "--count", type=_positive(int), default=None, metavar="N", help="with --watch: stop after N intervals"
    )

    dm = sub.add_parser("daemon", help="mirror FDB and port changes into the fast path (foreground)")
    dm.add_argument("--once", action="store_true", help="resync every attached bridge once and exit")
    dm.add_argument(
        "--metrics", metavar="[ADDR:]PORT", help="serve Prometheus metrics (a bare port: loopback)"
    )
    dm.add_argument(
        "--config",
        metavar="FILE",
        help="configuration (default /etc/xdpbr/xdpbr[-INSTANCE].toml if present)",
    )
    dm.add_argument(
        "--reload",
        action="store_true",
        help="make the running daemon reload its configuration (SIGHUP), wait for the result and "
        "exit 1 if it failed (systemd's ExecReload)",
    )

    _on_bridge(sub, "metrics", "print the Prometheus metrics once", optional=True)

    epsub = _verbs(sub, "endpoint", "AF_XDP or TAP endpoints for VMs on a bridge")
    ea = _on_bridge(epsub, "add", "xdpbr endpoint add BRIDGE NAME --afxdp|--tap [--mac MAC] ...")
    ea.add_argument("name")
    kind = ea.add_mutually_exclusive_group()
    kind.add_argument("--afxdp", dest="path", action="store_const", const="afxdp", help="AF_XDP (default)")
    kind.add_argument("--tap", dest="path", action="store_const", const="tap", help="a TAP with vnet_hdr")
    ea.add_argument("--mac", help="the guest's MAC: a static FDB entry on the endpoint's port")
    ea.add_argument("--queues", type=int, default=1, help="queues, one AF_XDP socket each (default 1)")
    ea.add_argument(
        "--owner",
        type=_int_in(0, MAX_ID),
        default=0,
        metavar="UID",
        help="who may take the sockets or open the TAP (default 0)",
    )
    ea.add_argument(
        "--group", type=_int_in(0, MAX_ID), default=0, metavar="GID", help="the same for a group (default 0)"
    )
    _on_bridge(epsub, "show", "xdpbr endpoint show [BRIDGE]", optional=True)
    _on_bridge(epsub, "del", "xdpbr endpoint del BRIDGE NAME").add_argument("name")
    eq = epsub.add_parser(
        "qemu-args",
        help="what the installed QEMU takes for the endpoint: map-path= (QEMU >= 10.1), "
        "a launcher with sock-fds= (8.2-10.0) or the TAP arguments",
    )
    eq.add_argument("names", nargs="+", metavar="[BRIDGE] NAME", help="the bridge only if NAME is on several")
    which = eq.add_mutually_exclusive_group()
    which.add_argument(
        "--qemu", metavar="PATH", help="ask this QEMU binary its version (default qemu-system-x86_64)"
    )
    which.add_argument("--qemu-version", metavar="X.Y", help="write for this QEMU version instead")
    el = _on_bridge(
        epsub,
        "launch",
        "start QEMU (8.2-10.0) with the endpoint's AF_XDP sockets from the daemon's broker, "
        "put where its arguments say @FDS@; needs no root, only access to the broker",
        usage="xdpbr [-n NETNS] endpoint launch BRIDGE NAME -- QEMU [ARG...]",
    )
    el.add_argument("name")
    el.add_argument(
        "command_args", nargs=argparse.REMAINDER, metavar="-- QEMU ARG...", help="the QEMU command"
    )

    be = sub.add_parser(
        "bench",
        help="measure the bridge, xdpbr and QEMU's TAP path side by side (own namespaces)",
        epilog=_BENCH_SCENARIOS,
        formatter_class=_BenchHelp,
    )
    be.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="a scenario listed below (default: all of them, in that order)",
    )
    be.add_argument("--rounds", type=int, default=5, help="alternating rounds, at least 5 (default 5)")
    be.add_argument("--window", type=float, default=4.0, help="seconds a frame-rate measurement (default 4)")
    be.add_argument("--tcp-seconds", type=int, default=5, help="seconds an iperf3 run (default 5)")
    be.add_argument("--flows", type=int, default=1, help="UDP flows the generator cycles through")
    be.add_argument(
        "--destinations",
        type=int,
        default=1024,
        help="scale: destination MACs the traffic is spread over, 1 to 4096 (default 1024)",
    )
    be.add_argument(
        "--generator",
        choices=("auto", "live", "packet", "bounce"),
        default="auto",
        help="traffic source: live frames (BPF_PROG_RUN), packet (AF_PACKET, rate-bounded only), "
        "bounce (a closed XDP loop through the switch); auto (default) probes live frames once "
        "and otherwise uses bounce for capacity figures and packet for rate-bounded scenarios",
    )
    be.add_argument(
        "--png", metavar="FILE", default="xdpbr-bench.png", help="chart (default xdpbr-bench.png)"
    )
    return p


def _require_root():
    if os.geteuid() != 0:
        raise XdpbrError(
            "must run as root (BPF maps and netlink need CAP_BPF and CAP_NET_ADMIN)", fix="run it with sudo"
        )


@dataclass(frozen=True)
class Command:
    """One row of the command table: what runs, and whether it needs root (BPF maps, netlink)
    and an existing `-n NETNS` first."""

    handler: Callable
    root: bool = True


def run(args):
    """Dispatch a parsed command line through COMMANDS; returns the exit code."""
    if not args.command:
        raise UsageError("no command given; try `xdpbr --help`")
    key = (args.command, args.verb) if args.command in NEEDS_VERB else (args.command,)
    command = COMMANDS.get(key)
    if command is None:
        raise UsageError(NEEDS_VERB[args.command])
    if command.root:
        _require_root()
        instance.bpffs()  # the host's, or one line saying why not, before anything is made
        if key == ("daemon",):
            enter_host()  # it serves every namespace's bridges from the host's namespace
        else:
            args.netns = resolve(args.netns)  # under `ip netns exec NS`: as `-n NS` from the host
        check_exists(args.netns)
    return command.handler(args) or 0


def _attach(args):
    attachment.attach(
        args.bridge,
        args.netns,
        mode=args.mode,
        xdp_mode=args.xdp_mode or "any",
        netfilter_choice=args.netfilter,
        netfilter_counters=args.netfilter_counters,
        grace_s=args.grace,
        max_ports=args.max_ports,
        fdb_size=args.fdb_size,
    )
    config.hold(_label(args), False)
    render.emit(state.show(args.bridge, args.netns), args.json, render.show_text)


def _detach(args):
    # the marker first: a daemon scan between the two would otherwise attach a configured
    # bridge again; the daemon leaves it alone, also after a restart
    config.hold(_label(args), True)
    try:
        attachment.detach(args.bridge, args.netns)
    except XdpbrError:
        config.hold(_label(args), False)  # nothing was detached: nothing to hold
        raise
    if args.json:
        render.emit([], True, str)


def _show(args):
    render.emit(state.show(args.bridge, args.netns), args.json, render.show_text)


def _fdb_show(args):
    render.emit(state.fdb_show(args.bridge, args.netns), args.json, render.fdb_text)


def _daemon(args):
    if args.reload:
        if args.once or args.metrics or args.config:
            raise UsageError("daemon --reload takes no other option: it signals the running daemon")
        return daemon.request_reload()
    return daemon.main(once=args.once, metrics=args.metrics, config_path=args.config)


def _metrics(args):
    sys.stdout.write(metrics.exposition(args.bridge, args.netns))


def _endpoint_add(args):
    endpoints.add(
        args.bridge,
        args.netns,
        args.name,
        path=args.path or "afxdp",
        mac=args.mac,
        queues=args.queues,
        owner=args.owner,
        group=args.group,
    )
    added = [r for r in endpoints.show(args.bridge, args.netns) if r["name"] == args.name]
    render.emit(added, args.json, render.endpoints_text)  # as `show` prints it, `present` too


def _endpoint_show(args):
    render.emit(endpoints.show(args.bridge, args.netns), args.json, render.endpoints_text)


def _endpoint_del(args):
    endpoints.delete(args.bridge, args.netns, args.name)
    if args.json:
        render.emit([], True, str)


def _endpoint_qemu_args(args):
    if len(args.names) > 2:
        raise UsageError("endpoint qemu-args takes [BRIDGE] NAME")
    bridge, name = args.names if len(args.names) == 2 else (None, args.names[0])
    found = qemu.qemu_args(
        bridge, args.netns, name, qemu=args.qemu, qemu_version=args.qemu_version, program=_program()
    )
    render.emit(found, args.json, qemu.recipe_text)


def _endpoint_launch(args):
    return qemu.launch(args.bridge, args.netns, args.name, args.command_args)


def _program():
    """How a printed xdpbr command line names xdpbr: `xdpbr` when that is on PATH, else the
    path this one was started by (a checkout's .venv/bin/xdpbr)."""
    if shutil.which("xdpbr") or os.path.basename(sys.argv[0]) != "xdpbr":
        return "xdpbr"
    return os.path.abspath(sys.argv[0])


def _label(args):
    return BridgeId(args.bridge, args.netns).label


BENCH_MISSING = "the benchmark is not installed with xdpbr"
BENCH_FIX = "run it from a checkout: make bench"
_BENCH_SCENARIOS = "(the benchmark's scenarios)"  # the epilog _BenchHelp fills in


def _benchmark():
    """bench/run.py, the CLI's one way into the benchmark (not product code: a checkout's
    bench/ and testbed/, never installed with xdpbr), imported only when `xdpbr bench` runs or
    shows its help; None where it is not there."""
    try:
        import bench.run as benchmark
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("bench", "testbed"):
            return None
        raise
    return benchmark


class _BenchHelp(argparse.RawDescriptionHelpFormatter):
    """`xdpbr bench --help`: the scenarios and what each measures, from the benchmark's table
    (bench/run.py SCENARIOS), read only when this help is shown."""

    def add_text(self, text):
        if text is _BENCH_SCENARIOS:
            benchmark = _benchmark()
            if benchmark is None:
                text = f"{BENCH_MISSING}; {BENCH_FIX}"
            else:
                lines = ["scenarios (all of them when none is named, in this order):"]
                for row in benchmark.SCENARIOS:
                    lines += textwrap.wrap(
                        row.help,
                        self._width,
                        initial_indent=f"  {row.name:12}",
                        subsequent_indent=" " * 14,
                        break_on_hyphens=False,
                    )
                text = "\n".join(lines)
        super().add_text(text)


def _bench(args):
    """`xdpbr bench`; an xdpbr installed without the benchmark says so before it asks for root."""
    benchmark = _benchmark()
    if benchmark is None:
        raise XdpbrError(BENCH_MISSING, fix=BENCH_FIX)
    _require_root()
    check_exists(args.netns)
    return benchmark.command(args)


def _port_set(args):
    port_set.set_mode(args.bridge, args.netns, args.port, args.mode)
    _port_show(args)


def _port_show(args):
    rows = [dict(p, bridge=b["bridge"]) for b in state.show(args.bridge, args.netns) for p in b["ports"]]
    render.emit(rows, args.json, render.ports_text)


def _stats(args):
    if args.watch:
        return watch.run(args.bridge, args.netns, args.interval, args.count, args.json)
    if not args.json:
        for b in state.show(args.bridge, args.netns):
            if b["netfilter_hold"]:  # nothing runs on its ports: say why rather than a table of zeros
                hold = b["netfilter_hold"]["text"]
                print(f"bridge {b['bridge']}: every port is on the Linux bridge, held by {hold}")
    render.emit(state.stats(args.bridge, args.netns), args.json, render.stats_text)


# The command table: (command,) or (command, verb) -> what runs. Commands with verbs are in
# NEEDS_VERB, with the line a missing verb gets.
COMMANDS = {
    ("attach",): Command(_attach),
    ("detach",): Command(_detach),
    ("show",): Command(_show),
    ("port", "set"): Command(_port_set),
    ("port", "show"): Command(_port_show),
    ("fdb", "show"): Command(_fdb_show),
    ("stats",): Command(_stats),
    ("daemon",): Command(_daemon),
    ("metrics",): Command(_metrics),
    ("bench",): Command(_bench, root=False),  # says it is not installed before it asks for root
    ("endpoint", "add"): Command(_endpoint_add),
    ("endpoint", "show"): Command(_endpoint_show),
    ("endpoint", "del"): Command(_endpoint_del),
    ("endpoint", "qemu-args"): Command(_endpoint_qemu_args),
    ("endpoint", "launch"): Command(_endpoint_launch, root=False),  # a VMM's user; the broker decides
}
NEEDS_VERB = {
    "port": "port needs a verb: xdpbr port set BRIDGE PORT mode MODE | xdpbr port show [BRIDGE]",
    "fdb": "fdb needs a verb: xdpbr fdb show BRIDGE",
    "endpoint": "endpoint needs a verb: add, show, del, qemu-args or launch",
}


class _TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("xdpbr: %(levelname)s %(message)s")


class _JournalFormatter(logging.Formatter):
    """Under systemd: `<priority>message`, one line an event, which journald turns into its
    PRIORITY field (SyslogLevelPrefix=yes is systemd's default)."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record):
        text = record.getMessage().replace("\n", " ")
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}"


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.instance is not None:
            instance.select(args.instance)  # also for the processes this one starts
        else:
            instance.check(instance.name())
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter() if os.environ.get("JOURNAL_STREAM") else _TextFormatter())
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
        return run(args)
    except UsageError as exc:
        print(f"xdpbr: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except XdpbrError as exc:
        print(f"xdpbr: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
