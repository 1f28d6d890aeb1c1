"""Helpers the tests share (never imported by product code): the CLI as a process, bounded
waits, a walk over every command and option, and instance clean-up."""

import argparse
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
    cmd = [sys.executable, "-m", "control.cli"]
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


def subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name), sub


def commands():
    """(words, help, parser) of every command and verb, e.g. (("endpoint", "add"), ...)."""
    out = []
    from control.cli import build_parser

    for name, text, sub in subparsers(build_parser()):
        verbs = list(subparsers(sub))
        out.append(((name,), text, sub))
        out += [((name, verb), vtext, vsub) for verb, vtext, vsub in verbs]
    return out


def options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def remove_instance_state():
    """Every directory of the selected instance, whatever is left in them."""
    from loader import instance

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
