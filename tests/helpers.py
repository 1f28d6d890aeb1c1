"""Helpers the tests share (never imported by product code): the CLI as a process, bounded
waits, a lab bridge's counters, a walk over every command and option, and instance clean-up."""

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# How long a test waits for the daemon to react. It reacts in milliseconds (bench: control,
# hotplug); the wait only bounds a failure, so it is generous for a loaded CI machine.
WAIT_S = 10


def xdpbr(*argv, user=None):
    """The CLI of this checkout (`python -m` from ROOT, not the venv's entry point, which may
    belong to another checkout), as a process."""
    cmd = [sys.executable, "-m", "xdpbr.control.cli"]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)


def wait_for(predicate, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def accelerate(lab, daemon, **options):
    """The lab's bridge attached (`options` as attachment.attach takes them), with a daemon (the
    conftest fixture's starter) following it; returns the daemon."""
    from xdpbr.control.datapath import attachment

    attachment.attach(lab.bridge, lab.switch, **options)
    return daemon()


def counters(lab):
    """The lab bridge's counters as `xdpbr stats` reads them: {(port, attach, reason): packets}."""
    from xdpbr.control.datapath import state

    out = {}
    for r in state.stats(lab.bridge, lab.switch):
        key = (r["port"], r["attach"], r["reason"])
        out[key] = out.get(key, 0) + r["packets"]
    return out


@contextlib.contextmanager
def counting(lab):
    """Yields a dict that, after the block, holds what the block added to each counter."""
    before, added = counters(lab), {}
    yield added
    after = counters(lab)
    added.update({key: after[key] - before.get(key, 0) for key in after})


def subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name), sub


def commands():
    """(words, help, parser) of every command and verb, e.g. (("endpoint", "add"), ...)."""
    out = []
    from xdpbr.control.cli.main import build_parser

    for name, text, sub in subparsers(build_parser()):
        verbs = list(subparsers(sub))
        out.append(((name,), text, sub))
        out += [((name, verb), vtext, vsub) for verb, vtext, vsub in verbs]
    return out


def options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def remove_instance_state():
    """Every directory of the selected instance, whatever is left in them."""
    from xdpbr.loader import instance

    for directory in (instance.bpf_root(), instance.endpoint_pin_root()):
        _remove_bpffs_tree(directory)
    for directory in (instance.run_dir(), instance.state_dir()):
        shutil.rmtree(directory, ignore_errors=True)


def _remove_bpffs_tree(directory):
    if not os.path.isdir(directory):
        return
    for parent, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            os.unlink(os.path.join(parent, name))
        for name in dirs:
            os.rmdir(os.path.join(parent, name))
    os.rmdir(directory)
