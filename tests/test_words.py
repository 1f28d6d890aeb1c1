"""Plain words in what an operator reads: README, DESIGN, docs/, every `--help`, the benchmark's
docstrings and output, the dashboard, log and error text in the code. Words that only made
sense inside the project's history ("the seed") are named for what they are: QEMU's TAP path,
the Linux bridge, xdpbr's modes. The text is about the product as it is: no issue numbers or
"the earlier issues'" (targets are the product's, history is git's), and no pointers to notes
outside the repository (the kernel facts file, the shared directory beside the checkout): what
the code relies on is in docs/kernel-notes.md."""

import argparse
import os
import re

from xdpbr.control.cli.main import build_parser

from tests.helpers import ROOT

FORBIDDEN = re.compile(r"\bseeds?\b", re.I)
# spelled so that this file matches neither of the last two itself
HISTORY = re.compile(r"\bissues?\s+\d+|earlier issues'|KERNEL[-]FACTS|[.][.]/shared", re.I)
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


def test_user_facing_text_names_no_issue_and_no_note_outside_the_repository():
    hits = [  # over whole files: "issue" at a line's end and "11" on the next one is a hit too
        f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
        for path, text in user_facing_files()
        for m in HISTORY.finditer(text)
    ]
    assert hits == []


def test_no_help_text_names_an_issue_or_a_note_outside_the_repository():
    assert [words for words, text in help_texts(build_parser()) if HISTORY.search(text)] == []


def test_the_history_check_would_catch_it():
    for text in (
        "targets (issue 11's, replacing the earlier issues'):",
        "as Issue 12 asks",
        "the issues 4 and 5",
        "issue\n11",
        "the dispatcher fails (KERNEL" + "-FACTS)",
        "the architecture is .." + "/shared/DESIGN.md",
    ):
        assert HISTORY.search(text), text
    for text in ("targets:", "tissue 5", "no issues", 'docs/kernel-notes.md, "AF_XDP"', "shared UMEM"):
        assert not HISTORY.search(text), text


def test_every_pointer_into_the_kernel_notes_names_one_of_its_sections():
    """Code comments say `docs/kernel-notes.md, "Section"`, Markdown links `kernel-notes.md#anchor`."""
    notes = open(os.path.join(ROOT, "docs", "kernel-notes.md")).read()
    sections = set(re.findall(r"^## (.+)$", notes, re.M))
    anchors = {re.sub(r"[^a-z0-9_ -]", "", s.lower()).replace(" ", "-") for s in sections}
    named, linked = [], []
    for path, text in user_facing_files():
        flat = re.sub(r"\s*\n\s*(?:#|\*|//)?\s*", " ", text)  # a comment goes on over line breaks
        named += [(path, name) for name in re.findall(r'kernel-notes\.md, "([^"]+)"', flat)]
        linked += [(path, anchor) for anchor in re.findall(r"kernel-notes\.md#([\w-]+)", flat)]
    assert len(named) >= 14 and linked
    assert [(path, name) for path, name in named if name not in sections] == []
    assert [(path, anchor) for path, anchor in linked if anchor not in anchors] == []
