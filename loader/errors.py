"""One error type for everything xdpbr tells an operator.

An XdpbrError is one line: what failed, on which object, the kernel's errno text when there is
one, and the fix. The CLI prints it as ``xdpbr: <message>`` and exits 1.
"""

import errno as errno_mod
import os


class XdpbrError(Exception):
    """An operator-facing failure: `str()` is the one line the CLI prints."""

    def __init__(self, message, *, errno=None, fix=None):
        self.errno = errno
        self.fix = fix
        text = message
        if errno:
            text += f" ({errno_mod.errorcode.get(errno, errno)}: {os.strerror(errno)})"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class NotFound(XdpbrError):
    """The named bridge, port, namespace or pin does not exist."""


class Unsupported(XdpbrError):
    """The kernel or the device lacks a feature the request needs."""


class UsageError(XdpbrError):
    """The command line itself is wrong (exit code 2)."""
