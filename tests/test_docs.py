"""Every command, verb and option of `xdpbr` has help text and a line in the README's usage
block (sqlite-utils' test_docs): the CLI and its documentation cannot drift apart silently."""

import os
import re

import pytest
from xdpbr.control.cli.main import build_parser

from tests.helpers import commands, options, subparsers

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def usage_lines():
    text = open(README).read()
    block = re.search(r"## Using it\n\n```\n(.*?)```", text, re.S).group(1)
    lines = []
    for line in block.splitlines():
        if lines and line.startswith(" "):
            lines[-1] += line  # a usage that goes on over the next line
        else:
            lines.append(line)
    return lines


def _documented(words, lines):
    # `xdpbr`, the global options in brackets, then exactly these words
    pattern = re.compile(r"^xdpbr(\s+\[[^\]]*\])*\s+" + r"\s+".join(map(re.escape, words)) + r"(\s|$)")
    return [line for line in lines if pattern.search(line)]


@pytest.mark.parametrize("words, text, parser", [pytest.param(*c, id=" ".join(c[0])) for c in commands()])
def test_every_command_and_option_has_help_and_a_readme_line(words, text, parser):
    assert text, f"`xdpbr {' '.join(words)}` has no help text"
    if any(subparsers(parser)):
        return  # a command with verbs: each verb is checked on its own
    lines = _documented(words, usage_lines())
    assert lines, f"README's usage block has no line for `xdpbr {' '.join(words)}`"
    for action in options(parser):
        assert action.help, f"`xdpbr {' '.join(words)} {action.option_strings[-1]}` has no help text"
        assert any(opt in line for opt in action.option_strings for line in lines), (
            f"README's usage line for `xdpbr {' '.join(words)}` does not name {action.option_strings[-1]}"
        )


def test_the_global_options_are_documented():
    usage = "\n".join(usage_lines())
    for action in options(build_parser()):
        assert action.help
        assert any(opt in usage for opt in action.option_strings), f"{action.option_strings} not in README"
