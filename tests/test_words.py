"""Plain words in what an operator reads: README, DESIGN, docs/, every `--help`, the benchmark's
docstrings and output, the dashboard, log and error text in the code. Words that only made
sense inside the project's history ("the seed") are named for what they are: QEMU's TAP path,
the Linux bridge, xdpbr's modes."""

import argparse
import os
import re

from control.cli import build_parser
from tests.helpers import ROOT

FORBIDDEN = re.compile(r"\bseeds?\b", re.I)
SKIP_DIRS = {"tests", "__pycache__", "node_modules"}  # tests may seed a random generator


def user_facing_files():
    for parent, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and "egg-info" not in d]
        for name in files:
            path = os.path.join(parent, name)
            try:
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), f.read()
            except (UnicodeDecodeError, OSError):
                continue  # binary (charts, objects): nothing to read


def help_texts(parser, words=("xdpbr",)):
    yield " ".join(words), parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from help_texts(sub, (*words, name))


def test_user_facing_text_never_says_seed():
    hits = [
        f"{path}:{number}: {line.strip()}"
        for path, text in user_facing_files()
        for number, line in enumerate(text.splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert hits == []


def test_no_help_text_says_seed():
    assert [words for words, text in help_texts(build_parser()) if FORBIDDEN.search(text)] == []


def test_the_check_would_catch_it():
    assert FORBIDDEN.search("measure the seed's TAP path")
    assert not FORBIDDEN.search("QEMU's TAP path; seedless; proceed")
