"""One writer at a time: attach, detach, port set and the daemon's changes take this lock."""

import contextlib
import errno
import fcntl
import os
import time

from . import instance
from .errors import XdpbrError


@contextlib.contextmanager
def writer_lock(timeout=10.0):
    lock_path = os.path.join(instance.run_dir(), "lock")
    os.makedirs(instance.run_dir(), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise XdpbrError(
                        f"another xdpbr is changing the host (lock {lock_path} held for {timeout:.0f} s)",
                        fix="wait for it to finish",
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
