"""One writer at a time: attach, detach, port set and the daemon's changes take this lock."""

import contextlib
import errno
import fcntl
import os
import time

from loader.errors import XdpbrError

LOCK_DIR = "/run/xdpbr"
LOCK_PATH = os.path.join(LOCK_DIR, "lock")


@contextlib.contextmanager
def writer_lock(timeout=10.0):
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise XdpbrError(
                        f"another xdpbr is changing the host (lock {LOCK_PATH} held for {timeout:.0f} s)",
                        fix="wait for it to finish",
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
