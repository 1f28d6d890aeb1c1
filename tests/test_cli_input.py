"""Bad input is one line, everywhere: every option of every command, given values out of its
range (negative, zero, non-numeric, huge, path-like), gets one `xdpbr: ...` line on stderr
and exit 1 or 2, never a traceback. Runs without root (a non-root run stops at the root check,
also one line) and never reaches the kernel: commands name a namespace that does not exist."""

import argparse

import pytest
from xdpbr.control.cli import main as cli

from tests.helpers import commands, options

BAD_VALUES = ["-1", "0", "x", "1e400", "nan", "99999999999999999999", "../etc", "a/b", ""]
MISSING_NETNS = "xdpbr-no-such-netns"
# positional arguments that make a command fail after its options are checked
POSITIONALS = {
    ("bench",): ["no-such-scenario"],
    ("daemon",): ["--once"],
    ("stats",): ["--count", "1"],
}


def _valued(parser):
    return [a for a in options(parser) if a.nargs != 0 and not isinstance(a, argparse._StoreConstAction)]


def _cases():
    for words, _, parser in commands():
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue
        positionals = [a for a in parser._actions if not a.option_strings and a.nargs in (None, "?")]
        args = ["br-missing0"] * len([a for a in positionals if a.nargs is None])
        args += POSITIONALS.get(words, [])
        if words == ("port", "set"):
            args = ["br-missing0", "p0", "mode", "auto"]
        for action in _valued(parser):
            for value in BAD_VALUES:
                yield pytest.param(
                    ["-n", MISSING_NETNS, *words, action.option_strings[-1], value, *args],
                    id=f"{' '.join(words)} {action.option_strings[-1]}={value}",
                )
    for value in ["-1", "../etc", "a/b", "Upper", "endpoints", "x" * 40]:
        yield pytest.param(["--instance", value, "show"], id=f"--instance={value}")
    for value in BAD_VALUES:
        yield pytest.param(["-n", value, "show"], id=f"-n={value}")


@pytest.mark.parametrize("argv", list(_cases()))
def test_an_out_of_range_value_is_one_line_and_exit_1_or_2(argv, capsys, monkeypatch):
    monkeypatch.setenv("XDPBR_INSTANCE", cli.instance.name())  # --instance must not leak out
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2), f"exit {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdpbr: "), err
