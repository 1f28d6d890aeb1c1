"""Kernel features probed by trying them once, the answer cached.

A locked-down kernel refuses features an upstream one of the same version has (today's build
refuses BPF_F_TEST_XDP_LIVE_FRAMES with EPERM), so xdpbr never infers a feature from the
version: it asks, and a refusal becomes a one-line reason that benchmarks print and tests skip
with.
"""

import errno as errno_mod
import functools
import os

from . import bpfsys
from .errors import XdpbrError

# The probe's program drops it: where live frames work, nothing leaves or enters a stack.
_PROBE_FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + bytes(46)


@functools.cache
def live_frames_refusal():
    """None when BPF_PROG_RUN accepts BPF_F_TEST_XDP_LIVE_FRAMES (Linux 5.18+, unless the
    build forbids it), else the kernel's answer as one line."""
    try:
        fd = bpfsys.load_xdp_returning(bpfsys.XDP_DROP)
    except XdpbrError as exc:
        return str(exc)
    try:
        ctx = bpfsys.XdpMd(data=0, data_end=len(_PROBE_FRAME), ingress_ifindex=1)  # lo
        bpfsys.prog_test_run(fd, _PROBE_FRAME, ctx=ctx, flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES)
    except XdpbrError as exc:
        name = errno_mod.errorcode.get(exc.errno, str(exc.errno))
        return f"the kernel refuses BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES ({name})"
    finally:
        os.close(fd)
    return None
