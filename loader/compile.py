"""Compile bpf/fastpath.c with bcc for one bridge.

bcc needs kernel headers. A host whose kernel has no matching headers package (a cloud or
custom kernel) can use Debian's split linux-headers-<ver>-{common,amd64} pair: bcc gets the
common tree as its kernel source and the arch tree's generated headers as include paths. All of
it is process-local (environment of this process, cflags): no global symlinks.
"""

import contextlib
import glob
import logging
import os
import platform
import time

from .errors import XdpbrError

BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf")
FASTPATH_SOURCE = os.path.join(BPF_DIR, "fastpath.c")
HEADERS_FIX = "install kernel headers: apt-get install linux-headers-amd64 (or run make setup)"


def _release_build_dir():
    """The running kernel's own headers, if a package installed them."""
    build = f"/lib/modules/{platform.release()}/build"
    return build if os.path.isdir(os.path.join(build, "include")) else None


def find_kernel_headers():
    """Return (kernel_source, extra_cflags) for bcc, or raise naming the package to install."""
    if _release_build_dir():
        return None, []
    commons = sorted(glob.glob("/usr/src/linux-headers-*-common"), key=_version_key)
    for common in reversed(commons):
        arch = common[: -len("-common")] + "-amd64"
        if os.path.isdir(arch) and os.path.isdir(os.path.join(common, "include")):
            return common, [
                f"-I{arch}/arch/x86/include/generated",
                f"-I{arch}/arch/x86/include/generated/uapi",
                f"-I{arch}/include",
                f"-I{arch}/include/generated/uapi",
            ]
    raise XdpbrError(
        f"no kernel headers found for {platform.release()} (looked in "
        f"/lib/modules/{platform.release()}/build and /usr/src/linux-headers-*-common)",
        fix=HEADERS_FIX,
    )


def _version_key(path):
    parts = os.path.basename(path).split("-")[2:]
    key = []
    for part in parts:
        for piece in part.split("."):
            key.append(int(piece) if piece.isdigit() else 0)
    return key


@contextlib.contextmanager
def _kernel_source(source):
    """bcc reads BCC_KERNEL_SOURCE from the environment: set it only around the compile."""
    old = os.environ.get("BCC_KERNEL_SOURCE")
    if source:
        os.environ["BCC_KERNEL_SOURCE"] = source
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = old


class CompiledFastpath:
    """One bcc compile: the XDP and TC programs and their maps, pinned under pin_dir."""

    def __init__(self, bpf, pin_dir, seconds):
        from bcc import BPF

        self.bpf = bpf
        self.pin_dir = pin_dir
        self.compile_seconds = seconds
        self.xdp = bpf.load_func(b"xdpbr_xdp", BPF.XDP)
        self.tc = bpf.load_func(b"xdpbr_tc", BPF.SCHED_CLS)
        self.clock = bpf.load_func(b"xdpbr_tick", BPF.XDP)

    def map_fd(self, name):
        return self.bpf[name.encode()].map_fd

    def close(self):
        self.bpf.cleanup()


def bcc_compile(what, *, src_file=None, text=None, cflags=()):
    """A bcc BPF object from a file or text, with the kernel headers found and the compiler's
    output reduced to one line on failure. `what` names the program in the error."""
    try:
        from bcc import BPF
    except ImportError as exc:
        raise XdpbrError(
            f"cannot import bcc ({exc})",
            fix="install python3-bpfcc and run xdpbr from the project's venv (make setup)",
        ) from None
    source, header_flags = find_kernel_headers()
    args = {"src_file": src_file.encode()} if src_file else {"text": text.encode()}
    failure = None
    with _kernel_source(source), _quiet_stderr() as log:
        try:
            return BPF(cflags=[*header_flags, f"-I{BPF_DIR}", *cflags], **args)
        except Exception as exc:  # bcc raises bare Exception and prints its log on stderr
            failure = exc
    lines = log.text.splitlines()
    first = next((ln for ln in lines if "error" in ln.lower()), None) or str(failure)
    raise XdpbrError(f"cannot compile {what}: {first.strip()}", fix="run xdpbr with -v for the full log")


def compile_fastpath(pin_dir, *, max_ports=None, fdb_size=None, test=False):
    """Compile and load the fast path; maps are created (or reused) under pin_dir.

    Reused pins are not checked by bcc: callers check layouts before (loader.pins).
    """
    cflags = [f'-DXDPBR_PIN_DIR="{pin_dir}"']
    if max_ports:
        cflags.append(f"-DXDPBR_MAX_PORTS={int(max_ports)}")
    if fdb_size:
        cflags.append(f"-DXDPBR_FDB_SIZE={int(fdb_size)}")
    if test:
        cflags.append("-DXDPBR_TEST")
    os.makedirs(pin_dir, exist_ok=True)
    start = time.monotonic()
    bpf = bcc_compile("the fast path", src_file=FASTPATH_SOURCE, cflags=cflags)
    seconds = time.monotonic() - start
    failure = None
    with _quiet_stderr():  # the verifier's log goes to stderr: keep it for -v
        try:
            return CompiledFastpath(bpf, pin_dir, seconds)
        except Exception as exc:
            failure = exc
    bpf.cleanup()
    raise XdpbrError(f"the kernel refused the fast path: {failure}", fix="run xdpbr with -v for its log")


@contextlib.contextmanager
def _quiet_stderr():
    """Capture what bcc/clang print on fd 2 so an error is one line, not a page."""
    import tempfile

    class Log:
        text = ""

    log = Log()
    with tempfile.TemporaryFile(mode="w+") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.text = tmp.read()
            if logging.getLogger("xdpbr.compile").isEnabledFor(logging.DEBUG):  # -v
                os.write(2, log.text.encode())
