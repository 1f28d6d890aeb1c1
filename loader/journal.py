"""Undo actions for host changes, registered before each change and run in reverse on failure
(xdp-tools' attach_xdp_program detaches when pinning fails; STYLE: register the undo first)."""

import logging

log = logging.getLogger("xdpbr.journal")


class Journal:
    """Undo actions for host changes, run in reverse on failure."""

    def __init__(self):
        self.actions = []

    def push(self, fn, *args):
        self.actions.append((fn, args))

    def rollback(self):
        for fn, args in reversed(self.actions):
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                log.warning("rollback step %s failed: %s", getattr(fn, "__name__", fn), exc)
        self.actions.clear()
