"""`xdpbr endpoint qemu-args` and `xdpbr endpoint launch`: what the installed QEMU accepts.

QEMU's af-xdp netdev appeared in 8.2. It takes ready sockets from its caller (`sock-fds=`,
with `inhibit=on`: no XDP program of its own); from 10.1 it can also open the endpoint's
pinned XSKMAP itself (`map-path=`, QEMU then needs CAP_NET_ADMIN and CAP_BPF). So:
  QEMU >= 10.1    one line of arguments with map-path=
  QEMU 8.2-10.0   a command line for `xdpbr endpoint launch`, which asks the daemon's broker
                  for the sockets (control/endpoints/broker.py, no capabilities needed) and execs QEMU
                  with sock-fds= filled in
  QEMU < 8.2      an error saying so, with the TAP endpoint as the way out
A TAP endpoint works with any QEMU; `vhost=on` only where /dev/vhost-net exists (QEMU
refuses to start without it).
"""

import errno
import os
import re
import resource
import shlex
import subprocess

from ...loader import instance
from ...loader.errors import UsageError, XdpbrError
from ...loader.netns import entered
from . import lifecycle as endpoints
from .client import request, socket_path

BINARY = "qemu-system-x86_64"
AFXDP_SINCE = (8, 2)  # net/af-xdp.c
MAP_PATH_SINCE = (10, 1)  # af-xdp map-path=
VHOST_NET = "/dev/vhost-net"
FDS = "@FDS@"  # what `launch` replaces with the sockets' fd numbers, colon-separated
VERSION_TIMEOUT_S = 10


def parse_version(text):
    """(major, minor) from "9.0", "10.1.2" or `qemu --version`'s first line."""
    found = re.search(r"(?:^|version\s+)(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if not found:
        raise ValueError(text)
    return int(found.group(1)), int(found.group(2))


def version(qemu=None, qemu_version=None):
    """The QEMU version to write for: --qemu-version as given, else what `QEMU --version` says."""
    if qemu_version is not None:
        try:
            return parse_version(qemu_version)
        except ValueError:
            raise UsageError(f"--qemu-version {qemu_version!r}: expected X.Y, like 9.2") from None
    binary = qemu or BINARY
    try:
        res = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise XdpbrError(
            f"{binary} not found", fix="install QEMU, or give --qemu PATH or --qemu-version X.Y"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise XdpbrError(f"cannot run `{binary} --version`: {exc}", fix="give --qemu-version X.Y") from None
    try:
        return parse_version(res.stdout.splitlines()[0] if res.stdout else "")
    except ValueError:
        raise XdpbrError(
            f"`{binary} --version` printed no QEMU version", fix="give --qemu-version X.Y"
        ) from None


def _global_options(netns):
    """The options a printed xdpbr command needs to reach the same instance and namespace."""
    return (["--instance", instance.name()] if instance.name() else []) + (["-n", netns] if netns else [])


def recipe(rec, qemu_version=None, *, binary=BINARY, vhost_net=None, program="xdpbr"):
    """What to give QEMU for endpoint record `rec` (control/endpoints/lifecycle.py): a dict with `form`
    (tap, map-path, sock-fds), `args` (QEMU's arguments) and, for sock-fds, `launch` (the
    xdpbr command that starts QEMU with the sockets). `qemu_version` (major, minor) is needed
    for AF_XDP only."""
    name, mac = rec["name"], f",mac={rec['mac']}" if rec.get("mac") else ""
    device = ["-device", f"virtio-net-pci,netdev={name}{mac}"]
    out = {"endpoint": name, "path": rec["path"], "qemu_version": None, "launch": None}
    if qemu_version:
        out["qemu_version"] = ".".join(map(str, qemu_version))
    if rec["path"] == "tap":
        vhost = os.path.exists(VHOST_NET) if vhost_net is None else vhost_net
        queues = f",queues={rec['queues']}" if rec["queues"] > 1 else ""
        netdev = f"tap,id={name},ifname={rec['ifname']},script=no,downscript=no{',vhost=on' if vhost else ''}"
        return out | {"form": "tap", "args": ["-netdev", netdev + queues, *device]}
    netdev = f"af-xdp,id={name},ifname={rec['ifname']},inhibit=on,queues={rec['queues']}"
    if qemu_version >= MAP_PATH_SINCE:
        return out | {
            "form": "map-path",
            "args": ["-netdev", f"{netdev},map-path={rec['pins']}/xsks", *device],
        }
    if qemu_version >= AFXDP_SINCE:
        args = ["-netdev", f"{netdev},sock-fds={FDS}", *device]
        verb = [program, *_global_options(rec.get("netns")), "endpoint", "launch", rec["bridge"], name, "--"]
        return out | {"form": "sock-fds", "args": args, "launch": [*verb, binary, *args]}
    bridge, opts = rec["bridge"], " ".join(["xdpbr", *_global_options(rec.get("netns"))])
    raise XdpbrError(
        f"af-xdp needs QEMU 8.2 or later, this is QEMU {out['qemu_version']}",
        fix=f"use a TAP endpoint: `{opts} endpoint del {bridge} {name}` then "
        f"`{opts} endpoint add {bridge} {name} --tap`",
    )


def recipe_text(r):
    """One line of QEMU arguments, or for sock-fds a comment and the launcher's command line."""
    if r["form"] != "sock-fds":
        return shlex.join(r["args"])
    return (
        f"# QEMU {r['qemu_version']} takes AF_XDP sockets from its caller (sock-fds=): this asks "
        f"`xdpbr daemon`'s broker for them and starts QEMU with {FDS} replaced; "
        "append the VM's other options\n" + shlex.join(r["launch"])
    )


def qemu_args(bridge, netns, name, *, qemu=None, qemu_version=None, program="xdpbr"):
    rec = endpoints.find(bridge, netns, name)
    found = version(qemu, qemu_version) if rec["path"] == "afxdp" or qemu_version else None
    return recipe(rec, found, binary=qemu or BINARY, program=program)


def _raise_memlock():
    """QEMU registers the UMEM against the VMM's locked-memory limit: as high as allowed."""
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    for limit in (resource.RLIM_INFINITY, hard):
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
            return
        except (ValueError, OSError):
            continue


def launch(bridge, netns, name, argv):
    """Ask the broker for endpoint `name`'s AF_XDP sockets, put their fds where argv says
    @FDS@, and exec argv (QEMU) with them inherited. Needs no privileges beyond the broker's
    socket (root, or the configuration's [broker] group); returns only by raising."""

    if not argv:
        raise UsageError(f"endpoint launch needs the QEMU command after --, with sock-fds={FDS} in it")
    if not any(FDS in arg for arg in argv):
        raise UsageError(
            f"no {FDS} in the QEMU command: put sock-fds={FDS} in its -netdev af-xdp "
            "(`xdpbr endpoint qemu-args` prints the line)"
        )
    endpoints.check_name(name)
    path = socket_path(bridge, netns)
    _raise_memlock()
    try:
        reply, fds = request(path, name)
    except (FileNotFoundError, ConnectionRefusedError):
        raise XdpbrError(
            f"no broker for {endpoints.label(bridge, netns)} at {path}", fix="is `xdpbr daemon` running?"
        ) from None
    except PermissionError:
        raise XdpbrError(
            f"cannot reach the broker at {path}",
            errno=errno.EACCES,
            fix="run as root or in the [broker] group of the daemon's configuration",
        ) from None
    except (OSError, ValueError) as exc:
        raise XdpbrError(f"no answer from the broker at {path}: {exc}") from None
    try:
        if not reply.get("ok"):
            raise XdpbrError(f"the broker refused endpoint {name}: {reply.get('error')}")
        if len(fds) != reply.get("queues"):
            raise XdpbrError(f"the broker sent {len(fds)} sockets for {reply.get('queues')} queues")
        for fd in fds:
            os.set_inheritable(fd, True)  # received over SCM_RIGHTS: QEMU must get them
        argv = [arg.replace(FDS, ":".join(map(str, fds))) for arg in argv]
        with entered(netns):  # QEMU finds the endpoint's interface by name, in its namespace
            os.execvp(argv[0], argv)
    except OSError as exc:
        raise XdpbrError(f"cannot start {argv[0]}", errno=exc.errno) from None
    finally:
        for fd in fds:  # reached only when exec did not happen
            os.close(fd)
