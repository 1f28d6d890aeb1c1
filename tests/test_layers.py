"""The map of the code (DESIGN.md, "Layers") holds: product code never imports the rig or the
benchmark (the CLI's one lazy entry excepted), and control/ reaches the kernel only through
loader/. Read from the source (every import, also those inside functions), so it needs nothing
installed and runs anywhere."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = ("control", "loader")
RIG = ("testbed", "bench", "tests")
# modules through which the kernel is reached: only loader/ may import them
KERNEL = ("ctypes", "fcntl", "pyroute2", "bcc")
ALLOWED = {("control/cli.py", "bench.run")}  # `xdpbr bench`: one lazy import of one entry point


def imports(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def imported_names(tree):
    """Names that import statements bind in a module (its view of other modules)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def modules(package):
    return sorted(f"{package}/{f}" for f in os.listdir(os.path.join(ROOT, package)) if f.endswith(".py"))


@pytest.mark.parametrize("path", [m for p in PRODUCT for m in modules(p)])
def test_product_code_never_imports_the_rig_or_the_benchmark(path):
    bad = [m for m in imports(path) if m.split(".")[0] in RIG and (path, m) not in ALLOWED]
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", modules("control"))
def test_control_reaches_the_kernel_only_through_loader(path):
    bad = [m for m in imports(path) if m.split(".")[0] in KERNEL]
    assert not bad, f"{path} imports {bad}: kernel calls belong in loader/"


@pytest.mark.parametrize("path", [m for p in PRODUCT for m in modules(p)])
def test_no_module_calls_another_modules_private_functions(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    own = os.path.splitext(os.path.basename(path))[0]
    bad = [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.value.id not in ("self", "cls", own)
        and node.value.id in imported_names(tree)
    ]
    assert not bad, f"{path} calls private {bad}"
