"""Threaded NAPI for a benchmark's interfaces, its kernel threads pinned to one CPU."""

import glob
import os
import subprocess


def _napi_threads(ifname):
    """{pid} of the kernel threads named napi/<ifname>-<napi id>, in any namespace."""
    pids = set()
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as f:
                if f.read().strip().startswith(f"napi/{ifname}-"):
                    pids.add(int(comm.split("/")[2]))
        except OSError:
            continue
    return pids


def pin_napi_threads(netns, ifname, cpu):
    """Threaded NAPI for an interface, its kthreads pinned to `cpu`. Only the threads that
    switching it on created are touched: another namespace's interface of the same name (the
    host's own) keeps its threads where they are. Returns the pids pinned."""
    before = _napi_threads(ifname)
    # /sys/class/net shows the namespace sysfs was mounted in: `ip netns exec` remounts it
    subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"], check=True
    )
    pinned = _napi_threads(ifname) - before
    for pid in pinned:
        try:
            os.sched_setaffinity(pid, {cpu % os.cpu_count()})
        except OSError:
            continue
    return pinned
