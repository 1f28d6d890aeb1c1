"""The map of the code (DESIGN.md, "Layers") holds, read from the source (every import, also
those inside functions, relative ones resolved), so it needs nothing installed and runs anywhere:

- the product is one package, `xdpbr`: control/ is `xdpbr.control`, loader/ `xdpbr.loader`;
  inside it imports are relative, outside (tests, bench, testbed) they name `xdpbr.`;
- loader/ is the kernel boundary: above it nothing imports pyroute2, bcc, ctypes or fcntl, calls
  os.system, or opens a netlink, packet or XDP socket; the few sockets of control/'s own (the
  broker's and the metrics endpoint's, sd_notify) and the QEMU launcher's exec are named below;
- control/ is built in floors (FLOORS): a module imports only from its own floor or below, and
  loader/ never imports upwards; no circle anywhere;
- product code never imports the rig or the benchmark (the CLI's one lazy entry excepted).
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = {"control": "xdpbr.control", "loader": "xdpbr.loader", "grafana": "xdpbr.grafana"}
RIG = ("testbed", "bench", "tests")
# modules through which the kernel is reached: only loader/ may import them
KERNEL = ("ctypes", "fcntl", "pyroute2", "bcc")
KERNEL_SOCKETS = ("AF_NETLINK", "AF_PACKET", "AF_XDP")
# control/'s own sockets (unix and TCP servers, their client, sd_notify) and exec, where they live
OWN_SOCKETS = {
    "xdpbr.control.connections",  # the one selector loop behind the broker and the metrics endpoint
    "xdpbr.control.endpoints.broker",  # SO_PEERCRED of the broker's unix clients
    "xdpbr.control.endpoints.client",  # a launcher's request to the broker
    "xdpbr.control.metrics.exposition",  # the metrics endpoint's TCP listener
    "xdpbr.control.daemon.service",  # sd_notify
}
OWN_EXEC = {"xdpbr.control.endpoints.qemu"}  # `endpoint launch` execs QEMU
SOCKET_CALLS = ("socket", "socketpair", "create_server", "create_connection", "fromfd")
# control/'s floors, lowest first: an import may stay on its floor or go down, never up
FLOORS = (
    ("xdpbr.control.model", "xdpbr.control.connections", "xdpbr.control.config", "xdpbr.control.records"),
    ("xdpbr.control.netfilter",),
    ("xdpbr.control.datapath",),
    ("xdpbr.control.endpoints",),
    ("xdpbr.control.metrics",),
    ("xdpbr.control.daemon",),
    ("xdpbr.control.cli",),
)
ALLOWED_RIG = {("xdpbr.control.cli.main", "bench.run")}  # `xdpbr bench`: one lazy entry point


def product_modules():
    """{module name: path} of every module of the package, subpackages included."""
    out = {}
    for folder, package in PACKAGE.items():
        for parent, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(parent, os.path.join(ROOT, folder))
            pkg = package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"
            for f in files:
                if f.endswith(".py"):
                    out[pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"] = os.path.join(parent, f)
    return out


MODULES = product_modules()


def is_package(name):
    return MODULES[name].endswith("__init__.py")


def imports(name, source=None):
    """(imported module, line, absolute?) of every import in module `name`; `from P import m`
    names P.m when that is a module. Relative imports are resolved against the module's package."""
    path = MODULES.get(name)
    tree = ast.parse(source if source is not None else open(path).read())
    package = name if path and is_package(name) else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, True
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield (sub if sub in MODULES else module), node.lineno, node.level == 0


def floor(module):
    for level, members in enumerate(FLOORS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return level
    return None


def layer_violations(name, source=None):
    """Every rule above broken by module `name` (its source as on disk unless given)."""
    tree = ast.parse(source if source is not None else open(MODULES[name]).read())
    bad = []
    above_loader = not name.startswith("xdpbr.loader")
    for module, line, absolute in imports(name, source):
        top = module.split(".")[0]
        if top in ("control", "loader", "grafana"):
            bad.append(f"{line}: `{module}` outside the package: import it relatively")
        elif module.startswith("xdpbr.") and absolute:
            bad.append(f"{line}: `{module}` inside the package: import it relatively")
        if top in RIG and (name, module) not in ALLOWED_RIG:
            bad.append(f"{line}: imports the rig or the benchmark ({module})")
        if above_loader and top in KERNEL:
            bad.append(f"{line}: imports {module}: kernel calls belong in loader/")
        if not above_loader and module.startswith("xdpbr.") and not module.startswith("xdpbr.loader"):
            bad.append(f"{line}: loader/ imports upwards ({module})")
        mine, theirs = floor(name), floor(module)
        if mine is not None and theirs is not None and theirs > mine:
            bad.append(f"{line}: imports {module}, a floor above")
    if above_loader:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                what = f"{node.value.id}.{node.attr}"
                if node.value.id == "socket" and node.attr in KERNEL_SOCKETS:
                    bad.append(f"{node.lineno}: {what}: netlink, packet and XDP sockets belong in loader/")
                elif node.value.id == "socket" and node.attr in SOCKET_CALLS and name not in OWN_SOCKETS:
                    bad.append(f"{node.lineno}: {what}: a socket outside the modules named in OWN_SOCKETS")
                elif what == "os.system" or (
                    node.value.id == "os" and node.attr.startswith("exec") and name not in OWN_EXEC
                ):
                    bad.append(f"{node.lineno}: {what}")
    return bad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_keeps_to_its_layer(name):
    bad = layer_violations(name)
    assert not bad, f"{MODULES[name]}:\n" + "\n".join(bad)


def test_the_import_graph_has_no_circle():
    graph = {name: {m for m, _, _ in imports(name) if m in MODULES and m != name} for name in MODULES}
    # a package's __init__ is imported with each of its modules: it must import none of them
    done, path = set(), []

    def visit(node):
        if node in path:
            cycle = path[path.index(node) :] + [node]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_every_control_module_has_a_floor():
    assert [n for n in MODULES if n.startswith("xdpbr.control.") and floor(n) is None] == []


@pytest.mark.parametrize(
    "planted",
    [
        "from pyroute2 import IPRoute\n",
        "import ctypes\n",
        "import socket\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n",
        "import os\nos.system('ip link')\n",
        "from ..cli import main\n",
        "from control.datapath import session\n",
        "from xdpbr.loader import pins\n",
        "from bench import run\n",
    ],
)
def test_the_check_would_catch_a_planted_import(planted):
    name = "xdpbr.control.datapath.fdb"
    assert layer_violations(name, open(MODULES[name]).read() + "\n" + planted)


def test_loader_importing_upwards_would_be_caught():
    name = "xdpbr.loader.pins"
    assert layer_violations(name, "from ..control import config\n")


def outside_modules():
    for folder in ("tests", "bench", "testbed"):
        for f in sorted(os.listdir(os.path.join(ROOT, folder))):
            if f.endswith(".py"):
                yield f"{folder}/{f}"


@pytest.mark.parametrize("path", list(outside_modules()))
def test_code_outside_the_package_names_it_xdpbr(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    bad = [
        f"{node.lineno}: {node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.level == 0
        and node.module
        and node.module.split(".")[0] in ("control", "loader", "grafana")
    ]
    bad += [
        f"{node.lineno}: {a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.name.split(".")[0] in ("control", "loader", "grafana")
    ]
    assert not bad, f"{path} imports the checkout's folders, not the package: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_calls_another_modules_private_functions(name):
    tree = ast.parse(open(MODULES[name]).read())
    own = name.rsplit(".", 1)[-1]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {a.asname or a.name for a in node.names}
    bad = [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.value.id not in ("self", "cls", own)
        and node.value.id in imported
    ]
    assert not bad, f"{MODULES[name]} calls private {bad}"
